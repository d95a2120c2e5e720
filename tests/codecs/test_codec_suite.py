"""The codec conformance suite (modelfs.testing.CodecTests) run on every built-in codec.

The hint-taking codecs get the hints a committer would hand them (merge weights, TIES
thresholds, LoRA factors); cast gets bases of the other float types; prune a pruned chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelfs import numerics
from modelfs.codecs import EncodeContext, registered_codecs
from modelfs.codecs.lowrank import chunk_hint, predict
from modelfs.codecs.mix import MixHint, TiesHint
from modelfs.codecs.qdelta import QuantHint, quantise
from modelfs.dtypes import DTYPES, DType
from modelfs.testing import CodecTests
from modelfs.testing.codecs import mutate, weights

CASTABLE = ("F32", "F64", "F16", "BF16", "F8_E4M3", "F8_E5M2")


class TestRaw(CodecTests):
    codec_id = "raw"


class TestZstd(CodecTests):
    codec_id = "zstd"


class TestPlanes(CodecTests):
    codec_id = "planes"


class TestXor(CodecTests):
    codec_id = "xor"


class TestSub(CodecTests):
    codec_id = "sub"


class TestAvg(CodecTests):
    codec_id = "avg"
    must_encode = ("F32", "F16", "BF16", "F8_E4M3")


class TestSparse(CodecTests):
    codec_id = "sparse"


class TestCast(CodecTests):
    codec_id = "cast"
    must_encode = ("F16", "BF16", "F8_E4M3", "F64")

    def base_dtypes(self, dtype: DType) -> list[DType]:
        return [DTYPES[n] for n in CASTABLE if n != dtype.name]

    def encodable(self, dtype: DType, rng: np.random.Generator) -> tuple[bytes, EncodeContext]:
        f32 = DTYPES["F32"]
        base = weights(f32, 1024, rng)
        return numerics.cast(base, f32, dtype).tobytes(), EncodeContext(dtype, [base], [f32])


class TestPrune(CodecTests):
    codec_id = "prune"

    def encodable(self, dtype: DType, rng: np.random.Generator) -> tuple[bytes, EncodeContext]:
        base = np.frombuffer(weights(dtype, 1024, rng), dtype=np.float32)
        child = base.copy()
        child[np.abs(child) < np.quantile(np.abs(child), 0.3)] = 0
        return child.tobytes(), EncodeContext(dtype, [base.tobytes()], [dtype])


class TestMix(CodecTests):
    codec_id = "mix"
    must_encode = ("F32", "F16", "BF16", "F64")

    def hint(self, data: bytes, ctx: EncodeContext, rng: np.random.Generator) -> Any:
        if not ctx.bases:
            return None
        w = rng.random(len(ctx.bases)) + 0.1
        return MixHint(tuple(float(x) for x in w / w.sum()))


class TestTies(CodecTests):
    codec_id = "ties"
    must_encode = ("F32", "BF16")

    def hint(self, data: bytes, ctx: EncodeContext, rng: np.random.Generator) -> Any:
        return TiesHint((float(rng.random() * 0.05), float(rng.random() * 0.05)), float(rng.random() + 0.5))


class TestLowRank(CodecTests):
    codec_id = "lowrank"
    must_encode = ("F32", "F16", "BF16", "F64")
    ncols, rank = 8, 2

    def _factors(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rows = -(-max(n, 1) // self.ncols) + 1
        b = (rng.standard_normal((rows, self.rank)) * 0.01).astype(np.float32)
        return b, (rng.standard_normal((self.rank, self.ncols)) * 0.01).astype(np.float32)

    def hint(self, data: bytes, ctx: EncodeContext, rng: np.random.Generator) -> Any:
        n = len(data) // ctx.dtype.itemsize
        b, a = self._factors(n, rng)
        return chunk_hint(b, a, 2.0, 3, n)  # the chunk starts inside a row

    def encodable(self, dtype: DType, rng: np.random.Generator) -> tuple[bytes, EncodeContext]:
        """A LoRA child: the parent plus the low-rank product, as the decode recomputes it."""
        base = weights(dtype, 1024, rng)
        b, a = self._factors(1024, rng)
        h = chunk_hint(b, a, 2.0, 0, 1024)
        child = predict(base, dtype, h.b_rows, h.a, h.scale, h.col0, "seq32")
        return np.asarray(child).view(np.uint8).tobytes(), EncodeContext(dtype, [base], [dtype], h)


class _QuantisedDelta(CodecTests):
    """Lossy mode's codecs: exact on any chunk given a step (misses become exceptions)."""

    codec_id = "qdelta"
    must_encode = ("F32", "F16", "BF16", "F64")

    def hint(self, data: bytes, ctx: EncodeContext, rng: np.random.Generator) -> Any:
        return QuantHint(float(rng.choice([1e-6, 1e-4, 0.01, 3.0]))) if ctx.bases else None

    def encodable(self, dtype: DType, rng: np.random.Generator) -> tuple[bytes, EncodeContext]:
        """A chunk already on the grid (a reconstruction): the codes reproduce it with no exception."""
        k = len(self.base_counts()) and self.base_counts()[0]
        base = weights(dtype, 1024, rng)
        ctx = EncodeContext(dtype, [base] * k, [dtype] * k, QuantHint(1e-3))
        child = mutate(base, dtype.itemsize, rng, 0.3)
        _, recon = quantise(child, ctx, 1e-3)
        return recon, ctx


class TestQDelta(_QuantisedDelta):
    codec_id = "qdelta"


class TestQDeltaAvg(_QuantisedDelta):
    codec_id = "qdelta-avg"


class TestQDeltaPrune(_QuantisedDelta):
    codec_id = "qdelta-prune"


SUITES = {cls.codec_id for cls in [*CodecTests.__subclasses__(), *_QuantisedDelta.__subclasses__()]
          if cls.__module__ == __name__}


def test_every_built_in_codec_runs_the_suite() -> None:
    built_in = {cid for cid, c in registered_codecs().items() if type(c).__module__.startswith("modelfs.")}
    assert built_in == SUITES


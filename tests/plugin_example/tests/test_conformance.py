"""The plug-in proves its format and codec with modelfs's conformance suites, as every plug-in
should: subclass the suite, say which format or codec, give it files or hints."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from modelfs.codecs import EncodeContext
from modelfs.dtypes import DTYPES, DType
from modelfs.testing import CodecTests, FormatTests
from modelfs.testing.codecs import weights


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


class TestNpyFormat(FormatTests):
    format_name = "npy"

    def sample_files(self) -> dict[str, bytes]:
        rng = np.random.default_rng(0)
        return {"w.npy": npy(rng.standard_normal((33, 17)).astype(np.float32)),
                "h.npy": npy(rng.standard_normal(40).astype(np.float16)),
                "d.npy": npy(np.linspace(0, 1, 9)),
                "ids.npy": npy(np.arange(13, dtype=np.int64)),
                "mask.npy": npy(np.array([True, False, True])),
                "empty.npy": npy(np.zeros((0, 3), dtype=np.float32)),
                "scalar.npy": npy(np.array(2.5, dtype=np.float32))}

    def invalid_files(self) -> dict[str, bytes]:
        good = npy(np.ones((3, 4), dtype=np.float32))
        return {"fortran.npy": npy(np.asfortranarray(np.ones((3, 4), dtype=np.float32))),
                "short.npy": good[:-4], "long.npy": good + b"\0\0\0\0"}


class TestScaleCodec(CodecTests):
    codec_id = "example-scale"

    def hint(self, data: bytes, ctx: EncodeContext, rng: np.random.Generator) -> Any:
        return 0.5

    def encodable(self, dtype: DType, rng: np.random.Generator) -> tuple[bytes, EncodeContext]:
        base = weights(DTYPES["F32"], 1024, rng)
        child = (np.frombuffer(base, dtype=np.float32) * np.float32(0.5)).tobytes()
        return child, EncodeContext(dtype, [base], [dtype], 0.5)

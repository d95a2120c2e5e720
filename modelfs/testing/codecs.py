"""The codec conformance suite: a codec round-trips bit-exact on every dtype, or declines.

Lossless is the invariant the store rests on, and a codec's payload is decoded on every read
for as long as the store lives, so each codec (built in or a plug-in) runs the same checks:
hypothesis over random, low-entropy and special float bytes (NaN payloads, infinities, -0.0)
of every dtype, against bases that are near, equal or unrelated; empty chunks; payloads read
from inside a larger buffer (a chunk record hands the payload over as a memoryview slice);
bases of the wrong length. A codec may decline (encode returns None) but never mis-code.

Subclass `CodecTests` with ``codec_id``; a codec that encodes only with a hint (the factors,
weights or scale the committer knows) overrides `hint`, and `encodable` gives a chunk it must
really encode (so the suite cannot pass by the codec declining everything):

    class TestScale(CodecTests):
        codec_id = "example-scale"

        def hint(self, data, ctx, rng):
            return 0.5
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfs import numerics
from modelfs.codecs import Codec, EncodeContext, get_codec, registered_codecs
from modelfs.dtypes import DTYPES, DType

ALL_DTYPES = sorted(DTYPES)
# one test body runs for every subclass (each codec): that is the point, not a flaky executor
SUITE_SETTINGS = settings(deadline=None, max_examples=60, suppress_health_check=[
    HealthCheck.differing_executors, HealthCheck.too_slow, HealthCheck.data_too_large])
# (sign bit, exponent bits) per float layout: every all-ones exponent is an inf or a NaN
_FLOAT_BITS = {"F16": (15, 0x7C00), "BF16": (15, 0x7F80), "F32": (31, 0x7F800000),
               "F64": (63, 0x7FF0000000000000), "F8_E4M3": (7, 0x78), "F8_E5M2": (7, 0x7C),
               "F8_E8M0": (7, 0xFF)}


def special_floats(dtype: DType, n: int, rng: np.random.Generator) -> bytes:
    """NaNs with payloads, +-inf, -0.0, denormals and ordinary bit patterns mixed together."""
    isz = dtype.itemsize
    if dtype.name not in _FLOAT_BITS or isz not in numerics.UINT:
        return rng.integers(0, 256, size=n * isz, dtype=np.uint8).tobytes()
    sign_bit, exp = _FLOAT_BITS[dtype.name]
    top = (1 << (8 * isz)) - 1
    sign, mant = 1 << sign_bit, top & ~((1 << sign_bit) | exp)
    patterns = [0, sign, exp, sign | exp, exp | 1, exp | mant, sign | exp | mant, exp | (mant >> 1), 1, mant]
    vals = rng.integers(0, 1 << min(8 * isz, 62), size=n, dtype=np.uint64) & np.uint64(top)
    picks = rng.integers(0, len(patterns) + 1, size=n)
    out = [patterns[p] if p < len(patterns) else int(v) for p, v in zip(picks, vals, strict=True)]
    return np.array(out, dtype=np.uint64).astype(numerics.UINT[isz]).tobytes()


def weights(dtype: DType, n: int, rng: np.random.Generator) -> bytes:
    """Bytes that look like trained weights: small normal floats, or small integers."""
    if dtype.is_float and numerics.has_values(dtype):
        return numerics.narrow((rng.standard_normal(n) * 0.05).astype(np.float32), dtype).tobytes()
    return rng.integers(0, 4, size=n * dtype.itemsize, dtype=np.uint8).tobytes()


def mutate(data: bytes, itemsize: int, rng: np.random.Generator, frac: float) -> bytes:
    """A child of `data`: a fraction of elements get their low byte changed (a small update)."""
    arr = np.frombuffer(data, dtype=np.uint8).copy()
    n = len(arr) // itemsize
    if n:
        rows = arr[: n * itemsize].reshape(n, itemsize)
        idx = rng.random(n) < frac
        rows[idx, 0] ^= rng.integers(1, 256, size=int(idx.sum()), dtype=np.uint8)
    return arr.tobytes()


@st.composite
def chunk_bytes(draw: st.DrawFn, dtype: DType, max_elems: int = 300) -> bytes:
    """A whole number of elements: random bytes, a few distinct bytes, weights or special floats."""
    n = draw(st.one_of(st.sampled_from([0, 1, 2, 7]), st.integers(0, max_elems)))
    kind = draw(st.sampled_from(["random", "structured", "weights", "special"]))
    if kind == "random" or n == 0:
        return draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "structured":  # compressible planes, zero planes
        alphabet = rng.integers(0, 256, size=draw(st.integers(1, 4)), dtype=np.uint8)
        return rng.choice(alphabet, size=n * dtype.itemsize).astype(np.uint8).tobytes()
    if kind == "weights":
        return weights(dtype, n, rng)
    return special_floats(dtype, n, rng)


def roundtrip(codec: Codec, data: bytes, ctx: EncodeContext) -> bytes | None:
    """Encode, then decode from a slice of a larger buffer; None when the codec declines."""
    payload = codec.encode(data, ctx)
    if payload is None:
        return None
    assert isinstance(payload, bytes | bytearray), f"{codec.id}: payload is {type(payload).__name__}"
    framed = memoryview(b"\xa5" * 7 + bytes(payload) + b"\x5a" * 5)[7:7 + len(payload)]
    out = bytes(codec.decode(framed, len(data), ctx))
    assert bytes(codec.decode(memoryview(bytes(payload)), len(data), ctx)) == out, "decode is not deterministic"
    return out


class CodecTests:
    """The suite; subclass with ``codec_id`` (see the module doc)."""

    codec_id: ClassVar[str]
    # dtypes the codec must really encode `encodable` chunks of (not decline): not vacuous
    must_encode: ClassVar[Sequence[str]] = ("F32",)

    # -- hooks -----------------------------------------------------------------------------------
    @property
    def codec(self) -> Codec:
        return get_codec(self.codec_id)

    def hint(self, data: bytes, ctx: EncodeContext, rng: np.random.Generator) -> Any:
        """What a committer would hand the codec as `EncodeContext.hint` (None: nothing)."""
        return None

    def base_dtypes(self, dtype: DType) -> list[DType]:
        """Element types the bases may have (a cast codec's bases have another)."""
        return [dtype]

    def base_counts(self) -> list[int]:
        n = self.codec.n_bases
        return [n] if n >= 0 else [1, 2, 3]  # -1: as many as the record lists

    def contexts(self, data: bytes, dtype: DType, rng: np.random.Generator) -> list[EncodeContext]:
        """Contexts to try: bases equal to, near, or unrelated to the chunk, each with its hint."""
        n = len(data) // dtype.itemsize
        out = []
        for k in self.base_counts():
            if k == 0:
                out.append(self._with_hint(data, EncodeContext(dtype), rng))
                continue
            for bdt in self.base_dtypes(dtype):
                same = bdt.name == dtype.name
                like = data if same else (numerics.cast(data, dtype, bdt).tobytes()
                                          if numerics.has_values(dtype) and numerics.has_values(bdt)
                                          else special_floats(bdt, n, rng))
                for kind in ("equal", "near", "unrelated"):
                    if kind == "equal":
                        bases = [like] * k
                    elif kind == "near":
                        bases = [mutate(like, bdt.itemsize, rng, 0.1) for _ in range(k)]
                    else:
                        bases = [special_floats(bdt, n, rng) for _ in range(k)]
                    out.append(self._with_hint(data, EncodeContext(dtype, bases, [bdt] * k), rng))
        return out

    def encodable(self, dtype: DType, rng: np.random.Generator) -> tuple[bytes, EncodeContext]:
        """A chunk of weights one small update away from its bases: the codec's home ground."""
        base = weights(dtype, 1024, rng)
        k = max(self.base_counts()[0], 0)
        data = mutate(base, dtype.itemsize, rng, 0.01) if k else base
        ctx = EncodeContext(dtype, [base] * k, [dtype] * k) if k else EncodeContext(dtype)
        return data, self._with_hint(data, ctx, rng)

    def _with_hint(self, data: bytes, ctx: EncodeContext, rng: np.random.Generator) -> EncodeContext:
        h = self.hint(data, ctx, rng)
        return ctx if h is None else dataclasses.replace(ctx, hint=h)

    # -- the tests --------------------------------------------------------------------------------
    def test_is_registered_under_its_stable_id(self) -> None:
        codec = self.codec
        assert codec.id == self.codec_id
        assert registered_codecs()[self.codec_id] is codec
        assert isinstance(codec.n_bases, int) and codec.n_bases >= -1

    @SUITE_SETTINGS
    @given(data=st.data(), dtype_name=st.sampled_from(ALL_DTYPES))
    def test_roundtrips_bit_exact_on_every_dtype(self, data: st.DataObject, dtype_name: str) -> None:
        dt = DTYPES[dtype_name]
        chunk = data.draw(chunk_bytes(dt))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        for ctx in self.contexts(chunk, dt, rng):
            if self.codec.applies(ctx):
                out = roundtrip(self.codec, chunk, ctx)
                assert out is None or out == chunk, (dtype_name, len(ctx.bases))

    def test_encodes_what_it_is_for(self) -> None:
        rng = np.random.default_rng(0)
        for name in self.must_encode:
            data, ctx = self.encodable(DTYPES[name], rng)
            assert self.codec.applies(ctx), name
            out = roundtrip(self.codec, data, ctx)
            assert out is not None, f"{self.codec_id} declined a {name} chunk it is meant to encode"
            assert out == data, name

    def test_special_float_bit_patterns_survive(self) -> None:
        rng = np.random.default_rng(1)
        for name in _FLOAT_BITS:
            dt = DTYPES[name]
            chunk = special_floats(dt, 777, rng)
            for ctx in self.contexts(chunk, dt, rng):
                if self.codec.applies(ctx):
                    out = roundtrip(self.codec, chunk, ctx)
                    assert out is None or out == chunk, name

    def test_empty_chunks(self) -> None:
        rng = np.random.default_rng(2)
        for name in ALL_DTYPES:
            for ctx in self.contexts(b"", DTYPES[name], rng):
                if self.codec.applies(ctx):
                    assert roundtrip(self.codec, b"", ctx) in (None, b""), name

    def test_bases_of_another_length_are_declined_not_miscoded(self) -> None:
        """The importer never offers them, but a codec must not turn them into wrong bytes."""
        rng = np.random.default_rng(3)
        dt = DTYPES["F32"]
        data = weights(dt, 64, rng)
        for ctx in self.contexts(data[:-4], dt, rng):
            if not ctx.bases or not self.codec.applies(ctx):
                continue
            try:
                out = roundtrip(self.codec, data, ctx)
            except ValueError:
                continue  # refusing loudly is fine too
            assert out is None or out == data

"""The built-in codecs (the policy that picks among them is `modelfs.codecs.policy`).

Self-contained: raw, zstd, planes (byte planes + zstd). Deltas, all "predict, then XOR
the bit patterns, then byte planes + zstd": xor (prediction = the parent chunk), cast
(the parent chunk cast to this dtype: fp32 -> fp16/bf16), avg (mean of two parents: weight
averaging merges) and prune (the parent with the child's zeros applied: magnitude pruning).
A prediction that is exact leaves all-zero planes, which cost a few bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modelfs import numerics
from modelfs.codecs.base import EncodeContext, register_codec
from modelfs.codecs.planes import (
    decode_planes,
    encode_planes,
    xor_bytes,
    zstd_compress,
    zstd_decompress,
)


@dataclass(frozen=True)
class RawCodec:
    id: str = "raw"
    n_bases: int = 0

    def applies(self, ctx: EncodeContext) -> bool:
        return True

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        return bytes(data)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        return bytes(payload)


@dataclass(frozen=True)
class ZstdCodec:
    id: str = "zstd"
    n_bases: int = 0

    def applies(self, ctx: EncodeContext) -> bool:
        return True

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        return zstd_compress(data)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        return zstd_decompress(payload, length)


@dataclass(frozen=True)
class PlanesCodec:
    id: str = "planes"
    n_bases: int = 0

    def applies(self, ctx: EncodeContext) -> bool:
        return ctx.dtype.itemsize > 1

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        return encode_planes(data, ctx.dtype.itemsize)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        return decode_planes(payload, length)


def _predict_same(ctx: EncodeContext) -> bytes | np.ndarray:
    return ctx.bases[0]


def _predict_cast(ctx: EncodeContext) -> bytes | np.ndarray:
    """The parent chunk cast to this chunk's dtype, rounded as `.half()` / `.to()` round."""
    return numerics.cast(ctx.bases[0], ctx.base_dtypes[0], ctx.dtype)


def _predict_avg(ctx: EncodeContext) -> bytes | np.ndarray:
    """(a + b) / 2 in float32 (float64 for F64), rounded back: a uniform two-model soup.

    fp8 chunks were averaged by torch, whose add keeps another NaN than numpy's: `torch_add`.
    """
    dt = ctx.dtype
    a, b = numerics.widen(ctx.bases[0], dt), numerics.widen(ctx.bases[1], dt)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = (a + b if numerics.numpy_float(dt) else numerics.torch_add(a, b)) / 2
    return numerics.narrow(mean, dt)


def zigzag_diff(data: bytes | np.ndarray, pred: bytes | np.ndarray, itemsize: int) -> np.ndarray:
    """(data - pred) on the bit patterns as wrapping integers, zigzagged: small changes, small codes.

    A fine-tuning step moves most weights by a few units in the last place; the integer
    difference keeps that small where XOR spreads it over every bit a carry touched.
    """
    it = numerics.INT[itemsize]
    d = np.frombuffer(data, dtype=it) - np.frombuffer(pred, dtype=it)
    return ((d << 1) ^ (d >> (8 * itemsize - 1))).view(numerics.UINT[itemsize])


@dataclass(frozen=True)
class PredictXorCodec:
    """Payload = planes(residual of data against a prediction); decode recomputes the prediction.

    The residual is XOR of the bit patterns, or with ``residual="sub"`` the zigzagged
    integer difference (needs whole elements of 1, 2, 4 or 8 bytes).
    """

    id: str
    n_bases: int
    predict: Callable[[EncodeContext], bytes | np.ndarray]
    needs_cast: bool = False
    residual: str = "xor"

    def applies(self, ctx: EncodeContext) -> bool:
        if len(ctx.bases) != self.n_bases:
            return False
        if self.needs_cast:
            src = ctx.base_dtypes[0]
            return (src.name != ctx.dtype.name and src.is_float and ctx.dtype.is_float
                    and src.torch_name is not None and ctx.dtype.torch_name is not None)
        if any(b.name != ctx.dtype.name for b in ctx.base_dtypes):
            return False
        if self.n_bases == 2:
            return ctx.dtype.is_float and ctx.dtype.torch_name is not None
        return True

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        pred = self.predict(ctx)
        isz = ctx.dtype.itemsize
        if len(pred) != len(data):
            return None
        if self.residual == "sub":
            if len(data) % isz or isz not in numerics.INT:
                return None
            return encode_planes(zigzag_diff(data, pred, isz), isz)
        return encode_planes(xor_bytes(data, pred), isz)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        if self.residual == "sub":
            return decode_planes(payload, length, self.predict(ctx), "sub")
        return decode_planes(payload, length, self.predict(ctx), "xor")


@dataclass(frozen=True)
class PruneCodec:
    """Magnitude pruning: a bitmap of newly zeroed elements, then XOR against the masked parent."""

    id: str = "prune"
    n_bases: int = 1

    def applies(self, ctx: EncodeContext) -> bool:
        return (len(ctx.bases) == 1 and ctx.base_dtypes[0].name == ctx.dtype.name
                and ctx.dtype.is_float and ctx.dtype.itemsize in numerics.UINT)

    @staticmethod
    def _masked(base: bytes, mask: np.ndarray, itemsize: int) -> np.ndarray:
        b = np.frombuffer(base, dtype=numerics.UINT[itemsize]).copy()
        b[mask] = 0
        return b

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        isz = ctx.dtype.itemsize
        if len(data) % isz:
            return None
        sign = np.array(1 << (8 * isz - 1), dtype=numerics.UINT[isz])
        d = np.frombuffer(data, dtype=numerics.UINT[isz])
        if np.count_nonzero((d[:4096] & ~sign) == 0) < 8:
            return None  # sampled: no zeros here, so not a pruning step (skips the full pass)
        b = np.frombuffer(ctx.bases[0], dtype=numerics.UINT[isz])
        mask = ((d & ~sign) == 0) & ((b & ~sign) != 0)
        if mask.sum() < len(d) // 100:
            return None  # not a pruning step; plain xor will do
        bitmap = zstd_compress(np.packbits(mask).tobytes())
        resid = encode_planes(xor_bytes(d, self._masked(ctx.bases[0], mask, isz)), isz)
        return struct.pack("<I", len(bitmap)) + bitmap + resid

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        isz = ctx.dtype.itemsize
        n = length // isz
        (blen,) = struct.unpack_from("<I", payload, 0)
        bits = np.frombuffer(zstd_decompress(payload[4:4 + blen], (n + 7) // 8), dtype=np.uint8)
        mask = np.unpackbits(bits, count=n).astype(bool)
        return decode_planes(payload[4 + blen:], length, self._masked(ctx.bases[0], mask, isz), "xor")


RAW = register_codec(RawCodec())
ZSTD = register_codec(ZstdCodec())
PLANES = register_codec(PlanesCodec())
XOR = register_codec(PredictXorCodec("xor", 1, _predict_same))
SUB = register_codec(PredictXorCodec("sub", 1, _predict_same, residual="sub"))
CAST = register_codec(PredictXorCodec("cast", 1, _predict_cast, needs_cast=True))
AVG = register_codec(PredictXorCodec("avg", 2, _predict_avg))
PRUNE = register_codec(PruneCodec())

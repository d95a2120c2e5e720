"""The built-in codecs and the policy that picks the smallest lossless encoding of a chunk.

Self-contained: raw, zstd, planes (byte planes + zstd). Deltas, all "predict, then XOR
the bit patterns, then byte planes + zstd": xor (prediction = the parent chunk), cast
(the parent chunk cast to this dtype: fp32 -> fp16/bf16), avg (mean of two parents: weight
averaging merges) and prune (the parent with the child's zeros applied: magnitude pruning).
A prediction that is exact leaves all-zero planes, which cost a few bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from modelfs.codecs.base import EncodeContext, register_codec
from modelfs.codecs.planes import (
    decode_planes,
    encode_planes,
    xor_bytes,
    zstd_compress,
    zstd_decompress,
)
from modelfs.dtypes import DType

if TYPE_CHECKING:
    import torch


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


def _tensor(data: bytes | np.ndarray, dt: DType) -> torch.Tensor:
    """A torch view of chunk bytes (torch has bf16 and fp8, numpy has not); empty-safe."""
    import torch  # deferred: only cast and avg chunks need it, and it costs a second to import

    tdt = getattr(torch, dt.torch_name or "")
    if len(data) == 0:
        return torch.empty(0, dtype=tdt)
    return torch.frombuffer(bytearray(data), dtype=tdt)


def _predict_same(ctx: EncodeContext) -> bytes | np.ndarray:
    return ctx.bases[0]


_NUMPY_FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def _widen(data: bytes | np.ndarray, dt: DType) -> np.ndarray:
    """Chunk values as float32 (float64 for F64); bf16 widens exactly by a shift."""
    if dt.name == "BF16":
        return (np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    x = np.frombuffer(data, dtype=_NUMPY_FLOATS[dt.name])
    return x if dt.name == "F64" else x.astype(np.float32)


def _narrow(x: np.ndarray, dt: DType) -> np.ndarray:
    """float32/64 values rounded to `dt` the IEEE way (round to nearest, ties to even), as torch
    and numpy do, so a child made by `.half()` or `.bfloat16()` is predicted exactly."""
    if dt.name != "BF16":
        return x.astype(_NUMPY_FLOATS[dt.name]).view(np.uint8)
    u = x.astype(np.float32).view(np.uint32)
    out = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    out[np.isnan(x)] = 0xFFFF  # the NaN torch's CPU conversion writes
    return out.view(np.uint8)


def _numpy_float(dt: DType) -> bool:
    return dt.name in _NUMPY_FLOATS or dt.name == "BF16"


def _predict_cast(ctx: EncodeContext) -> bytes | np.ndarray:
    src, dst = ctx.base_dtypes[0], ctx.dtype
    if _numpy_float(src) and _numpy_float(dst):  # no torch: it costs a second to import
        with np.errstate(over="ignore", invalid="ignore"):
            return _narrow(_widen(ctx.bases[0], src), dst)
    import torch  # fp8: only torch has it

    return _tensor(ctx.bases[0], src).to(getattr(torch, dst.torch_name or "")).view(torch.uint8).numpy()


def _predict_avg(ctx: EncodeContext) -> bytes | np.ndarray:
    dt = ctx.dtype
    if _numpy_float(dt):
        with np.errstate(over="ignore", invalid="ignore"):
            return _narrow((_widen(ctx.bases[0], dt) + _widen(ctx.bases[1], dt)) / 2, dt)
    import torch

    a = _tensor(ctx.bases[0], dt).to(torch.float32)
    b = _tensor(ctx.bases[1], dt).to(torch.float32)
    return ((a + b) / 2).to(getattr(torch, dt.torch_name or "")).view(torch.uint8).numpy()


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def zigzag_diff(data: bytes | np.ndarray, pred: bytes | np.ndarray, itemsize: int) -> np.ndarray:
    """(data - pred) on the bit patterns as wrapping integers, zigzagged: small changes, small codes.

    A fine-tuning step moves most weights by a few units in the last place; the integer
    difference keeps that small where XOR spreads it over every bit a carry touched.
    """
    it = _INT[itemsize]
    d = np.frombuffer(data, dtype=it) - np.frombuffer(pred, dtype=it)
    return ((d << 1) ^ (d >> (8 * itemsize - 1))).view(_UINT[itemsize])


def zigzag_undiff(codes: bytes, pred: bytes | np.ndarray, itemsize: int) -> bytes:
    """Inverse of `zigzag_diff`, computed in place in two buffers (decode is the read path)."""
    ut = _UINT[itemsize]
    z = np.frombuffer(codes, dtype=ut)
    sign = np.bitwise_and(z, 1)
    np.negative(sign, out=sign)  # 0 or all ones, in wrapping unsigned arithmetic
    d = np.right_shift(z, 1)
    np.bitwise_xor(d, sign, out=d)
    np.add(d, np.frombuffer(pred, dtype=ut), out=d)
    return d.tobytes()


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
            if len(data) % isz or isz not in _INT:
                return None
            return encode_planes(zigzag_diff(data, pred, isz), isz)
        return encode_planes(xor_bytes(data, pred), isz)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        if self.residual == "sub":
            return zigzag_undiff(decode_planes(payload, length), self.predict(ctx), ctx.dtype.itemsize)
        return xor_bytes(decode_planes(payload, length), self.predict(ctx)).tobytes()


@dataclass(frozen=True)
class PruneCodec:
    """Magnitude pruning: a bitmap of newly zeroed elements, then XOR against the masked parent."""

    id: str = "prune"
    n_bases: int = 1

    def applies(self, ctx: EncodeContext) -> bool:
        return (len(ctx.bases) == 1 and ctx.base_dtypes[0].name == ctx.dtype.name
                and ctx.dtype.is_float and ctx.dtype.itemsize in _UINT)

    @staticmethod
    def _masked(base: bytes, mask: np.ndarray, itemsize: int) -> np.ndarray:
        b = np.frombuffer(base, dtype=_UINT[itemsize]).copy()
        b[mask] = 0
        return b

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        isz = ctx.dtype.itemsize
        if len(data) % isz:
            return None
        sign = np.array(1 << (8 * isz - 1), dtype=_UINT[isz])
        d = np.frombuffer(data, dtype=_UINT[isz])
        if np.count_nonzero((d[:4096] & ~sign) == 0) < 8:
            return None  # sampled: no zeros here, so not a pruning step (skips the full pass)
        b = np.frombuffer(ctx.bases[0], dtype=_UINT[isz])
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
        resid = decode_planes(payload[4 + blen:], length)
        return xor_bytes(resid, self._masked(ctx.bases[0], mask, isz)).tobytes()


RAW = register_codec(RawCodec())
ZSTD = register_codec(ZstdCodec())
PLANES = register_codec(PlanesCodec())
XOR = register_codec(PredictXorCodec("xor", 1, _predict_same))
SUB = register_codec(PredictXorCodec("sub", 1, _predict_same, residual="sub"))
CAST = register_codec(PredictXorCodec("cast", 1, _predict_cast, needs_cast=True))
AVG = register_codec(PredictXorCodec("avg", 2, _predict_avg))
PRUNE = register_codec(PruneCodec())


def _delta_codecs(dtype: DType) -> tuple[PredictXorCodec | PruneCodec, ...]:
    """Float weights move by small integer steps of their bit patterns: `sub` beats `xor` there."""
    same = SUB if dtype.is_float and dtype.itemsize in _INT else XOR
    return (same, CAST, PRUNE, AVG)


_GOOD_ENOUGH = 1 / 64  # a payload this small cannot usefully be beaten


@dataclass(frozen=True, slots=True)
class Encoding:
    codec_id: str
    payload: bytes
    base_set: int  # index into the base sets offered, or -1 for self-contained


DEPTH_PENALTY = 0.10  # a delta one level deeper must be 10% smaller to be preferred


def choose_encoding(data: bytes, dtype: DType,
                    base_sets: Sequence[tuple[Sequence[bytes], Sequence[DType]]] = (),
                    depths: Sequence[int] = ()) -> Encoding:
    """The smallest lossless encoding among the deltas the bases allow and self-contained ones.

    `depths[i]` is the chain depth the chunk gets when coded against base set i: each level
    costs a decode on every read, so sizes are weighed by (1 + DEPTH_PENALTY * depth), which
    lets a slightly larger delta against a shallow ancestor win over one against a deep parent.
    Cheap early exits keep import fast: a delta that is already tiny ends the search, and the
    self-contained codecs are tried only when no delta got below 3/4 of the raw size.
    """
    n = len(data)
    best = Encoding("raw", bytes(data), -1)
    best_cost = float(n)
    for i, (bases, btypes) in enumerate(base_sets):
        ctx = EncodeContext(dtype, bases, btypes)
        weight = 1 + DEPTH_PENALTY * (depths[i] if i < len(depths) else 1)
        for codec in _delta_codecs(dtype):
            if not codec.applies(ctx):
                continue
            payload = codec.encode(data, ctx)
            if payload is not None and len(payload) * weight < best_cost:
                best, best_cost = Encoding(codec.id, payload, i), len(payload) * weight
        if len(best.payload) <= n * _GOOD_ENOUGH:
            return best
    if len(best.payload) > n * 0.75:
        ctx = EncodeContext(dtype)
        for codec in (PLANES if dtype.itemsize > 1 else ZSTD,):
            payload = codec.encode(data, ctx)
            if payload is not None and len(payload) < best_cost:
                best, best_cost = Encoding(codec.id, payload, -1), float(len(payload))
    return best

"""Quantised deltas: the chunk is its prediction plus integer codes times a step.

This is the storage half of lossy mode (docs/lossy.md). The codec itself is exact: `encode`
stores *any* chunk losslessly against its base(s) and a step (the hint), putting every element
the codes cannot reproduce into an exception list. What makes a version lossy is upstream:
`quantise` rounds the original delta to the step's grid, and the chunk that is stored (and
keyed by its blake3) is what `decode` gives back -- the reconstruction. So a lossy chunk is an
ordinary chunk whose bytes happen to lie on a grid, `fsck` checks it like any other, and a
child is predicted from what a reader gets back.

    recon = narrow(pred + k * (-step))      pred = widen(base), or the mean of two bases

Codes are stored negated (k = -c) so that a zero code adds -0.0, which leaves every finite
prediction bit-exact (+0.0 would turn -0.0 into +0.0). NaN, infinities, codes beyond the
exact-integer range of the arithmetic, and anything that would overflow are exceptions:
(index, bit pattern) pairs applied last, so such elements are always kept exactly. The
arithmetic is float32 (float64 for F64) multiply then add, which IEEE fixes bit for bit; it runs
in the compiled kernel (kernels.c), for encode and decode alike.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from modelfs import numerics
from modelfs.codecs import kernels
from modelfs.codecs.base import EncodeContext, register_codec
from modelfs.codecs.planes import zstd_compress, zstd_decompress
from modelfs.dtypes import DType

# zstd for the codes: level 1, but matches of at least 7 bytes. Codes of a changed tensor are
# noise of ~3-4 bits a byte: short matches cost more than the Huffman-coded literals they
# replace, so this lands within 1% of the codes' order-0 entropy (level 9: 13% above it,
# 50x slower), while long runs of zero codes (rows that did not move) still match.
_CODE_PARAMS = zstandard.ZstdCompressionParameters(compression_level=1, min_match=7)
_HEAD = struct.Struct("<dBII")  # step, code width in bytes (0: all codes zero), exceptions, codes length
_LIMIT = {np.float32: float(1 << 23), np.float64: float(1 << 30)}  # |code| exact in the arithmetic
_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def lossy_dtype(dt: DType) -> bool:
    """Whether a tensor of `dt` may be stored lossily: F64, F32, F16 and BF16.

    Integers and blobs are always exact; fp8 has too few bits for a grid finer than its own.
    """
    return dt.is_float and numerics.numpy_float(dt)


@dataclass(frozen=True, slots=True)
class QuantHint:
    """The step a committer chose for a chunk (in the tensor's value units)."""

    step: float


def _prediction(ctx: EncodeContext) -> tuple[np.ndarray, np.ndarray]:
    """(values, bit patterns) of the prediction: the base, or the mean of two bases."""
    dt = ctx.dtype
    if len(ctx.bases) == 1:
        return numerics.widen(ctx.bases[0], dt), numerics.bits(ctx.bases[0], dt.itemsize)
    a, b = numerics.widen(ctx.bases[0], dt), numerics.widen(ctx.bases[1], dt)
    with np.errstate(over="ignore", invalid="ignore"):
        p = (a + b) / 2
    return p, numerics.bits(numerics.narrow(p, dt), dt.itemsize)


def _rebuild(pred: np.ndarray, z: np.ndarray, step: float, dt: DType,
             idx: np.ndarray | None = None, exc: np.ndarray | None = None) -> bytes:
    """The bytes of narrow(pred + unzigzag(z) * -step), then the exceptions written over it.

    The one formula encode and decode share, in the compiled kernel (float32 or float64
    arithmetic, multiply then add, never fused); the half types are then rounded by `narrow`.
    """
    ft = numerics.float_type(dt)
    pred = np.ascontiguousarray(pred, dtype=ft)
    wide = dt.name in ("F32", "F64")
    exceptions = (idx, exc) if wide and idx is not None else ()
    out = kernels.rebuild(z, z.itemsize, pred, step, pred.itemsize, *exceptions)
    if wide:
        return out
    bits = numerics.bits(numerics.narrow(np.frombuffer(out, ft), dt), dt.itemsize)
    if idx is not None and len(idx):
        bits[idx] = exc
    return bits.tobytes()


def _zigzag(k: np.ndarray) -> np.ndarray:
    return ((k << 1) ^ (k >> 31)).astype(np.uint32)


def _codes(data: bytes, ctx: EncodeContext, step: float, exact: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zigzag codes, exception indices, exception bit patterns) for `data` against the prediction.

    `exact`: every element the codes do not reproduce is an exception (a lossless encode).
    Otherwise only elements the grid cannot represent are: non-finite values (of the chunk or
    the prediction), codes out of range, and results that would overflow.
    """
    dt = ctx.dtype
    ft = numerics.float_type(dt)
    x = numerics.widen(data, dt)
    xbits = numerics.bits(data, dt.itemsize)
    pred, pbits = _prediction(ctx)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q = (pred - x) / ft(step)
        ok = np.isfinite(q) & (np.abs(q) < _LIMIT[ft])
        z = _zigzag(np.where(ok, np.rint(q), 0).astype(np.int32))
    rbits = numerics.bits(_rebuild(pred, z, step, dt), dt.itemsize) if z.any() else pbits
    # non-finite values never go through the arithmetic (NaN payloads, SIMD order): kept as they are
    exc = ~ok | ~np.isfinite(pred)
    if exact:
        exc |= rbits != xbits
    else:
        exc |= ~np.isfinite(numerics.widen(rbits.view(np.uint8), dt))
    idx = np.flatnonzero(exc).astype(np.uint32)
    return z, idx, xbits[idx]


def _payload(z: np.ndarray, idx: np.ndarray, vals: np.ndarray, step: float) -> bytes:
    top = int(z.max()) if len(z) else 0
    width = 0 if top == 0 else next(w for w in (1, 2, 4) if top < 1 << (8 * w))
    codes = (zstandard.ZstdCompressor(compression_params=_CODE_PARAMS).compress(z.astype(_WIDTH[width]).tobytes())
             if width else b"")
    exc = zstd_compress(idx.tobytes() + vals.tobytes()) if len(idx) else b""
    return _HEAD.pack(step, width, len(idx), len(codes)) + codes + exc


def quantise(data: bytes, ctx: EncodeContext, step: float, prune: bool = False) -> tuple[bytes, bytes]:
    """(payload, reconstruction) of `data` rounded to the step's grid around the prediction.

    The reconstruction is what `decode` gives back, computed by decoding the payload, so what
    the gate checks is what a reader gets, bit for bit. `prune`: the "qdelta-prune" coding
    (the child's new exact zeros kept exactly, the rest quantised around the parent).
    """
    if len(data) % ctx.dtype.itemsize or any(len(b) != len(data) for b in ctx.bases):
        raise ValueError("quantise takes whole elements and bases of the chunk's length")
    if not (step > 0 and np.isfinite(step)):
        raise ValueError(f"the step must be a positive number, not {step}")
    if prune:
        bitmap, inner = _pruned(data, ctx)
        z, idx, vals = _codes(data, inner, step, exact=False)
        payload = bitmap + _payload(z, idx, vals, step)
        return payload, QDELTA_PRUNE.decode(memoryview(payload), len(data), ctx)
    z, idx, vals = _codes(data, ctx, step, exact=False)
    payload = _payload(z, idx, vals, step)
    codec = QDELTA if len(ctx.bases) == 1 else QDELTA_AVG
    return payload, codec.decode(memoryview(payload), len(data), ctx)


def new_zeros(data: bytes | memoryview, base: bytes | memoryview, dt: DType) -> np.ndarray:
    """Elements that are zero (either sign) in `data` and not in `base`: what a prune zeroed."""
    sign = numerics.UINT[dt.itemsize](1 << (8 * dt.itemsize - 1))
    d, b = numerics.bits(data, dt.itemsize), numerics.bits(base, dt.itemsize)
    return ((d & ~sign) == 0) & ((b & ~sign) != 0)


def _masked(base: bytes | memoryview, mask: np.ndarray, dt: DType) -> bytes:
    b = numerics.bits(base, dt.itemsize).copy()
    b[mask] = 0
    return b.tobytes()


def _pruned(data: bytes, ctx: EncodeContext) -> tuple[bytes, EncodeContext]:
    """The bitmap header of "qdelta-prune" and the context whose base has those zeros applied."""
    mask = new_zeros(data, ctx.bases[0], ctx.dtype)
    bitmap = zstd_compress(np.packbits(mask).tobytes())
    inner = EncodeContext(ctx.dtype, [_masked(ctx.bases[0], mask, ctx.dtype)], ctx.base_dtypes, ctx.hint)
    return struct.pack("<I", len(bitmap)) + bitmap, inner


@dataclass(frozen=True)
class QDeltaCodec:
    """id "qdelta" (one base) and "qdelta-avg" (the mean of two: a merge's prediction)."""

    id: str
    n_bases: int

    def applies(self, ctx: EncodeContext) -> bool:
        return (len(ctx.bases) == self.n_bases and isinstance(ctx.hint, QuantHint)
                and ctx.hint.step > 0 and np.isfinite(ctx.hint.step) and lossy_dtype(ctx.dtype)
                and all(b.name == ctx.dtype.name for b in ctx.base_dtypes))

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        """`data` exactly: codes on the hint's grid, exceptions wherever they miss."""
        isz = ctx.dtype.itemsize
        if len(data) % isz or any(len(b) != len(data) for b in ctx.bases):
            return None
        step = float(ctx.hint.step)
        z, idx, vals = _codes(data, ctx, step, exact=True)
        return _payload(z, idx, vals, step)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        dt = ctx.dtype
        step, width, nexc, ncodes = _HEAD.unpack_from(payload, 0)
        n = length // dt.itemsize
        pos = _HEAD.size
        pred, pbits = _prediction(ctx)
        idx = exc = None
        if nexc:
            raw = zstd_decompress(payload[pos + ncodes:], nexc * (4 + dt.itemsize))
            idx = np.frombuffer(raw, dtype=np.uint32, count=nexc)
            exc = np.frombuffer(raw, dtype=pbits.dtype, offset=4 * nexc, count=nexc)
        if width:
            z = np.frombuffer(zstd_decompress(payload[pos:pos + ncodes], n * width), dtype=_WIDTH[width])
            return _rebuild(pred, z, step, dt, idx, exc)
        out = pbits.copy()
        if nexc:
            out[idx] = exc
        return out.tobytes()


@dataclass(frozen=True)
class QDeltaPruneCodec(QDeltaCodec):
    """id "qdelta-prune": a bitmap of the elements the child zeroed, then "qdelta" against the
    parent with those zeros applied, so a magnitude prune keeps its exact zeros (sparsity)."""

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        isz = ctx.dtype.itemsize
        if len(data) % isz or any(len(b) != len(data) for b in ctx.bases):
            return None
        bitmap, inner = _pruned(data, ctx)
        z, idx, vals = _codes(data, inner, float(ctx.hint.step), exact=True)
        return bitmap + _payload(z, idx, vals, float(ctx.hint.step))

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        n = length // ctx.dtype.itemsize
        (blen,) = struct.unpack_from("<I", payload, 0)
        bits = np.frombuffer(zstd_decompress(payload[4:4 + blen], (n + 7) // 8), dtype=np.uint8)
        mask = np.unpackbits(bits, count=n).astype(bool)
        inner = EncodeContext(ctx.dtype, [_masked(ctx.bases[0], mask, ctx.dtype)], ctx.base_dtypes)
        return super().decode(payload[4 + blen:], length, inner)


QDELTA = register_codec(QDeltaCodec("qdelta", 1))
QDELTA_AVG = register_codec(QDeltaCodec("qdelta-avg", 2))
QDELTA_PRUNE = register_codec(QDeltaPruneCodec("qdelta-prune", 1))

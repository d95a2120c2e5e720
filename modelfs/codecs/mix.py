"""Merges recomputed from their parents: weighted combinations (`mix`) and TIES (`ties`).

`avg` predicts (a + b) / 2 only; a merge with another weight (alpha = 0.3), an average of
three models or task arithmetic (base + l * (a - base) + l * (b - base)) is also a fixed
linear combination of its parents. `combine` is *the* definition of those merges: the merge
strategies in `modelfs.ops.merge` call it, and this codec recomputes it at decode, so a
merged chunk costs its weights and an all-zero residual. The order of operations is fixed
(float32 multiply, then add, element by element; float64 for F64), so decode is
deterministic on every machine. Where every parent holds the same bit pattern the result
is that pattern: a merge never moves a weight all its inputs agree on.

TIES-merging is elementwise too once each task vector's trim threshold is known, so
`ties_combine` (given the thresholds) is likewise shared by the strategy and the `ties` codec.

Weights and thresholds are not visible in the bytes, so these codecs encode only when the
committer hands them over as `EncodeContext.hint` (a `MixHint` or `TiesHint`); the payload
then carries them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelfs import numerics
from modelfs.codecs.base import EncodeContext, register_codec
from modelfs.codecs.planes import decode_planes, encode_planes, xor_bytes
from modelfs.dtypes import DType

MAX_BASES = 4


@dataclass(frozen=True)
class MixHint:
    weights: tuple[float, ...]  # one per base, in base order


@dataclass(frozen=True)
class TiesHint:
    thresholds: tuple[float, float]  # trim threshold of each task vector (A - base, B - base)
    lam: float  # scale of the merged task vector


def _as_float(buf: bytes | memoryview | np.ndarray, dtype: DType) -> np.ndarray:
    """The chunk as float32 (float64 for F64) values, NaNs as torch reads them (stored so)."""
    return numerics.widen(buf, dtype, quiet_nans=True)


def _round(values: np.ndarray, dtype: DType) -> np.ndarray:
    """float32/float64 values rounded to `dtype` (round to nearest even), as raw bytes."""
    return numerics.narrow(values, dtype, quiet_nans=True)


def can_combine(dtype: DType) -> bool:
    return numerics.has_values(dtype)


def combine(parts: Sequence[bytes | memoryview], dtype: DType, weights: Sequence[float]) -> np.ndarray:
    """sum(w_i * x_i) in a fixed order, rounded to dtype; elements all parts agree on kept."""
    if len(parts) != len(weights) or not parts:
        raise ValueError("one weight per part")
    ft = numerics.float_type(dtype)
    acc: np.ndarray | None = None
    for x, w in zip(parts, weights, strict=True):
        term = _as_float(x, dtype) * ft(w)
        acc = term if acc is None else acc + term
    assert acc is not None
    return _keep_agreed(_round(np.asarray(acc, dtype=ft), dtype), parts, dtype)


def _keep_agreed(out: np.ndarray, parts: Sequence[bytes | memoryview], dtype: DType) -> np.ndarray:
    """`out` (raw bytes of dtype) with the elements every part agrees on set to that value."""
    res = numerics.bits(out, dtype.itemsize).copy()
    first = numerics.bits(parts[0], dtype.itemsize)
    same = np.ones(len(first), dtype=bool)
    for x in parts[1:]:
        same &= numerics.bits(x, dtype.itemsize) == first
    res[same] = first[same]
    return res.view(np.uint8)


def task_vector(x: bytes | memoryview, base: bytes | memoryview, dtype: DType) -> np.ndarray:
    """x - base in float32 (float64 for F64): what TIES trims."""
    return _as_float(x, dtype) - _as_float(base, dtype)


def ties_combine(parts: Sequence[bytes | memoryview], dtype: DType, thresholds: Sequence[float],
                 lam: float) -> np.ndarray:
    """TIES on (base, a, b) given each task vector's trim threshold: trim, elect, disjoint mean."""
    ft = numerics.float_type(dtype)
    base = _as_float(parts[0], dtype)
    taus = []
    for x, thr in zip(parts[1:], thresholds, strict=True):
        tau = _as_float(x, dtype) - base
        taus.append(np.where(np.abs(tau) >= ft(thr), tau, ft(0)))
    total = taus[0] + taus[1]
    sign = np.sign(total)
    acc = np.zeros_like(total)
    count = np.zeros(total.shape, dtype=np.int8)
    for tau in taus:
        agree = (np.sign(tau) == sign) & (tau != 0)
        acc = acc + np.where(agree, tau, ft(0))
        count += agree
    merged = np.where(count > 0, acc / np.maximum(count, 1).astype(ft), ft(0))
    out = _round(np.asarray(base + merged * ft(lam), dtype=ft), dtype)
    return _keep_agreed(out, parts, dtype)


@dataclass(frozen=True)
class TiesCodec:
    id: str = "ties"
    n_bases: int = 3  # base, a, b

    def applies(self, ctx: EncodeContext) -> bool:
        return (len(ctx.bases) == 3 and can_combine(ctx.dtype)
                and all(d.name == ctx.dtype.name for d in ctx.base_dtypes))

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        hint = getattr(ctx, "hint", None)
        if not isinstance(hint, TiesHint) or any(len(b) != len(data) for b in ctx.bases):
            return None
        pred = ties_combine(ctx.bases, ctx.dtype, hint.thresholds, hint.lam)
        head = struct.pack("<B3d", 1, *hint.thresholds, hint.lam)
        return head + encode_planes(xor_bytes(data, pred), ctx.dtype.itemsize)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        ver, thr_a, thr_b, lam = struct.unpack_from("<B3d", payload, 0)
        if ver != 1:
            raise ValueError("unknown ties payload layout")
        pred = ties_combine(ctx.bases, ctx.dtype, (thr_a, thr_b), lam)
        return decode_planes(payload[25:], length, pred, "xor")


@dataclass(frozen=True)
class MixCodec:
    id: str = "mix"
    n_bases: int = -1  # 1 to MAX_BASES; the record lists them

    def applies(self, ctx: EncodeContext) -> bool:
        return (1 <= len(ctx.bases) <= MAX_BASES and can_combine(ctx.dtype)
                and all(d.name == ctx.dtype.name for d in ctx.base_dtypes))

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        hint = getattr(ctx, "hint", None)
        if not isinstance(hint, MixHint) or len(hint.weights) != len(ctx.bases):
            return None
        if any(len(b) != len(data) for b in ctx.bases):
            return None
        pred = combine(ctx.bases, ctx.dtype, hint.weights)
        head = struct.pack(f"<BB{len(hint.weights)}d", 1, len(hint.weights), *hint.weights)
        return head + encode_planes(xor_bytes(data, pred), ctx.dtype.itemsize)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        ver, k = struct.unpack_from("<BB", payload, 0)
        if ver != 1 or k != len(ctx.bases):
            raise ValueError("mix payload does not match its bases")
        weights = struct.unpack_from(f"<{k}d", payload, 2)
        pred = combine(ctx.bases, ctx.dtype, weights)
        return decode_planes(payload[2 + 8 * k:], length, pred, "xor")


MIX = register_codec(MixCodec())
TIES = register_codec(TiesCodec())

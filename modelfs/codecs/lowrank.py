"""A low-rank update: W' = W + (B @ A) * scale, stored as the factors plus an XOR residual.

A LoRA-derived checkpoint changes every element of each adapted matrix, so a dense XOR
delta costs nearly as much as the matrix; the factors cost (rows + cols) * rank. The
product is recomputed at decode with elementwise numpy operations in a fixed order, never
BLAS (whose summation order differs between machines and thread counts), so decoding is
deterministic everywhere. Several orders are offered at encode time ("fma": a sequential
fused multiply-add in float32, which matches what CPU BLAS computes for small ranks;
"seq32"; "f64") and the one that reproduces the bytes best is kept; the bytes it misses
are the residual, so the codec is lossless whatever the factors were.

The codec needs the factors, so it encodes only when the committer hands them over as an
`EncodeContext.hint` (a `LowRankHint`); the payload then holds everything decode needs.
A chunk of a row-major matrix holds whole rows plus partial rows at its ends, so the
payload carries the rows of B it touches, all of A and the column of its first element.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelfs import numerics
from modelfs.codecs.base import EncodeContext, register_codec
from modelfs.codecs.planes import decode_planes, encode_planes, xor_bytes
from modelfs.dtypes import DType

VARIANTS = ("fma", "seq32", "f64")
_HEAD = struct.Struct("<BBBHIIId")  # version, variant, factor itemsize, rank, ncols, col0, nrows, scale
_FLOAT = {4: np.float32, 8: np.float64}


@dataclass(frozen=True)
class LowRankHint:
    """The factors that touch one chunk: `b_rows` (nrows x r), `a` (r x ncols), where the chunk starts."""

    b_rows: np.ndarray
    a: np.ndarray
    scale: float
    col0: int
    variant: str | None = None  # None: try every variant and keep the best


def chunk_hint(b: np.ndarray, a: np.ndarray, scale: float, elem_start: int, n_elems: int,
               variant: str | None = None) -> LowRankHint:
    """The hint for the chunk covering elements [elem_start, elem_start + n_elems) of B @ A."""
    ncols = a.shape[1]
    row0 = elem_start // ncols
    row1 = (elem_start + max(n_elems, 1) - 1) // ncols + 1
    return LowRankHint(np.ascontiguousarray(b[row0:row1]), np.ascontiguousarray(a), float(scale),
                       elem_start % ncols, variant)


def product(b_rows: np.ndarray, a: np.ndarray, variant: str) -> np.ndarray:
    """B @ A elementwise in a fixed order (deterministic on every machine); float32 but for "f64"."""
    rank = a.shape[0]
    if variant in ("f64", "seq32"):
        dt = np.float64 if variant == "f64" else np.float32
        bd, ad = b_rows.astype(dt), a.astype(dt)
        acc = np.zeros((b_rows.shape[0], a.shape[1]), dtype=dt)
        for k in range(rank):
            acc += bd[:, k:k + 1] * ad[k:k + 1, :]
        return acc
    if variant == "fma":
        acc = np.zeros((b_rows.shape[0], a.shape[1]), dtype=np.float32)
        b64, a64 = b_rows.astype(np.float64), a.astype(np.float64)
        for k in range(rank):
            # a float32 x float32 product is exact in float64; one rounding to float32 = fma
            acc = (b64[:, k:k + 1] * a64[k:k + 1, :] + acc).astype(np.float32)
        return acc
    raise ValueError(f"unknown low-rank variant {variant!r}")


def predict(base: bytes | memoryview, dtype: DType, b_rows: np.ndarray, a: np.ndarray, scale: float,
            col0: int, variant: str) -> np.ndarray:
    """W + (B @ A) * scale for the chunk's elements, rounded to the chunk's dtype."""
    n = len(base) // dtype.itemsize
    delta = product(b_rows, a, variant).reshape(-1)[col0:col0 + n]
    if len(delta) != n:
        raise ValueError("low-rank factors do not cover the chunk")
    if dtype.name == "F64":
        w64 = np.frombuffer(base, dtype=np.float64)
        return w64 + delta.astype(np.float64) * np.float64(scale)
    d32 = delta.astype(np.float32) * np.float32(scale)
    if dtype.name == "F32":
        return np.frombuffer(base, dtype=np.float32) + d32
    # half types: add in float32 and round, as torch did (the stored prediction)
    w = numerics.torch_add(numerics.widen(base, dtype, quiet_nans=True), d32)
    return numerics.narrow(w, dtype, quiet_nans=True)


def _factor_bytes(x: np.ndarray, itemsize: int) -> bytes:
    body = encode_planes(np.ascontiguousarray(x, dtype=_FLOAT[itemsize]).tobytes(), itemsize)
    return struct.pack("<I", len(body)) + body


@dataclass(frozen=True)
class LowRankCodec:
    id: str = "lowrank"
    n_bases: int = 1

    def applies(self, ctx: EncodeContext) -> bool:
        return (len(ctx.bases) == 1 and ctx.base_dtypes[0].name == ctx.dtype.name
                and ctx.dtype.name in ("F32", "F64", "F16", "BF16"))

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        hint: Any = getattr(ctx, "hint", None)
        if not isinstance(hint, LowRankHint) or len(ctx.bases[0]) != len(data):
            return None
        isz = 8 if hint.b_rows.dtype == np.float64 or hint.a.dtype == np.float64 else 4
        b_rows = hint.b_rows.astype(_FLOAT[isz])
        a = hint.a.astype(_FLOAT[isz])
        best: tuple[int, str, np.ndarray] | None = None
        for variant in ([hint.variant] if hint.variant else VARIANTS):
            try:
                pred = predict(ctx.bases[0], ctx.dtype, b_rows, a, hint.scale, hint.col0, variant)
            except ValueError:
                return None
            resid = xor_bytes(data, pred)
            misses = int(np.count_nonzero(resid))
            if best is None or misses < best[0]:
                best = (misses, variant, resid)
        assert best is not None
        head = _HEAD.pack(1, VARIANTS.index(best[1]), isz, a.shape[0], a.shape[1], hint.col0,
                          b_rows.shape[0], hint.scale)
        return (head + _factor_bytes(b_rows, isz) + _factor_bytes(a, isz)
                + encode_planes(best[2], ctx.dtype.itemsize))

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        ver, var, isz, rank, ncols, col0, nrows, scale = _HEAD.unpack_from(payload, 0)
        if ver != 1 or isz not in _FLOAT or var >= len(VARIANTS):
            raise ValueError("unknown low-rank payload layout")
        pos = _HEAD.size
        factors = []
        for shape in ((nrows, rank), (rank, ncols)):
            (n,) = struct.unpack_from("<I", payload, pos)
            raw = decode_planes(payload[pos + 4:pos + 4 + n], shape[0] * shape[1] * isz)
            factors.append(np.frombuffer(raw, dtype=_FLOAT[isz]).reshape(shape))
            pos += 4 + n
        pred = predict(ctx.bases[0], ctx.dtype, factors[0], factors[1], scale, col0, VARIANTS[var])
        return decode_planes(payload[pos:], length, pred, "xor")


LOWRANK = register_codec(LowRankCodec())

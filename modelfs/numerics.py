"""Chunk bytes as numbers: element views, widening to float32/float64 and rounding back.

Codecs that predict a chunk (cast, avg, mix, ties, lowrank), merge strategies and diffs all
read raw bytes as values and write values back as bytes. They do it here, once, so every one
rounds the same way, and in numpy: F16, BF16, F32 and F64 need no torch (whose first import
costs over a second in every process that decodes such a chunk). BF16 is the top half of an
F32, so it widens by a shift and narrows by round-to-nearest-even on the bit pattern, as
torch's CPU conversion does. Only the fp8 types go through torch, imported on first use.

NaN bit patterns are part of a chunk's bytes, and a prediction must be recomputed bit for bit
when the chunk is read, so the NaN rules are spelled out. numpy keeps a signalling F16 NaN
signalling when it converts; torch quiets it (sets the top mantissa bit). Codecs stored with
torch's rounding (mix, ties, lowrank, and the merge strategies that share their arithmetic)
pass ``quiet_nans=True``; cast and avg have predicted the numpy way since they moved to numpy.
BF16 behaves the same either way: widening keeps the pattern, and every NaN narrows to 0xFFFF.
Where torch did a sum, `torch_add` keeps the NaN torch keeps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelfs.dtypes import DType

UINT: dict[int, Any] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}  # bit patterns
INT: dict[int, Any] = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
# element types numpy has (BOOL as its bytes); BF16 and fp8 are missing
NUMPY: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
    "U64": np.uint64, "BOOL": np.uint8,
}
NUMPY_FLOATS = frozenset({"F16", "BF16", "F32", "F64"})  # the floats converted without torch
_F32_QUIET = np.uint32(0x00400000)  # the quiet bit of an F32 NaN


def bits(buf: bytes | memoryview | np.ndarray, itemsize: int) -> np.ndarray:
    """The elements' bit patterns as unsigned integers (a view, no copy)."""
    return np.frombuffer(buf, dtype=UINT[itemsize])


def numpy_float(dt: DType) -> bool:
    """Whether `dt` converts to and from float32 in numpy alone."""
    return dt.name in NUMPY_FLOATS


def has_values(dt: DType) -> bool:
    """Whether `dt` is a float type `widen` and `narrow` handle (numpy or torch)."""
    return dt.is_float and (numpy_float(dt) or dt.torch_name is not None)


def float_type(dt: DType) -> Any:
    """The numpy type arithmetic on `dt` values is done in: float64 for F64, else float32."""
    return np.float64 if dt.name == "F64" else np.float32


def _torch_dtype(dt: DType) -> Any:
    import torch  # fp8: only torch has these types

    if dt.torch_name is None:
        raise ValueError(f"no conversion for element type {dt.name}")
    return getattr(torch, dt.torch_name)


def _torch_view(buf: bytes | memoryview | np.ndarray, dt: DType) -> Any:
    """A torch tensor over a copy of the bytes (torch.frombuffer refuses empty buffers)."""
    import torch

    tdt = _torch_dtype(dt)
    if len(buf) == 0:
        return torch.empty(0, dtype=tdt)
    return torch.frombuffer(bytearray(buf), dtype=tdt)


def widen(buf: bytes | memoryview | np.ndarray, dt: DType, *, quiet_nans: bool = False) -> np.ndarray:
    """The elements as float32 (float64 for F64), exactly; see the module doc for NaNs."""
    if dt.name == "F64":
        return np.frombuffer(buf, dtype=np.float64)
    if dt.name == "F32":
        return np.frombuffer(buf, dtype=np.float32)
    if dt.name == "BF16":
        return (np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dt.name == "F16":
        x = np.frombuffer(buf, dtype=np.float16).astype(np.float32)
        if quiet_nans:
            nan = np.isnan(x)
            if nan.any():
                x.view(np.uint32)[nan] |= _F32_QUIET
        return x
    import torch

    return np.asarray(_torch_view(buf, dt).to(torch.float32).numpy())


def narrow(values: np.ndarray, dt: DType, *, quiet_nans: bool = False) -> np.ndarray:
    """float32/float64 values rounded to `dt` (nearest, ties to even), as raw bytes (uint8).

    Overflow gives infinity, as the IEEE rounding does; no warning is raised for it.
    """
    values = np.asarray(values).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        if dt.name in ("F32", "F64"):
            return np.ascontiguousarray(values, dtype=NUMPY[dt.name]).view(np.uint8)
        if dt.name == "BF16":
            u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
            out = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
            out[np.isnan(values)] = 0xFFFF  # the NaN torch's CPU conversion writes
            return out.view(np.uint8)
        if dt.name == "F16":
            if not quiet_nans:
                return np.ascontiguousarray(values).astype(np.float16).view(np.uint8)
            x = np.ascontiguousarray(values, dtype=np.float32)
            out = x.astype(np.float16).view(np.uint16)
            nan = np.isnan(x)
            if nan.any():  # torch: sign, all-ones exponent, quiet bit, top 9 payload bits
                u = x.view(np.uint32)[nan]
                out[nan] = (((u >> 16) & 0x8000) | 0x7E00 | ((u >> 13) & 0x01FF)).astype(np.uint16)
            return out.view(np.uint8)
    import torch

    src = torch.from_numpy(np.ascontiguousarray(values))
    return np.asarray(src.to(_torch_dtype(dt)).view(torch.uint8).numpy())


def torch_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b elementwise (equal shapes), keeping the NaN torch's CPU add keeps where both are NaN.

    IEEE leaves that choice open: torch returns b's NaN (quieted) at every length, numpy returns
    a's or b's depending on where the element falls in its SIMD loop. Predictions that torch
    computed (lowrank on half types, avg on fp8) use this, so they stay what was stored.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        out = a + b
    both = np.isnan(a) & np.isnan(b)
    if both.any():
        ut, quiet = (np.uint64, np.uint64(1 << 51)) if out.dtype == np.float64 else (np.uint32, _F32_QUIET)
        out[both] = (np.asarray(b)[both].view(ut) | quiet).view(out.dtype)
    return out


def cast(buf: bytes | memoryview | np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """Elements of `src` converted to `dst`, as raw bytes: what `.half()` or `.to()` writes."""
    if numpy_float(src) and numpy_float(dst):
        return narrow(widen(buf, src), dst)
    import torch

    return np.asarray(_torch_view(buf, src).to(_torch_dtype(dst)).view(torch.uint8).numpy())


def as_float64(buf: bytes | memoryview, dt: DType) -> np.ndarray | None:
    """The elements as float64, or None for types without a numeric reading (complex, E8M0)."""
    np_t = NUMPY.get(dt.name)
    if np_t is not None:
        return np.frombuffer(buf, dtype=np_t).astype(np.float64)
    if dt.name == "BF16":
        return widen(buf, dt).astype(np.float64)
    if dt.torch_name is None or not dt.is_float:
        return None
    import torch

    return np.asarray(_torch_view(buf, dt).to(torch.float64).numpy())

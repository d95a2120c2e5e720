"""Element types the formats know: safetensors names, sizes, and how to view them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DType:
    name: str  # safetensors spelling, e.g. "BF16"
    itemsize: int  # bytes per element
    is_float: bool
    torch_name: str | None  # attribute of `torch` for casts, where torch has it


_TABLE = [
    DType("BOOL", 1, False, "bool"),
    DType("U8", 1, False, "uint8"),
    DType("I8", 1, False, "int8"),
    DType("F8_E5M2", 1, True, "float8_e5m2"),
    DType("F8_E4M3", 1, True, "float8_e4m3fn"),
    DType("F8_E8M0", 1, True, None),
    DType("I16", 2, False, "int16"),
    DType("U16", 2, False, "uint16"),
    DType("F16", 2, True, "float16"),
    DType("BF16", 2, True, "bfloat16"),
    DType("I32", 4, False, "int32"),
    DType("U32", 4, False, "uint32"),
    DType("F32", 4, True, "float32"),
    DType("I64", 8, False, "int64"),
    DType("U64", 8, False, "uint64"),
    DType("F64", 8, True, "float64"),
    DType("C64", 8, False, None),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
BYTES = DTYPES["U8"]  # the element type of blobs


def dtype(name: str) -> DType:
    return DTYPES[name]

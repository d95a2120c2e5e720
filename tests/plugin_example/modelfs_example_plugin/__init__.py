"""An example modelfs plug-in: one format, one codec, one update type, one merge strategy.

Each is a plain class; modelfs instantiates it when it loads the entry point.
"""

from __future__ import annotations

import ast
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelfs.codecs.planes import decode_planes, encode_planes, xor_bytes
from modelfs.dtypes import DTYPES
from modelfs.formats import FileLayout, FormatError, InlinePart, TensorPart
from modelfs.ops.commit import ChunkHint

_NPY_TYPES = {"<f4": "F32", "<f2": "F16", "<f8": "F64", "<i8": "I64", "<i4": "I32", "|i1": "I8",
              "|u1": "U8", "|b1": "BOOL"}


class NpyFormat:
    """`.npy` arrays (C order, little-endian): the header verbatim, the data one tensor part."""

    name = "npy"
    rewritable = True  # the header does not depend on the values: merges may replace them

    def claims(self, path: str, head: bytes) -> bool:
        return head.startswith(b"\x93NUMPY")

    def parse(self, data: memoryview) -> FileLayout:
        if len(data) < 10:
            raise FormatError("shorter than an .npy header")
        major = data[6]
        if major == 1:
            (hlen,) = struct.unpack_from("<H", data, 8)
            start = 10 + hlen
        elif major in (2, 3):
            (hlen,) = struct.unpack_from("<I", data, 8)
            start = 12 + hlen
        else:
            raise FormatError(f"unknown .npy version {major}")
        try:
            header = ast.literal_eval(bytes(data[start - hlen:start]).decode("latin1"))
        except (ValueError, SyntaxError) as e:
            raise FormatError(f"bad .npy header: {e}") from None
        if not isinstance(header, dict) or header.get("fortran_order") is not False:
            raise FormatError("only C-order arrays")
        dt = _NPY_TYPES.get(header.get("descr"))
        shape = header.get("shape")
        if dt is None or not isinstance(shape, tuple):
            raise FormatError(f"unsupported dtype {header.get('descr')!r}")
        nbytes = math.prod(shape) * DTYPES[dt].itemsize
        if start + nbytes != len(data):
            raise FormatError("data size does not match the header")
        return FileLayout(self.name, (InlinePart(bytes(data[:start])),
                                      TensorPart("array", DTYPES[dt], shape, start, nbytes)))


class ScaleCodec:
    """A chunk predicted as c * parent in float32; the payload is c and the XOR residual."""

    id = "example-scale"
    n_bases = 1

    def applies(self, ctx: Any) -> bool:
        return len(ctx.bases) == 1 and ctx.dtype.name == "F32" and ctx.base_dtypes[0].name == "F32"

    @staticmethod
    def _predict(base: bytes, c: float) -> np.ndarray:
        return np.frombuffer(base, dtype=np.float32) * np.float32(c)

    def encode(self, data: bytes, ctx: Any) -> bytes | None:
        c = getattr(ctx, "hint", None)
        if not isinstance(c, float) or len(ctx.bases[0]) != len(data):
            return None
        resid = xor_bytes(data, self._predict(ctx.bases[0], c))
        return struct.pack("<f", c) + encode_planes(resid, 4)

    def decode(self, payload: memoryview, length: int, ctx: Any) -> bytes:
        (c,) = struct.unpack_from("<f", payload, 0)
        return xor_bytes(decode_planes(payload[4:], length), self._predict(ctx.bases[0], c)).tobytes()


class ScaleUpdate:
    kind = "example-scale"

    def __init__(self, c: float) -> None:
        self.c = c

    def hints(self, elem_start: int, n_elems: int, parent_key: bytes) -> list[ChunkHint]:
        return [ChunkHint("example-scale", (parent_key,), self.c)]

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "factor": self.c}


class ScaleUpdateType:
    """Recognises child == c * parent (float32) for one scalar c."""

    name = "example-scale"

    def detect(self, pair: Any) -> ScaleUpdate | None:
        if pair.dtype.name != "F32":
            return None
        p = np.frombuffer(pair.parent, dtype=np.float32)
        x = np.frombuffer(pair.child, dtype=np.float32)
        nz = p != 0
        if not nz.any():
            return None
        c = float(np.float32(np.median(x[nz] / p[nz])))
        if np.mean(p * np.float32(c) == x) < 0.99:
            return None
        return ScaleUpdate(c)


class Maximum:
    """Elementwise maximum of A and B."""

    name = "example-maximum"
    needs_base = False
    takes = None

    def merge(self, t: Any, params: Mapping[str, float]) -> bytes:
        out: bytes = t.to_bytes(np.maximum(t.floats("a"), t.floats("b")))
        return out

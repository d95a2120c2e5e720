"""A sparse update: positions and XORed values of the few elements that changed.

XOR + byte planes already shrinks a mostly-unchanged chunk, but zstd still pays per run
of zeros in every plane; listing the changed positions (delta-coded gaps) and their XORed
bit patterns costs a few bytes per changed element and nothing per unchanged one. The
chunk's bases are its parent chunk; decode copies it and patches the listed elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from modelfs import numerics
from modelfs.codecs.base import EncodeContext, register_codec
from modelfs.codecs.planes import decode_planes, encode_planes, zstd_compress, zstd_decompress

MAX_FRACTION = 0.25  # beyond this a dense XOR is as small, and cheaper to decode


def changed_positions(data: bytes | memoryview, base: bytes | memoryview, itemsize: int) -> np.ndarray:
    """Indices of elements whose bit patterns differ (the definition of 'changed')."""
    a = np.frombuffer(data, dtype=numerics.UINT[itemsize])
    b = np.frombuffer(base, dtype=numerics.UINT[itemsize])
    return np.flatnonzero(a != b)


@dataclass(frozen=True)
class SparseCodec:
    id: str = "sparse"
    n_bases: int = 1

    def applies(self, ctx: EncodeContext) -> bool:
        return (len(ctx.bases) == 1 and len(ctx.base_dtypes) == 1
                and ctx.base_dtypes[0].name == ctx.dtype.name and ctx.dtype.itemsize in numerics.UINT)

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        isz = ctx.dtype.itemsize
        if len(data) % isz or len(ctx.bases[0]) != len(data):
            return None
        n = len(data) // isz
        pos = changed_positions(data, ctx.bases[0], isz)
        if len(pos) > n * MAX_FRACTION:
            return None
        gaps = np.diff(pos, prepend=-1).astype(np.uint32)  # >= 1 each; small for clusters
        a = np.frombuffer(data, dtype=numerics.UINT[isz])[pos]
        b = np.frombuffer(ctx.bases[0], dtype=numerics.UINT[isz])[pos]
        zgaps = zstd_compress(gaps.tobytes())
        return struct.pack("<II", len(pos), len(zgaps)) + zgaps + encode_planes((a ^ b).tobytes(), isz)

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes:
        isz = ctx.dtype.itemsize
        count, zlen = struct.unpack_from("<II", payload, 0)
        gaps = np.frombuffer(zstd_decompress(payload[8:8 + zlen], 4 * count), dtype=np.uint32)
        pos = np.cumsum(gaps.astype(np.int64)) - 1
        xor = np.frombuffer(decode_planes(payload[8 + zlen:], count * isz), dtype=numerics.UINT[isz])
        out = np.frombuffer(ctx.bases[0], dtype=numerics.UINT[isz]).copy()
        if count:
            if pos[-1] >= len(out) or len(pos) != count:
                raise ValueError("sparse payload lists a position past the end of the chunk")
            out[pos] ^= xor
        if out.nbytes != length:
            raise ValueError(f"sparse chunk decodes to {out.nbytes} bytes, expected {length}")
        return out.tobytes()


SPARSE = register_codec(SparseCodec())

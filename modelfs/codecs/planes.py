"""Byte-plane split and per-plane entropy coding: the core of every float codec.

Splitting elements into byte planes puts the slowly varying bytes (sign, exponent, high
mantissa) together, where zstd finds long runs; the noisy low mantissa planes are kept
raw when zstd cannot shrink them, which also saves decode time.
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import zstandard

from modelfs.codecs import kernels

ZSTD_LEVEL = 1  # measured on real fp32 weights: faster than 3 and no larger on byte planes
_SAMPLE = 1 << 16  # probe this much of a plane first; noise-like planes are stored raw
_RAW, _ZSTD, _ZERO = 0, 1, 2
_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def zstd_compress(data: bytes | memoryview) -> bytes:
    return _cctx().compress(data)


def zstd_decompress(data: bytes | memoryview, size: int) -> bytes:
    return _dctx().decompress(data, max_output_size=size)


def split_planes(data: bytes | memoryview | np.ndarray, itemsize: int) -> tuple[list[np.ndarray], bytes]:
    """Planes of the whole elements (plane k = byte k of every element) and the leftover tail."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    n = len(buf) // itemsize
    body = buf[: n * itemsize].reshape(n, itemsize)
    return [np.ascontiguousarray(body[:, k]) for k in range(itemsize)], buf[n * itemsize:].tobytes()


def encode_planes(data: bytes | memoryview | np.ndarray, itemsize: int) -> bytes:
    """Each plane stored as zero, zstd or raw, whichever is smallest."""
    planes, tail = split_planes(data, itemsize)
    parts = [struct.pack("<BI", len(planes), len(tail)), tail]
    for p in planes:
        if not p.any():
            parts.append(struct.pack("<BI", _ZERO, 0))
            continue
        if len(p) > 4 * _SAMPLE and len(zstd_compress(p[:_SAMPLE])) > 0.97 * _SAMPLE:
            parts += [struct.pack("<BI", _RAW, len(p)), p.tobytes()]
            continue
        z = zstd_compress(p)
        if len(z) < len(p):
            parts += [struct.pack("<BI", _ZSTD, len(z)), z]
        else:
            parts += [struct.pack("<BI", _RAW, len(p)), p.tobytes()]
    return b"".join(parts)


RESIDUALS = {"none": 0, "xor": 1, "sub": 2}  # how the kernel applies planes to a prediction


def decode_planes(payload: memoryview, length: int, pred: bytes | memoryview | np.ndarray | None = None,
                  residual: str = "none") -> bytes:
    """The bytes `encode_planes` stored; with a prediction, the residual applied to it.

    ``residual="xor"`` XORs the planes' bytes onto ``pred``; ``"sub"`` reads them as zigzag
    codes (see builtin.zigzag_diff) and adds them to pred's elements. Joining and applying
    happen in one pass of the compiled kernel, outside the GIL.
    """
    nplanes, ntail = struct.unpack_from("<BI", payload, 0)
    pos = 5
    tail = payload[pos:pos + ntail]
    pos += ntail
    if nplanes == 0:  # not written by encode_planes (it always writes itemsize planes)
        raise ValueError("plane payload has no planes")
    n = (length - ntail) // nplanes
    planes: list[bytes | memoryview | None] = []
    for _ in range(nplanes):
        method, size = struct.unpack_from("<BI", payload, pos)
        pos += 5
        if method == _ZERO:
            planes.append(None)
            continue
        raw = payload[pos:pos + size]
        pos += size
        planes.append(zstd_decompress(raw, n) if method == _ZSTD else raw)
    if n * len(planes) + len(tail) != length or any(p is not None and len(p) != n for p in planes):
        raise ValueError(f"plane payload does not decode to {length} bytes")
    return kernels.join(tuple(planes), n, tail, pred, RESIDUALS[residual])


def xor_bytes(a: bytes | memoryview | np.ndarray, b: bytes | memoryview | np.ndarray) -> np.ndarray:
    """XOR of two equal-length buffers, word-wise for speed."""
    x = np.frombuffer(a, dtype=np.uint8) if not isinstance(a, np.ndarray) else a.view(np.uint8).ravel()
    y = np.frombuffer(b, dtype=np.uint8) if not isinstance(b, np.ndarray) else b.view(np.uint8).ravel()
    n8 = len(x) // 8 * 8
    out = np.empty(len(x), dtype=np.uint8)
    np.bitwise_xor(x[:n8].view(np.uint64), y[:n8].view(np.uint64), out=out[:n8].view(np.uint64))
    np.bitwise_xor(x[n8:], y[n8:], out=out[n8:])
    return out

"""The compiled kernels (modelfs/codecs/kernels.c) against a numpy statement of what they do.

The oracle here is the definition, written for the test only: planes interleaved into
elements, then the residual applied to the prediction (XOR, or zigzag codes added with
wrap-around). Every element size the dtypes have, NaN/Inf/denormal bit patterns, empty and
odd-length chunks, and the malformed calls a corrupt record could make.
"""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.codecs import kernels
from modelfs.codecs.builtin import zigzag_diff
from modelfs.codecs.planes import decode_planes, encode_planes, split_planes

ITEMSIZES = [1, 2, 3, 4, 8]
SPECIAL_F32 = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 3.4e38],
                       dtype=np.float32)


def oracle(planes: list[bytes | None], n: int, tail: bytes, pred: bytes | None, op: int) -> bytes:
    k = len(planes)
    out = np.zeros((n, k), dtype=np.uint8)
    for j, p in enumerate(planes):
        if p is not None:
            out[:, j] = np.frombuffer(p, dtype=np.uint8)
    joined = out.tobytes() + tail
    if op == 0:
        return joined
    q = np.frombuffer(pred, dtype=np.uint8)
    if op == 1:
        return (np.frombuffer(joined, dtype=np.uint8) ^ q).tobytes()
    ut = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[k]
    z = np.frombuffer(joined, dtype=ut)
    d = (z >> ut(1)) ^ (np.zeros_like(z) - (z & ut(1)))
    return (d + np.frombuffer(pred, dtype=ut)).tobytes()


@st.composite
def plane_sets(draw: st.DrawFn) -> tuple[list[bytes | None], int, bytes, bytes, int]:
    isz = draw(st.sampled_from(ITEMSIZES))
    n = draw(st.integers(0, 300))
    op = draw(st.sampled_from([0, 1, 2] if isz in (1, 2, 4, 8) else [0, 1]))
    planes = [None if draw(st.booleans()) and draw(st.booleans()) else draw(st.binary(min_size=n, max_size=n))
              for _ in range(isz)]
    tail = b"" if op == 2 else draw(st.binary(max_size=isz - 1))
    pred = draw(st.binary(min_size=n * isz + len(tail), max_size=n * isz + len(tail)))
    return planes, n, tail, pred, op


@settings(max_examples=300, deadline=None)
@given(case=plane_sets())
def test_join_matches_its_definition(case: tuple[list[bytes | None], int, bytes, bytes, int]) -> None:
    planes, n, tail, pred, op = case
    got = kernels.join(tuple(planes), n, tail, pred if op else None, op)
    assert got == oracle(planes, n, tail, pred, op)


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=3000), isz=st.sampled_from([2, 4, 8]))
def test_sub_residual_roundtrips_any_bit_patterns(raw: bytes, isz: int) -> None:
    n = len(raw) // isz * isz
    data, pred = raw[:n], bytes(reversed(raw[:n]))
    payload = memoryview(encode_planes(zigzag_diff(data, pred, isz), isz))
    assert decode_planes(payload, n, pred, "sub") == data


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=3001), isz=st.sampled_from(ITEMSIZES))
def test_xor_residual_roundtrips_odd_lengths(raw: bytes, isz: int) -> None:
    pred = bytes((b * 7 + 3) & 0xFF for b in raw)
    resid = (np.frombuffer(raw, np.uint8) ^ np.frombuffer(pred, np.uint8)).tobytes()
    assert decode_planes(memoryview(encode_planes(resid, isz)), len(raw), pred, "xor") == raw


def test_special_floats_and_denormals_survive_every_residual() -> None:
    data = np.tile(SPECIAL_F32, 50)
    pred = np.roll(data, 3).tobytes()
    for residual, codes in [("xor", (np.frombuffer(data.tobytes(), np.uint8) ^ np.frombuffer(pred, np.uint8))),
                            ("sub", zigzag_diff(data.tobytes(), pred, 4))]:
        got = decode_planes(memoryview(encode_planes(codes, 4)), data.nbytes, pred, residual)
        assert got == data.tobytes()  # NaN payloads too: compared as bytes


def test_planes_are_read_in_place_from_numpy_and_memoryview() -> None:
    data = np.arange(1000, dtype=np.float32).tobytes()
    planes, tail = split_planes(data, 4)
    assert kernels.join(tuple(planes), 1000, tail) == data
    assert kernels.join(tuple(memoryview(p) for p in planes), 1000, tail) == data


@pytest.mark.parametrize("call, says", [
    (lambda: kernels.join((b"ab", b"a"), 2, b""), "plane 1 is 1 bytes"),
    (lambda: kernels.join((b"ab",), 2, b"", b"abc", 1), "prediction is 3 bytes"),
    (lambda: kernels.join((b"ab",), 2, b"", None, 1), "needs a prediction"),
    (lambda: kernels.join((b"ab", b"cd", b"ef"), 2, b"", b"x" * 6, 2), "zigzag"),
    (lambda: kernels.join((), 0, b""), "1 to 16 planes"),
    (lambda: kernels.join((b"a",), 1, b"", None, 5), "op 0, 1 or 2"),
])
def test_malformed_calls_raise_instead_of_reading_past_a_buffer(call, says: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=says):
        call()


def test_a_truncated_plane_payload_is_an_error_not_short_output() -> None:
    payload = encode_planes(np.arange(64, dtype=np.float32).tobytes(), 4)
    with pytest.raises((ValueError, zstandard.ZstdError)):  # the chunk reader makes either CorruptData
        decode_planes(memoryview(payload[:-7]), 256)


def rebuild_oracle(z: np.ndarray, pred: np.ndarray, step: float, idx: np.ndarray, exc: np.ndarray) -> bytes:
    """numpy's statement of the qdelta rebuild (what the codec ran before the kernel had it)."""
    ft = pred.dtype.type
    zi = z.astype(np.int64)
    k = ((zi >> 1) ^ -(zi & 1)).astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):
        vals = k.astype(ft)
        np.multiply(vals, ft(-step), out=vals)
        np.add(vals, pred, out=vals)
    out = vals.view(np.uint32 if ft is np.float32 else np.uint64).copy()
    out[idx] = exc
    return out.tobytes()


@st.composite
def rebuild_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    isz = draw(st.sampled_from([4, 8]))
    width = draw(st.sampled_from([1, 2, 4]))
    n = draw(st.integers(0, 200))
    ft, ut = (np.float32, np.uint32) if isz == 4 else (np.float64, np.uint64)
    # random bit patterns (NaN payloads, infinities, denormals) mixed with ordinary weights
    pred = np.frombuffer(draw(st.binary(min_size=n * isz, max_size=n * isz)), dtype=ft).copy()
    ordinary = np.array(draw(st.lists(st.floats(-1, 1, width=32), min_size=n, max_size=n)), dtype=ft)
    keep = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    pred[keep] = ordinary[keep]
    if n:
        pred[: len(SPECIAL_F32)] = SPECIAL_F32[: n].astype(ft)
    top = {1: 0xFF, 2: 0xFFFF, 4: (1 << 24) - 1}[width]
    z = np.array(draw(st.lists(st.integers(0, top), min_size=n, max_size=n)),
                 dtype={1: np.uint8, 2: np.uint16, 4: np.uint32}[width])
    step = draw(st.sampled_from([1e-7, 3.3e-5, 0.5, 1e-30, 3e38, 1e300]))
    idx = np.array(draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=min(n, 8))), dtype=np.uint32)
    exc = np.frombuffer(draw(st.binary(min_size=len(idx) * isz, max_size=len(idx) * isz)), dtype=ut)
    return z, pred, step, idx, exc


@settings(max_examples=300, deadline=None)
@given(case=rebuild_cases())
def test_rebuild_matches_numpy_bit_for_bit(case: tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]) -> None:
    """Chunks stored before the kernel took the rebuild still decode byte-exact: same IEEE steps."""
    z, pred, step, idx, exc = case
    got = kernels.rebuild(z, z.itemsize, pred, step, pred.itemsize, idx, exc)
    assert got == rebuild_oracle(z, pred, step, idx, exc)


@pytest.mark.parametrize("call, says", [
    (lambda: kernels.rebuild(b"ab", 1, b"\0" * 4, 0.1, 4), "2 bytes of codes for 4 bytes"),
    (lambda: kernels.rebuild(b"a", 3, b"\0" * 4, 0.1, 4), "code width 1, 2 or 4"),
    (lambda: kernels.rebuild(b"a", 1, b"\0" * 2, 0.1, 2), "itemsize 4 or 8"),
    (lambda: kernels.rebuild(b"a", 1, b"\0" * 4, 0.1, 4, b"\1\0\0\0", b"\0" * 4), "index 1 beyond 1"),
    (lambda: kernels.rebuild(b"a", 1, b"\0" * 4, 0.1, 4, b"\0\0\0\0", b"\0" * 3), "one bit pattern"),
])
def test_malformed_rebuilds_raise_instead_of_writing_past_a_buffer(call, says: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=says):
        call()

"""Every codec round-trips bit-exact: all dtypes, odd lengths, deltas, special float bit patterns.

Lossless is the invariant the whole store rests on, so each codec is driven by hypothesis
over random bytes (the worst case for prediction) and over realistic, structured inputs
(where the codecs actually take their zstd / zero-plane / exact-prediction paths).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modelfs.codecs import EncodeContext, choose_encoding, get_codec, registered_codecs
from modelfs.codecs.planes import decode_planes, encode_planes
from modelfs.dtypes import DTYPES, DType

ALL = sorted(DTYPES)
FLOATS_WITH_TORCH = sorted(n for n, d in DTYPES.items() if d.is_float and d.torch_name)
PRUNABLE = sorted(n for n, d in DTYPES.items() if d.is_float and d.itemsize in (1, 2, 4, 8))
CAST_TARGETS = ["F16", "BF16", "F8_E4M3", "F8_E5M2"]
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# (sign bit, exponent bits) per float layout: every all-ones exponent is an inf or a NaN.
_FLOAT_BITS = {"F16": (15, 0x7C00), "BF16": (15, 0x7F80), "F32": (31, 0x7F800000),
               "F64": (63, 0x7FF0000000000000), "F8_E4M3": (7, 0x78), "F8_E5M2": (7, 0x7C),
               "F8_E8M0": (7, 0xFF)}


def as_torch(raw: bytes, tdt: object) -> object:
    """torch.frombuffer refuses empty buffers."""
    return torch.frombuffer(bytearray(raw), dtype=tdt) if raw else torch.empty(0, dtype=tdt)


def roundtrip(codec_id: str, data: bytes, ctx: EncodeContext) -> bytes | None:
    """Encode and decode with one codec; None when the codec declines the input."""
    codec = get_codec(codec_id)
    payload = codec.encode(data, ctx)
    if payload is None:
        return None
    assert isinstance(payload, bytes | bytearray)
    return bytes(codec.decode(memoryview(bytes(payload)), len(data), ctx))


# -- strategies ------------------------------------------------------------------------------------
@st.composite
def element_bytes(draw: st.DrawFn, dtype: DType, max_elems: int = 300) -> bytes:
    """Bytes of a whole number of elements: random, low-entropy, or special float bit patterns."""
    n = draw(st.one_of(st.sampled_from([0, 1, 2, 7]), st.integers(0, max_elems)))
    kind = draw(st.sampled_from(["random", "structured", "special"]))
    if kind == "random" or n == 0:
        return draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "structured":  # few distinct byte values: compressible planes, zero planes
        alphabet = rng.integers(0, 256, size=draw(st.integers(1, 4)), dtype=np.uint8)
        return rng.choice(alphabet, size=n * dtype.itemsize).astype(np.uint8).tobytes()
    return special_floats(dtype, n, rng)


def special_floats(dtype: DType, n: int, rng: np.random.Generator) -> bytes:
    """NaNs with payloads, +-inf, -0.0, denormals and ordinary values mixed together."""
    isz = dtype.itemsize
    if dtype.name not in _FLOAT_BITS:
        return rng.integers(0, 256, size=n * isz, dtype=np.uint8).tobytes()
    sign_bit, exp = _FLOAT_BITS[dtype.name]
    ut = _UINT[isz]
    sign = 1 << sign_bit
    top = (1 << (8 * isz)) - 1
    mant = top & ~(sign | exp)
    patterns = [0, sign, exp, sign | exp, exp | 1, exp | mant, sign | exp | mant, sign | exp | (mant >> 1),
                1, sign | 1, mant]
    vals = rng.integers(0, 1 << min(8 * isz, 62), size=n, dtype=np.uint64) & top
    picks = rng.integers(0, len(patterns) + 1, size=n)
    out = np.array([patterns[p] if p < len(patterns) else int(v) for p, v in zip(picks, vals, strict=True)],
                   dtype=np.uint64)
    return out.astype(ut).tobytes()


def mutate(base: bytes, itemsize: int, rng: np.random.Generator, frac: float) -> bytes:
    """A child of `base`: a fraction of elements get their low bytes changed (a small update)."""
    arr = np.frombuffer(base, dtype=np.uint8).copy().reshape(-1, itemsize) if base else np.zeros((0, itemsize), np.uint8)
    n = len(arr)
    if n:
        idx = rng.random(n) < frac
        arr[idx, 0] ^= rng.integers(1, 256, size=int(idx.sum()), dtype=np.uint8)
    return arr.tobytes()


# -- the registry --------------------------------------------------------------------------------------
def test_builtin_codecs_are_registered_with_stable_ids() -> None:
    ids = set(registered_codecs())
    assert {"raw", "zstd", "planes", "xor", "cast", "avg", "prune"} <= ids
    for cid in ids:
        assert get_codec(cid).id == cid


def test_unknown_codec_is_a_clear_error() -> None:
    from modelfs.errors import ModelfsError

    with pytest.raises(ModelfsError, match="not installed"):
        get_codec("no-such-codec")


# -- self-contained codecs --------------------------------------------------------------------------------
@given(data=st.data(), dtype_name=st.sampled_from(ALL))
def test_self_contained_codecs_roundtrip_every_dtype(data: st.DataObject, dtype_name: str) -> None:
    dt = DTYPES[dtype_name]
    raw = data.draw(element_bytes(dt))
    ctx = EncodeContext(dt)
    for cid in ("raw", "zstd", "planes"):
        if cid == "planes" and not get_codec(cid).applies(ctx):
            assert dt.itemsize == 1
            continue
        assert roundtrip(cid, raw, ctx) == raw, cid


@given(raw=st.binary(max_size=2000), dtype_name=st.sampled_from(["F16", "F32", "F64"]),
       odd_itemsize=st.sampled_from([3, 5, 7, 16]))
def test_self_contained_codecs_roundtrip_odd_lengths(raw: bytes, dtype_name: str, odd_itemsize: int) -> None:
    """Lengths that are not a whole number of elements: the planes tail, zstd and raw."""
    ctx = EncodeContext(DTYPES[dtype_name])
    for cid in ("raw", "zstd", "planes"):
        assert roundtrip(cid, raw, ctx) == raw, cid
    # the plane split itself, with element sizes no dtype has
    assert decode_planes(memoryview(encode_planes(raw, odd_itemsize)), len(raw)) == raw


def test_planes_compress_structured_floats_and_zero_planes_cost_nothing() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(1 << 16) * 0.02).astype(np.float32).tobytes()
    payload = get_codec("planes").encode(w, EncodeContext(DTYPES["F32"]))
    assert payload is not None and len(payload) < 0.9 * len(w)  # exponent planes shrink
    zeros = bytes(1 << 16)
    payload = get_codec("planes").encode(zeros, EncodeContext(DTYPES["F32"]))
    assert payload is not None and len(payload) < 64


# -- deltas --------------------------------------------------------------------------------------------------
def same_type_delta_codecs() -> list[str]:
    """xor and every other one-parent delta over the same dtype (sub, plug-ins)."""
    return sorted(cid for cid, c in registered_codecs().items()
                  if c.n_bases == 1 and cid not in ("cast", "prune"))


@given(data=st.data(), dtype_name=st.sampled_from(ALL), frac=st.sampled_from([0.0, 0.01, 0.5, 1.0]))
def test_one_parent_deltas_roundtrip_against_a_parent_of_the_same_length(
        data: st.DataObject, dtype_name: str, frac: float) -> None:
    dt = DTYPES[dtype_name]
    base = data.draw(element_bytes(dt))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    child = data.draw(st.sampled_from([
        mutate(base, dt.itemsize, rng, frac),
        special_floats(dt, len(base) // dt.itemsize, rng),
    ]))
    ctx = EncodeContext(dt, [base], [dt])
    assert get_codec("xor").applies(ctx)
    for cid in same_type_delta_codecs():
        if get_codec(cid).applies(ctx):
            out = roundtrip(cid, child, ctx)
            assert out is None or out == child, cid
    assert roundtrip("xor", child, ctx) == child


def test_xor_of_identical_chunks_is_tiny() -> None:
    base = np.random.default_rng(1).standard_normal(1 << 15).astype(np.float32).tobytes()
    payload = get_codec("xor").encode(base, EncodeContext(DTYPES["F32"], [base], [DTYPES["F32"]]))
    assert payload is not None and len(payload) < 64


@given(data=st.data(), dtype_name=st.sampled_from(PRUNABLE), prune_frac=st.sampled_from([0.0, 0.02, 0.3, 1.0]),
       change_frac=st.sampled_from([0.0, 0.1]))
def test_prune_roundtrips(data: st.DataObject, dtype_name: str, prune_frac: float, change_frac: float) -> None:
    dt = DTYPES[dtype_name]
    base = data.draw(element_bytes(dt))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = len(base) // dt.itemsize
    child = np.frombuffer(mutate(base, dt.itemsize, rng, change_frac), dtype=_UINT[dt.itemsize]).copy()
    child[rng.random(n) < prune_frac] = 0  # +0.0 ...
    neg = rng.random(n) < prune_frac / 4
    child[neg] = np.array(1 << (8 * dt.itemsize - 1), dtype=np.uint64).astype(_UINT[dt.itemsize])  # ... and -0.0
    ctx = EncodeContext(dt, [base], [dt])
    if not get_codec("prune").applies(ctx):
        assert dt.itemsize not in _UINT
        return
    out = roundtrip("prune", child.tobytes(), ctx)
    assert out is None or out == child.tobytes()


def test_prune_of_a_magnitude_pruned_parent_beats_plain_xor() -> None:
    rng = np.random.default_rng(2)
    base = (rng.standard_normal(1 << 16) * 0.05).astype(np.float32)
    child = base.copy()
    child[np.abs(child) < np.quantile(np.abs(child), 0.3)] = 0
    ctx = EncodeContext(DTYPES["F32"], [base.tobytes()], [DTYPES["F32"]])
    pruned = get_codec("prune").encode(child.tobytes(), ctx)
    xored = get_codec("xor").encode(child.tobytes(), ctx)
    assert pruned is not None and xored is not None
    assert len(pruned) < len(xored) / 10
    assert roundtrip("prune", child.tobytes(), ctx) == child.tobytes()


@given(data=st.data(), dtype_name=st.sampled_from(FLOATS_WITH_TORCH))
def test_avg_roundtrips_with_two_parents(data: st.DataObject, dtype_name: str) -> None:
    dt = DTYPES[dtype_name]
    a = data.draw(element_bytes(dt))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    b = data.draw(st.sampled_from([mutate(a, dt.itemsize, rng, 0.5),
                                   special_floats(dt, len(a) // dt.itemsize, rng)]))
    ctx = EncodeContext(dt, [a, b], [dt, dt])
    assert get_codec("avg").applies(ctx)
    tdt = getattr(torch, dt.torch_name or "")
    ta = as_torch(a, tdt).to(torch.float64)  # type: ignore[attr-defined]
    tb = as_torch(b, tdt).to(torch.float64)  # type: ignore[attr-defined]
    exact = ((ta + tb) / 2).to(tdt).view(torch.uint8).numpy().tobytes()
    noise = data.draw(st.binary(min_size=len(a), max_size=len(a)))
    for child in (exact, mutate(exact, dt.itemsize, rng, 0.2), noise):
        assert roundtrip("avg", child, ctx) == child


def test_avg_of_an_exact_average_is_tiny() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal(1 << 15).astype(np.float32)
    b = rng.standard_normal(1 << 15).astype(np.float32)
    child = ((torch.from_numpy(a) + torch.from_numpy(b)) / 2).numpy().tobytes()
    ctx = EncodeContext(DTYPES["F32"], [a.tobytes(), b.tobytes()], [DTYPES["F32"]] * 2)
    payload = get_codec("avg").encode(child, ctx)
    assert payload is not None and len(payload) < 128
    assert roundtrip("avg", child, ctx) == child


@given(data=st.data(), target=st.sampled_from(CAST_TARGETS), perturb=st.sampled_from([0.0, 0.05, 1.0]))
def test_cast_from_fp32_parent_roundtrips(data: st.DataObject, target: str, perturb: float) -> None:
    src, dst = DTYPES["F32"], DTYPES[target]
    base = data.draw(element_bytes(src))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    cast = as_torch(base, torch.float32).to(getattr(torch, dst.torch_name or ""))  # type: ignore[attr-defined]
    child = mutate(cast.view(torch.uint8).numpy().tobytes(), dst.itemsize, rng, perturb)
    ctx = EncodeContext(dst, [base], [src])
    assert get_codec("cast").applies(ctx)
    assert not get_codec("xor").applies(ctx)  # dtypes differ: plain xor must not be tried
    assert roundtrip("cast", child, ctx) == child


@given(data=st.data(), src=st.sampled_from(FLOATS_WITH_TORCH), dst=st.sampled_from(FLOATS_WITH_TORCH))
def test_cast_between_any_float_types_roundtrips(data: st.DataObject, src: str, dst: str) -> None:
    s, d = DTYPES[src], DTYPES[dst]
    ctx = EncodeContext(d, [b"\0" * s.itemsize], [s])
    if src == dst:
        assert not get_codec("cast").applies(ctx)
        return
    n = data.draw(st.integers(1, 64))
    base = data.draw(st.binary(min_size=n * s.itemsize, max_size=n * s.itemsize))
    child = data.draw(st.binary(min_size=n * d.itemsize, max_size=n * d.itemsize))
    ctx = EncodeContext(d, [base], [s])
    assert roundtrip("cast", child, ctx) == child


def test_fp16_cast_of_fp32_parent_is_nearly_free() -> None:
    w = (np.random.default_rng(4).standard_normal(1 << 16) * 0.05).astype(np.float32)
    for target, tdt in (("F16", torch.float16), ("BF16", torch.bfloat16)):
        child = torch.from_numpy(w).to(tdt).view(torch.uint8).numpy().tobytes()
        ctx = EncodeContext(DTYPES[target], [w.tobytes()], [DTYPES["F32"]])
        payload = get_codec("cast").encode(child, ctx)
        assert payload is not None and len(payload) < len(child) / 500
        assert roundtrip("cast", child, ctx) == child


def test_codecs_that_do_not_apply_say_so() -> None:
    f32, i32 = DTYPES["F32"], DTYPES["I32"]
    assert not get_codec("xor").applies(EncodeContext(f32, [b"\0" * 4], [i32]))
    assert not get_codec("avg").applies(EncodeContext(i32, [b"\0" * 4] * 2, [i32] * 2))
    assert not get_codec("avg").applies(EncodeContext(f32, [b"\0" * 4], [f32]))
    assert not get_codec("cast").applies(EncodeContext(i32, [b"\0" * 4], [f32]))
    assert not get_codec("cast").applies(EncodeContext(DTYPES["F8_E8M0"], [b"\0" * 4], [f32]))
    assert not get_codec("prune").applies(EncodeContext(i32, [b"\0" * 4], [i32]))
    # a base of the wrong length is declined, never mis-coded
    assert get_codec("xor").encode(b"\0" * 8, EncodeContext(f32, [b"\0" * 4], [f32])) is None


@pytest.mark.parametrize("codec_id", ["cast", "avg"])
def test_empty_chunks_with_torch_predictions(codec_id: str) -> None:
    f16, f32 = DTYPES["F16"], DTYPES["F32"]
    ctx = (EncodeContext(f16, [b""], [f32]) if codec_id == "cast"
           else EncodeContext(f32, [b"", b""], [f32, f32]))
    assert roundtrip(codec_id, b"", ctx) == b""
    enc = choose_encoding(b"", ctx.dtype, [(ctx.bases, ctx.base_dtypes)])
    assert enc.payload is not None


# -- the policy ------------------------------------------------------------------------------------------------
def decode_choice(data: bytes, dt: DType, base_sets: list[tuple[list[bytes], list[DType]]]) -> tuple[bytes, str]:
    enc = choose_encoding(data, dt, base_sets)
    bases, btypes = base_sets[enc.base_set] if enc.base_set >= 0 else ([], [])
    if enc.base_set < 0:
        assert get_codec(enc.codec_id).n_bases == 0
    ctx = EncodeContext(dt, bases, btypes)
    assert len(enc.payload) <= len(data) + 64  # never much worse than raw
    return bytes(get_codec(enc.codec_id).decode(memoryview(enc.payload), len(data), ctx)), enc.codec_id


@given(data=st.data(), dtype_name=st.sampled_from(ALL))
def test_choose_encoding_always_decodes_back(data: st.DataObject, dtype_name: str) -> None:
    dt = DTYPES[dtype_name]
    child = data.draw(element_bytes(dt))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = len(child) // dt.itemsize
    sets: list[tuple[list[bytes], list[DType]]] = []
    for _ in range(data.draw(st.integers(0, 3))):
        kind = data.draw(st.sampled_from(["near", "random", "pair", "fp32"]))
        if kind == "near":
            sets.append(([mutate(child, dt.itemsize, rng, 0.1)], [dt]))
        elif kind == "random":
            sets.append(([special_floats(dt, n, rng)], [dt]))
        elif kind == "pair":
            sets.append(([mutate(child, dt.itemsize, rng, 0.3), mutate(child, dt.itemsize, rng, 0.3)], [dt, dt]))
        elif dt.is_float and dt.torch_name and dt.name != "F32":
            sets.append(([rng.standard_normal(n).astype(np.float32).tobytes()], [DTYPES["F32"]]))
    out, _ = decode_choice(child, dt, sets)
    assert out == child


def test_choose_encoding_picks_the_delta_for_a_small_update() -> None:
    rng = np.random.default_rng(5)
    base = (rng.standard_normal(1 << 16) * 0.05).astype(np.float32)
    child = base.copy()
    child[::100] += 1e-3
    f32 = DTYPES["F32"]
    deltas = same_type_delta_codecs()
    out, codec = decode_choice(child.tobytes(), f32, [([base.tobytes()], [f32])])
    assert out == child.tobytes() and codec in deltas
    out, codec = decode_choice(base.tobytes(), f32, [([base.tobytes()], [f32])])
    assert out == base.tobytes() and codec in deltas
    enc = choose_encoding(child.tobytes(), f32, [([base.tobytes()], [f32])])
    assert len(enc.payload) < len(child.tobytes()) / 10
    out, codec = decode_choice(child.tobytes(), f32, [])
    assert out == child.tobytes() and codec == "planes"


@pytest.mark.parametrize("dtype_name", sorted(_FLOAT_BITS))
def test_nan_inf_and_negative_zero_bit_patterns_survive_every_applicable_codec(dtype_name: str) -> None:
    dt = DTYPES[dtype_name]
    rng = np.random.default_rng(6)
    data = special_floats(dt, 1024, rng)
    other = special_floats(dt, 1024, rng)
    ctxs = [EncodeContext(dt), EncodeContext(dt, [other], [dt]), EncodeContext(dt, [other, data], [dt, dt])]
    if dt.is_float and dt.torch_name and dt.name != "F32":
        ctxs.append(EncodeContext(dt, [special_floats(DTYPES["F32"], 1024, rng)], [DTYPES["F32"]]))
    tried = set()
    for ctx in ctxs:
        for cid, codec in registered_codecs().items():
            if codec.n_bases == len(ctx.bases) and codec.applies(ctx):
                out = roundtrip(cid, data, ctx)
                assert out is None or out == data, cid
                tried.add(cid)
    assert {"raw", "zstd", "xor"} <= tried

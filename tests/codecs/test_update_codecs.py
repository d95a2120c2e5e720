"""The update codecs (sparse, lowrank, mix, ties) round-trip bit-exact and pay where they should.

Hints travel in `EncodeContext.hint`; where this modelfs's EncodeContext has no such field
the tests hand the codec a context with the same attributes (codecs read them by name).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modelfs.codecs import EncodeContext, get_codec
from modelfs.codecs.lowrank import chunk_hint, predict
from modelfs.codecs.mix import MixHint, TiesHint, combine, ties_combine
from modelfs.codecs.planes import encode_planes, xor_bytes
from modelfs.dtypes import DTYPES, DType

F32 = DTYPES["F32"]


def ctx(dtype: DType, bases: list[bytes], hint: Any = None) -> Any:
    return SimpleNamespace(dtype=dtype, bases=bases, base_dtypes=[dtype] * len(bases), hint=hint)


def roundtrip(cid: str, data: bytes, c: Any) -> bytes | None:
    codec = get_codec(cid)
    payload = codec.encode(data, c)
    if payload is None:
        return None
    plain = EncodeContext(c.dtype, c.bases, c.base_dtypes)  # decode never sees the hint
    return bytes(codec.decode(memoryview(payload), len(data), plain))


def xor_size(data: bytes, base: bytes, dtype: DType) -> int:
    return len(encode_planes(xor_bytes(data, base), dtype.itemsize))


# -- sparse --------------------------------------------------------------------------------------
@given(dtype=st.sampled_from(["F32", "F16", "BF16", "I8", "F8_E4M3", "F64", "U8"]),
       n=st.integers(0, 3000), frac=st.sampled_from([0.0, 0.001, 0.05, 0.3]), seed=st.integers(0, 99))
def test_sparse_roundtrips_every_dtype(dtype: str, n: int, frac: float, seed: int) -> None:
    dt = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8)
    child = base.copy().reshape(n, dt.itemsize)
    idx = rng.choice(n, size=int(n * frac), replace=False) if n else []
    child[idx] = rng.integers(0, 256, (len(idx), dt.itemsize), dtype=np.uint8)
    out = roundtrip("sparse", child.tobytes(), ctx(dt, [base.tobytes()]))
    assert out is None or out == child.tobytes()
    if frac <= 0.05:
        assert out == child.tobytes()


def test_sparse_beats_dense_xor_on_a_few_changed_weights() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(1 << 19).astype(np.float32)
    child = base.copy()
    idx = rng.choice(len(base), 500, replace=False)
    child[idx] += np.float32(1e-3)
    payload = get_codec("sparse").encode(child.tobytes(), ctx(F32, [base.tobytes()]))
    assert payload is not None
    assert len(payload) < 0.75 * xor_size(child.tobytes(), base.tobytes(), F32)  # measured: 0.6
    assert len(payload) < 500 * 8  # a few bytes per changed element, nothing per unchanged one


# -- low rank ------------------------------------------------------------------------------------
def _lora(rows: int, cols: int, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    a = (rng.standard_normal((rank, cols)) * 0.1).astype(np.float32)
    b = (rng.standard_normal((rows, rank)) * 0.01).astype(np.float32)
    return w, a, b


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_lowrank_with_the_true_factors_costs_the_factors(dtype: str) -> None:
    """Chunks that start mid-row, a torch-BLAS merge, half types: exact and far below dense."""
    dt = DTYPES[dtype]
    w, a, b = _lora(300, 257, 4, 1)
    tdt = getattr(torch, dt.torch_name or "")
    wt = torch.from_numpy(w).to(tdt)
    prod = (torch.from_numpy(b) @ torch.from_numpy(a)) * 2.0  # as PEFT merges: BLAS, float32
    merged = (wt + prod.double()) if dt.name == "F64" else (wt.float() + prod).to(tdt)
    wb = wt.contiguous().view(torch.uint8).numpy().tobytes()
    mb = merged.contiguous().view(torch.uint8).numpy().tobytes()
    isz, n = dt.itemsize, w.size
    for start, count in ((0, n), (1000, 20000), (n - 777, 777)):
        base_c, data_c = wb[start * isz:(start + count) * isz], mb[start * isz:(start + count) * isz]
        hint = chunk_hint(b, a, 2.0, start, count)
        out = roundtrip("lowrank", data_c, ctx(dt, [base_c], hint))
        assert out == data_c
    payload = get_codec("lowrank").encode(mb, ctx(dt, [wb], chunk_hint(b, a, 2.0, 0, n)))
    assert payload is not None
    factors = (a.size + b.size) * 4
    assert len(payload) < factors + n * isz * 0.1
    assert len(payload) < 0.25 * xor_size(mb, wb, dt)


def test_lowrank_stays_lossless_with_wrong_factors_and_declines_without_them() -> None:
    w, a, b = _lora(64, 64, 2, 2)
    rng = np.random.default_rng(3)
    child = (w + rng.standard_normal(w.shape).astype(np.float32) * 1e-3).tobytes()
    assert roundtrip("lowrank", child, ctx(F32, [w.tobytes()], chunk_hint(b, a, 1.0, 0, w.size))) == child
    assert get_codec("lowrank").encode(child, ctx(F32, [w.tobytes()])) is None


def test_lowrank_prediction_is_deterministic_elementwise() -> None:
    """The same factors give the same bytes in row blocks as whole (no BLAS blocking effects)."""
    w, a, b = _lora(128, 96, 8, 4)
    whole = predict(w.tobytes(), F32, b, a, 1.5, 0, "fma").tobytes()
    part = predict(w[40:90].tobytes(), F32, b[40:90], a, 1.5, 0, "fma").tobytes()
    assert whole[40 * 96 * 4:90 * 96 * 4] == part


# -- mix and ties --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64", "F8_E4M3"])
def test_mix_reproduces_weighted_merges_for_a_few_bytes(dtype: str) -> None:
    dt = DTYPES[dtype]
    rng = np.random.default_rng(5)
    tdt = getattr(torch, dt.torch_name or "")
    parts = [torch.from_numpy(rng.standard_normal(4099).astype(np.float32)).to(tdt)
             .view(torch.uint8).numpy().tobytes() for _ in range(3)]
    for weights in ((0.7, 0.3), (1 / 3, 1 / 3, 1 / 3), (-1.0, 1.0, 1.0)):
        ps = parts[:len(weights)]
        merged = combine(ps, dt, weights).tobytes()
        payload = get_codec("mix").encode(merged, ctx(dt, ps, MixHint(weights)))
        assert payload is not None and len(payload) < 96  # weights + all-zero planes
        assert roundtrip("mix", merged, ctx(dt, ps, MixHint(weights))) == merged
    garbage = rng.integers(0, 256, len(parts[0]), dtype=np.uint8).tobytes()
    assert roundtrip("mix", garbage, ctx(dt, parts[:2], MixHint((0.5, 0.5)))) == garbage


def test_mix_matches_numpy_float32_and_keeps_agreed_elements() -> None:
    rng = np.random.default_rng(6)
    a = rng.standard_normal(1000).astype(np.float32)
    b = a.copy()
    b[::3] += np.float32(0.25)
    out = np.frombuffer(combine([a.tobytes(), b.tobytes()], F32, (0.7, 0.3)).tobytes(), dtype=np.float32)
    ref = np.float32(0.7) * a + np.float32(0.3) * b
    changed = a != b
    assert np.array_equal(out[changed], ref[changed])
    assert np.array_equal(out[~changed], a[~changed])  # bit-identical where A and B agree


def test_ties_codec_roundtrips_and_costs_its_parameters() -> None:
    rng = np.random.default_rng(7)
    base = rng.standard_normal(5000).astype(np.float32)
    a = base + rng.standard_normal(5000).astype(np.float32) * 0.01
    b = base + rng.standard_normal(5000).astype(np.float32) * 0.01
    parts = [base.tobytes(), a.tobytes(), b.tobytes()]
    merged = ties_combine(parts, F32, (0.012, 0.015), 0.8).tobytes()
    hint = TiesHint((0.012, 0.015), 0.8)
    payload = get_codec("ties").encode(merged, ctx(F32, parts, hint))
    assert payload is not None and len(payload) < 64
    assert roundtrip("ties", merged, ctx(F32, parts, hint)) == merged

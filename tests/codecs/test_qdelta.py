"""Property tests of lossy mode's quantised deltas (modelfs/codecs/qdelta.py).

The promise: the reconstruction `quantise` returns is exactly what a reader decodes from the
payload, bit for bit, on every float dtype lossy mode takes (F16, BF16, F32, F64), including
NaN and infinities (kept exactly), denormals, empty chunks and odd element counts; the exact
encode of a reconstruction reproduces it; and every finite element moved by at most half a
step (plus the dtype's own rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs import numerics
from modelfs.codecs import EncodeContext, get_codec
from modelfs.codecs.qdelta import QuantHint, lossy_dtype, quantise
from modelfs.dtypes import DTYPES

LOSSY = ("F16", "BF16", "F32", "F64")
EPS = {"F16": 2.0 ** -10, "BF16": 2.0 ** -7, "F32": 2.0 ** -23, "F64": 2.0 ** -52}
TINY = {"F16": 2.0 ** -24, "BF16": 2.0 ** -133, "F32": 2.0 ** -149, "F64": 5e-324}


@st.composite
def chunk_and_base(draw: st.DrawFn) -> tuple[str, np.ndarray, np.ndarray, float, int]:
    """A chunk of values (specials mixed in), its parent, a step and the number of bases."""
    name = draw(st.sampled_from(LOSSY))
    n = draw(st.one_of(st.sampled_from([0, 1, 3, 7, 1023]), st.integers(0, 400)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.standard_normal(n) * draw(st.sampled_from([1e-3, 0.05, 1.0, 1e4]))
    child = base + rng.standard_normal(n) * draw(st.sampled_from([1e-6, 1e-4, 1e-2]))
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, -1e-40, 6e-8, 1e-45, 3e38])
    for arr in (base, child):
        if n and draw(st.booleans()):
            k = rng.integers(0, n, size=max(1, n // 10))
            arr[k] = rng.choice(specials, size=len(k))
    step = draw(st.sampled_from([1e-7, 1e-5, 1e-3, 0.1, 10.0]))
    if n and draw(st.booleans()):  # a magnitude prune of the parent, then a small update
        child[np.abs(base) < np.nanquantile(np.abs(base), 0.3)] = 0.0
    return name, child, base, step, draw(st.sampled_from([1, 2, 3]))  # 3: one base, prune coding


def _bytes(values: np.ndarray, name: str) -> bytes:
    return numerics.narrow(values.astype(np.float32 if name != "F64" else np.float64), DTYPES[name]).tobytes()


@settings(max_examples=150, deadline=None)
@given(case=chunk_and_base())
def test_reconstruction_is_what_decode_reads_bit_for_bit(case: tuple[str, np.ndarray, np.ndarray, float, int]) -> None:
    name, child, base, step, nb = case
    dt = DTYPES[name]
    data = _bytes(child, name)
    bases = [_bytes(base, name)] + ([_bytes(base[::-1].copy(), name)] if nb == 2 else [])
    ctx = EncodeContext(dt, bases, [dt] * len(bases))
    codec = get_codec({1: "qdelta", 2: "qdelta-avg", 3: "qdelta-prune"}[nb])
    payload, recon = quantise(data, ctx, step, prune=nb == 3)
    framed = memoryview(b"\x11" * 3 + payload + b"\x22")[3:3 + len(payload)]
    assert codec.decode(framed, len(data), ctx) == recon  # what the gate checked is what is read
    exact = codec.encode(recon, EncodeContext(dt, bases, [dt] * len(bases), QuantHint(step)))
    assert exact is not None and codec.decode(memoryview(exact), len(recon), ctx) == recon
    x, r = numerics.widen(data, dt).astype(np.float64), numerics.widen(recon, dt).astype(np.float64)
    xb, rb = numerics.bits(data, dt.itemsize), numerics.bits(recon, dt.itemsize)
    assert np.array_equal(xb[~np.isfinite(x)], rb[~np.isfinite(x)])  # NaN payloads, infinities kept
    fin = np.isfinite(x)
    assert np.isfinite(r[fin]).all()  # nothing finite turned into an overflow
    if nb == 3:  # a prune's new zeros come back as exact zeros
        zeroed = (x == 0) & (numerics.widen(bases[0], dt) != 0)
        assert (r[zeroed] == 0).all()
    # half a step, plus the rounding of the arithmetic (at the scale of the values and the
    # prediction) and of the dtype
    scale = np.max([np.abs(numerics.widen(b, dt).astype(np.float64)) for b in [data, *bases]], axis=0)[fin]
    tol = (step * 0.5 * (1 + 1e-6) + scale * 4 * EPS[name] + 2 * TINY[name]
           + (scale * 2.0 ** -22 if name in ("F16", "BF16") else 0))
    bad = np.flatnonzero(np.abs(r[fin] - x[fin]) > tol + step * 1e-9)
    assert not len(bad), (x[fin][bad], r[fin][bad], scale[bad])


def test_zero_codes_keep_the_parent_bit_exact() -> None:
    """An unchanged element (signed zeros, denormals included) is its parent's bits, not +0.0."""
    for name in LOSSY:
        dt = DTYPES[name]
        base = _bytes(np.array([-0.0, 0.0, 1e-45, -1e-310, 0.5, -3.0]), name)
        ctx = EncodeContext(dt, [base], [dt])
        payload, recon = quantise(base, ctx, 1e-3)
        assert recon == base, name


def test_only_value_types_numpy_computes_go_lossy() -> None:
    assert [n for n in sorted(DTYPES) if lossy_dtype(DTYPES[n])] == sorted(LOSSY)
    assert not get_codec("qdelta").applies(EncodeContext(DTYPES["I32"], [b"\0" * 8], [DTYPES["I32"]],
                                                         QuantHint(1.0)))


def test_partial_elements_and_bad_steps_are_refused() -> None:
    dt = DTYPES["F32"]
    ctx = EncodeContext(dt, [b"\0" * 7], [dt])
    with pytest.raises(ValueError):
        quantise(b"\0" * 7, ctx, 1e-3)
    ok = EncodeContext(dt, [b"\0" * 8], [dt])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            quantise(b"\0" * 8, ok, bad)
    assert get_codec("qdelta").encode(b"\0" * 7, EncodeContext(dt, [b"\0" * 7], [dt], QuantHint(1.0))) is None

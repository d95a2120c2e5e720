"""modelfs.numerics converts exactly as torch does (the stored predictions were torch's), without
importing torch for F16/BF16/F32/F64; the one documented difference is numpy's signalling NaNs.

Every 16-bit pattern is checked for F16/BF16, every byte for fp8, and F32 over random bit
patterns plus the special values (NaNs with payloads, infinities, ties, denormals).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from modelfs import numerics
from modelfs.dtypes import DTYPES

HALF = ["F16", "BF16"]
FP8 = ["F8_E4M3", "F8_E5M2"]
TORCH = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
         "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def all_patterns(name: str) -> bytes:
    isz = DTYPES[name].itemsize
    return np.arange(1 << (8 * isz), dtype=np.uint32).astype(numerics.UINT[isz]).tobytes()


def f32_patterns() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = np.array([0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FC00000, 0xFFC12345, 0x7F801234, 0, 0x80000000,
                        0x7F800000, 0xFF800000, 1, 0x80000001, 0x477FF000, 0x477FEFFF, 0x477FE000, 0x33000000,
                        0x33000001, 0x3F800000, 0x3F808000, 0x3F818000, 0x7F7FFFFF], dtype=np.uint32)
    rand = rng.integers(0, 1 << 32, size=300_000, dtype=np.uint64).astype(np.uint32)
    near = (rng.standard_normal(100_000) * 0.05).astype(np.float32).view(np.uint32)
    return np.concatenate([special, rand, near]).view(np.float32)


def torch_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def is_snan_f32(x: np.ndarray) -> np.ndarray:
    u = x.view(np.uint32)
    return np.isnan(x) & ((u & 0x00400000) == 0)


@pytest.mark.parametrize("name", HALF + FP8)
def test_widen_matches_torch_on_every_bit_pattern(name: str) -> None:
    raw = all_patterns(name)
    want = torch.frombuffer(bytearray(raw), dtype=TORCH[name]).to(torch.float32).numpy()
    got = numerics.widen(raw, DTYPES[name], quiet_nans=True)
    assert got.dtype == np.float32
    assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes()


def test_f16_widen_keeps_signalling_nans_unless_asked_like_torch() -> None:
    raw = all_patterns("F16")
    plain = numerics.widen(raw, DTYPES["F16"])
    quiet = numerics.widen(raw, DTYPES["F16"], quiet_nans=True)
    h = np.frombuffer(raw, dtype=np.uint16)
    snan = ((h & 0x7C00) == 0x7C00) & ((h & 0x03FF) != 0) & ((h & 0x0200) == 0)
    differ = plain.view(np.uint32) != quiet.view(np.uint32)
    assert np.array_equal(differ, snan) and snan.sum() == 2 * 511


@pytest.mark.parametrize("name", HALF + FP8)
def test_narrow_from_f32_matches_torch(name: str) -> None:
    x = f32_patterns()
    want = torch_bytes(torch.from_numpy(x.copy()).to(TORCH[name]))
    assert numerics.narrow(x, DTYPES[name], quiet_nans=True).tobytes() == want
    plain = np.frombuffer(numerics.narrow(x, DTYPES[name]).tobytes(), dtype=numerics.UINT[DTYPES[name].itemsize])
    torch_vals = np.frombuffer(want, dtype=numerics.UINT[DTYPES[name].itemsize])
    # without quiet_nans only a signalling NaN input may come out otherwise (numpy keeps it signalling)
    assert not (plain != torch_vals)[~is_snan_f32(x)].any()


def test_narrow_rounds_half_way_cases_to_even() -> None:
    # 1 + 2^-8 lies half way between two bf16 values: even mantissa wins; 1 + 3 * 2^-9 rounds up
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 65520.0, 65519.0, -(2.0**-25)], dtype=np.float32)
    bf = np.frombuffer(numerics.narrow(x[:2], DTYPES["BF16"]).tobytes(), dtype=np.uint16)
    assert [hex(v) for v in bf] == ["0x3f80", "0x3f82"]
    f16 = np.frombuffer(numerics.narrow(x[2:], DTYPES["F16"]).tobytes(), dtype=np.uint16)
    assert [hex(v) for v in f16] == ["0x7c00", "0x7bff", "0x8000"]  # overflow is inf, no warning


# (exponent mask, quiet bit) of the IEEE layouts numpy converts: a signalling NaN has the
# exponent all ones, a non-zero mantissa and the quiet bit clear
_NAN_BITS = {"F16": (0x7C00, 0x0200), "BF16": (0x7F80, 0x0040), "F32": (0x7F800000, 0x00400000),
             "F64": (0x7FF0000000000000, 0x0008000000000000)}


def signalling_nans(raw: bytes, name: str) -> np.ndarray:
    if name not in _NAN_BITS:
        return np.zeros(len(raw) // DTYPES[name].itemsize, dtype=bool)
    exp, quiet = _NAN_BITS[name]
    u = np.frombuffer(raw, dtype=numerics.UINT[DTYPES[name].itemsize]).astype(np.uint64)
    mant = np.uint64((quiet << 1) - 1)  # the whole mantissa: the quiet bit is its top bit
    return ((u & np.uint64(exp)) == exp) & ((u & mant) != 0) & ((u & np.uint64(quiet)) == 0)


def source_patterns(name: str) -> bytes:
    if name == "F32":
        return f32_patterns().tobytes()
    if name == "F64":
        special = np.array([0x7FF0000000000001, 0xFFF0000000000123, 0x7FF8000000000000, 0x7FF7FFFFFFFFFFFF],
                           dtype=np.uint64).view(np.float64)
        with np.errstate(invalid="ignore"):
            return np.concatenate([special, f32_patterns().astype(np.float64)]).tobytes()
    return all_patterns(name)


@pytest.mark.parametrize("src", ["F32", "F64", *HALF, *FP8])
@pytest.mark.parametrize("dst", ["F32", "F64", *HALF, *FP8])
def test_cast_matches_torch_but_for_signalling_nans(src: str, dst: str) -> None:
    """The cast codec's prediction: torch's `.to()`, but for two NaN cases, fixed since cast left
    torch: numpy keeps a signalling NaN signalling where torch quiets it, and every NaN becomes
    bf16 0xFFFF (torch writes 0xFFFF from float32 but 0x7FC0 from float16)."""
    if src == dst:
        return
    raw = source_patterns(src)
    got = np.frombuffer(numerics.cast(raw, DTYPES[src], DTYPES[dst]).tobytes(),
                        dtype=numerics.UINT[DTYPES[dst].itemsize])
    want = np.frombuffer(torch_bytes(torch.frombuffer(bytearray(raw), dtype=TORCH[src]).to(TORCH[dst])),
                         dtype=numerics.UINT[DTYPES[dst].itemsize])
    allowed = signalling_nans(raw, src)
    if (src, dst) == ("F16", "BF16"):
        allowed |= np.isnan(numerics.widen(raw, DTYPES[src]))
        assert set(got[allowed].tolist()) == {0xFFFF}
    assert not (got != want)[~allowed].any(), (src, dst)


def test_torch_add_keeps_the_nan_torch_keeps() -> None:
    rng = np.random.default_rng(1)
    for dt, ut in ((np.float32, np.uint32), (np.float64, np.uint64)):
        for n in (1, 17, 4099):
            a, b = rng.standard_normal(n).astype(dt), rng.standard_normal(n).astype(dt)
            a[rng.random(n) < 0.4] = np.nan
            b[rng.random(n) < 0.4] = -np.nan
            a.view(ut)[::3] |= ut(5) * np.isnan(a[::3]).astype(ut)
            want = (torch.from_numpy(a) + torch.from_numpy(b)).numpy()
            assert numerics.torch_add(a, b).view(ut).tobytes() == want.view(ut).tobytes()


def test_as_float64_reads_every_numeric_dtype() -> None:
    for name, dt in DTYPES.items():
        raw = bytes(range(8)) * dt.itemsize
        got = numerics.as_float64(raw, dt)
        if name in TORCH and name not in ("F32", "F64", "F16"):
            want = torch.frombuffer(bytearray(raw), dtype=TORCH[name]).to(torch.float64).numpy()
            assert got is not None and np.array_equal(got, want, equal_nan=True), name
        elif name in numerics.NUMPY:
            assert got is not None and np.array_equal(
                got, np.frombuffer(raw, dtype=numerics.NUMPY[name]).astype(np.float64), equal_nan=True)
        else:
            assert got is None, name  # complex and E8M0: no numeric reading


def test_decoding_half_precision_chunks_does_not_import_torch() -> None:
    """cast, avg, mix, ties and lowrank chunks of F16/BF16 decode with numpy alone."""
    code = """
import sys
import numpy as np
from modelfs.codecs import EncodeContext, get_codec
from modelfs.codecs.lowrank import chunk_hint
from modelfs.codecs.mix import MixHint, TiesHint
from modelfs.dtypes import DTYPES
rng = np.random.default_rng(0)
f32 = DTYPES["F32"]
for name in ("F16", "BF16"):
    dt = DTYPES[name]
    a, b, c = (rng.integers(0, 1 << 14, 4096, dtype=np.uint16).tobytes() for _ in range(3))
    w32 = rng.standard_normal(4096).astype(np.float32).tobytes()
    bm, am = rng.standard_normal((64, 4)).astype(np.float32), rng.standard_normal((4, 64)).astype(np.float32)
    cases = [("cast", EncodeContext(dt, [w32], [f32])), ("avg", EncodeContext(dt, [a, b], [dt, dt])),
             ("mix", EncodeContext(dt, [a, b], [dt, dt], MixHint((0.3, 0.7)))),
             ("ties", EncodeContext(dt, [a, b, c], [dt] * 3, TiesHint((0.01, 0.02), 0.5))),
             ("lowrank", EncodeContext(dt, [a], [dt], chunk_hint(bm, am, 2.0, 0, 4096)))]
    for cid, ctx in cases:
        codec = get_codec(cid)
        payload = codec.encode(c, ctx)
        assert payload is not None, cid
        assert codec.decode(memoryview(payload), len(c), ctx) == c, cid
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

"""safetensors files parse into parts that tile the file exactly; anything off becomes a blob.

Files are written by the real `safetensors` library (torch and numpy front ends), for every
dtype both sides know, with 0-d and empty tensors and `__metadata__`; corrupt variants are
made by editing real files or writing headers by hand. Whatever the parse, importing the
file into a repo and exporting it gives the same bytes back.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as st_numpy
import safetensors.torch as st_torch
import torch
from hypothesis import given
from hypothesis import strategies as st

from modelfs.dtypes import DTYPES
from modelfs.formats import FileLayout, InlinePart, TensorPart, parse_file, registered_formats
from modelfs.testing.formats import roundtrip_through_repo

# dtypes modelfs knows that the torch front end of safetensors can write
TORCH_DTYPES = {name: t for name, t in st_torch._TYPES.items() if name in DTYPES}
NUMPY_DTYPES = {name: t for name, t in st_numpy._TYPES.items() if name in DTYPES}


# -- building files ----------------------------------------------------------------------------------------
def handmade(header: dict[str, object] | str | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors-shaped file with any header at all (for corrupt variants and rare dtypes)."""
    if isinstance(header, dict):
        raw = json.dumps(header).encode()
    elif isinstance(header, str):
        raw = header.encode()
    else:
        raw = header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


names = st.text(alphabet="abcdefgh._0123456789", min_size=1, max_size=10).filter(lambda s: s != "__metadata__")
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3)


@st.composite
def torch_tensors(draw: st.DrawFn, dtypes: dict[str, object] = TORCH_DTYPES) -> dict[str, object]:
    keys = draw(st.lists(names, min_size=0, max_size=6, unique=True))
    out: dict[str, object] = {}
    for k in keys:
        dname = draw(st.sampled_from(sorted(dtypes)))
        shape = draw(shapes)
        n = math.prod(shape) * DTYPES[dname].itemsize
        raw = np.frombuffer(draw(st.binary(min_size=n, max_size=n)), dtype=np.uint8).copy()
        if dname == "BOOL":
            raw &= 1
        tdt = dtypes[dname]
        out[k] = (torch.from_numpy(raw).view(tdt).reshape(shape) if n  # type: ignore[arg-type]
                  else torch.empty(shape, dtype=tdt))  # type: ignore[arg-type]
    return out


metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4))


@st.composite
def torch_files(draw: st.DrawFn) -> tuple[bytes, dict[str, object], dict[str, str] | None]:
    tensors = draw(torch_tensors())
    meta = draw(metadata)
    if not tensors and meta == {}:
        meta = None  # safetensors 0.8 writes invalid JSON here: see test_safetensors_own_invalid_output
    return st_torch.save(tensors, metadata=meta), tensors, meta


@st.composite
def numpy_files(draw: st.DrawFn) -> tuple[bytes, dict[str, np.ndarray], dict[str, str] | None]:
    keys = draw(st.lists(names, min_size=0, max_size=5, unique=True))
    out = {}
    for k in keys:
        dname = draw(st.sampled_from(sorted(NUMPY_DTYPES)))
        shape = draw(shapes)
        n = math.prod(shape) * DTYPES[dname].itemsize
        raw = np.frombuffer(draw(st.binary(min_size=n, max_size=n)), dtype=np.uint8).copy()
        if dname == "BOOL":
            raw &= 1
        out[k] = raw.view(NUMPY_DTYPES[dname]).reshape(shape)
    meta = draw(metadata)
    if not out and meta == {}:
        meta = None  # see test_safetensors_own_invalid_output
    return st_numpy.save(out, metadata=meta), out, meta


# -- checks ----------------------------------------------------------------------------------------------------
def assert_tiles(layout: FileLayout, data: bytes) -> None:
    """Concatenating the parts in order gives the file back, with no gap and no overlap."""
    pos = 0
    rebuilt = []
    for p in layout.parts:
        if isinstance(p, InlinePart):
            rebuilt.append(p.data)
            pos += len(p.data)
        else:
            assert p.offset == pos, (p, pos)
            assert p.nbytes == math.prod(p.shape) * p.dtype.itemsize
            rebuilt.append(data[p.offset:p.offset + p.nbytes])
            pos += p.nbytes
    assert pos == len(data) == layout.size
    assert b"".join(rebuilt) == data


def assert_blob(path: str, data: bytes) -> str:
    layout, warning = parse_file(path, memoryview(data))
    assert layout.format == "blob", f"{path} parsed as {layout.format}"
    assert warning is not None and path in warning and "blob" in warning
    assert_tiles(layout, data)
    return warning


# -- valid files --------------------------------------------------------------------------------------------------
def test_safetensors_is_registered() -> None:
    assert "safetensors" in registered_formats()


@given(torch_files())
def test_torch_written_files_parse_with_verbatim_header_and_exact_tiling(
        f: tuple[bytes, dict[str, object], dict[str, str] | None]) -> None:
    data, tensors, _ = f
    layout, warning = parse_file("model.safetensors", memoryview(data))
    assert warning is None and layout.format == "safetensors"
    (hlen,) = struct.unpack_from("<Q", data, 0)
    first = layout.parts[0]
    assert isinstance(first, InlinePart) and first.data == data[:8 + hlen]  # header bytes verbatim
    assert_tiles(layout, data)
    parts = {p.name: p for p in layout.parts if isinstance(p, TensorPart)}
    assert set(parts) == set(tensors)
    for name, t in tensors.items():
        p = parts[name]
        assert p.dtype.name == next(k for k, v in TORCH_DTYPES.items() if v == t.dtype)  # type: ignore[attr-defined]
        assert p.shape == tuple(t.shape)  # type: ignore[attr-defined]
        want = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""  # type: ignore[attr-defined]
        assert data[p.offset:p.offset + p.nbytes] == want


@given(numpy_files())
def test_numpy_written_files_parse_and_tile(f: tuple[bytes, dict[str, np.ndarray], dict[str, str] | None]) -> None:
    data, arrays, _ = f
    layout, warning = parse_file("x.safetensors", memoryview(data))
    assert warning is None and layout.format == "safetensors"
    assert_tiles(layout, data)
    parts = {p.name: p for p in layout.parts if isinstance(p, TensorPart)}
    for name, a in arrays.items():
        assert parts[name].shape == a.shape
        assert data[parts[name].offset:parts[name].offset + parts[name].nbytes] == a.tobytes()


@given(torch_files())
def test_torch_written_files_roundtrip_through_a_repo(f: tuple[bytes, dict[str, object], dict[str, str] | None]) -> None:
    data, _, _ = f
    roundtrip_through_repo({"model.safetensors": data, "sub/dir/other.safetensors": data[:0] or data})


def test_every_dtype_zero_d_empty_and_metadata_in_one_file(tmp_path: Path) -> None:
    tensors = {}
    for i, (name, tdt) in enumerate(sorted(TORCH_DTYPES.items())):
        raw = torch.arange(12, dtype=torch.uint8) * (i + 3)
        if name == "BOOL":
            raw = raw & 1
        isz = DTYPES[name].itemsize
        tensors[f"{name}.full"] = torch.arange(6 * isz, dtype=torch.uint8).view(tdt).reshape(2, 3)
        tensors[f"{name}.scalar"] = raw[:isz].view(tdt).reshape(())
        tensors[f"{name}.empty"] = torch.empty((0, 4), dtype=tdt)
    assert {"BF16", "F8_E4M3", "F8_E5M2", "F16", "F32", "F64", "BOOL", "I64", "U64"} <= set(TORCH_DTYPES)
    meta = {"format": "pt", "note": "é ☃ \"quoted\""}
    data = st_torch.save(tensors, metadata=meta)
    layout, warning = parse_file("all.safetensors", memoryview(data))
    assert warning is None
    assert_tiles(layout, data)
    parts = {p.name: p for p in layout.parts if isinstance(p, TensorPart)}
    assert set(parts) == set(tensors)
    for name in TORCH_DTYPES:
        assert parts[f"{name}.scalar"].shape == () and parts[f"{name}.scalar"].nbytes == DTYPES[name].itemsize
        assert parts[f"{name}.empty"].nbytes == 0
    repo = roundtrip_through_repo({"all.safetensors": data})
    # the stored header keeps __metadata__ byte for byte
    v = repo.resolve("m")
    assert b'"__metadata__"' in repo.open_file(v.files["all.safetensors"]).read(0, 8 + len(data))


def test_dtypes_the_libraries_cannot_write_still_parse() -> None:
    """F8_E8M0 and C64 written by hand: the parser knows every dtype in modelfs.dtypes."""
    header = {"e8m0": {"dtype": "F8_E8M0", "shape": [3], "data_offsets": [0, 3]},
              "c64": {"dtype": "C64", "shape": [2], "data_offsets": [3, 19]},
              "__metadata__": {"k": "v"}}
    data = handmade(header, bytes(range(19)))
    layout, warning = parse_file("h.safetensors", memoryview(data))
    assert warning is None and layout.format == "safetensors"
    assert_tiles(layout, data)
    roundtrip_through_repo({"h.safetensors": data})


def test_header_padding_and_key_order_are_kept_verbatim() -> None:
    """safetensors pads the header with spaces and orders __metadata__ at random: keep it as is."""
    hdr = '{"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"z":"1","a":"2"}}      '
    data = handmade(hdr, b"\x00\x00\x80\x3f")
    layout, warning = parse_file("p.safetensors", memoryview(data))
    assert warning is None
    assert isinstance(layout.parts[0], InlinePart) and layout.parts[0].data == data[:8 + len(hdr)]
    roundtrip_through_repo({"p.safetensors": data})


def test_files_that_are_not_safetensors_are_blobs_without_warning() -> None:
    for path, data in (("config.json", b'{"a": 1}'), ("vocab.txt", b"hello\nworld\n" * 50),
                       ("empty", b""), ("pytorch_model.bin", bytes(range(256)) * 3)):
        layout, warning = parse_file(path, memoryview(data))
        assert layout.format == "blob" and warning is None
        assert_tiles(layout, data)
    roundtrip_through_repo({"config.json": b'{"a": 1}', "empty": b"", "b.bin": bytes(range(256)) * 3})


# What safetensors 0.8 writes for `save({}, metadata={})`: a header that is not JSON (it cannot
# load the file itself). Spelled out so the test does not depend on the installed version.
SAFETENSORS_08_EMPTY_WITH_METADATA = b'\x18\x00\x00\x00\x00\x00\x00\x00{},"__metadata__":{}}   '


def test_safetensors_own_invalid_output_is_a_blob() -> None:
    """modelfs keeps those bytes as they are (a blob, with a warning), never repairs them."""
    data = SAFETENSORS_08_EMPTY_WITH_METADATA
    (hlen,) = struct.unpack_from("<Q", data, 0)
    with pytest.raises(json.JSONDecodeError):
        json.loads(data[8:8 + hlen])
    assert_blob("odd.safetensors", data)  # a blob, and a warning naming the file
    repo = roundtrip_through_repo({"odd.safetensors": data})
    assert repo.resolve("m").files["odd.safetensors"].format == "blob"


def test_an_empty_file_with_metadata_written_validly_parses() -> None:
    """The same content with a valid header is an ordinary safetensors file: header verbatim."""
    data = handmade('{"__metadata__":{}}     ')
    layout, warning = parse_file("empty.safetensors", memoryview(data))
    assert warning is None and layout.format == "safetensors"
    assert layout.parts == (InlinePart(data),)
    roundtrip_through_repo({"empty.safetensors": data})


def test_whatever_the_installed_safetensors_writes_for_no_tensors_roundtrips() -> None:
    roundtrip_through_repo({"odd.safetensors": st_torch.save({}, metadata={}),
                            "none.safetensors": st_torch.save({})})


def test_a_safetensors_file_under_another_name_is_recognised_by_its_magic() -> None:
    data = st_torch.save({"w": torch.ones(4)})
    layout, warning = parse_file("weights.bin", memoryview(data))
    assert layout.format == "safetensors" and warning is None


# -- corrupt variants --------------------------------------------------------------------------------------------
GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}
GOOD_DATA = bytes(range(24))

CORRUPT: dict[str, bytes] = {
    "header_length_past_end": handmade(GOOD, GOOD_DATA, length=10_000),
    "header_length_huge": handmade(GOOD, GOOD_DATA, length=2**63),
    "overlapping_offsets": handmade({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16)),
    "identical_offsets": handmade({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
    "gap_between_tensors": handmade({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, bytes(20)),
    "gap_at_start": handmade({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
    "trailing_bytes": handmade(GOOD, GOOD_DATA + b"extra"),
    "unknown_dtype": handmade({"a": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
    "dtype_not_a_string": handmade({"a": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
    "non_json_header": handmade('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]', bytes(8)),
    "non_utf8_header": handmade(b'{"\xff\xfe": 1}', bytes(8)),
    "header_is_a_list": handmade("[1, 2, 3]"),
    "duplicate_keys": handmade('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                               '"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', bytes(16)),
    "shape_size_mismatch": handmade({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, bytes(20)),
    "negative_dim": handmade({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
    "bool_dim": handmade({"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, bytes(1)),
    "reversed_offsets": handmade({"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}, bytes(4)),
    "offsets_not_a_pair": handmade({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 2, 4]}}, bytes(4)),
    "entry_not_an_object": handmade({"a": [1, 2]}),
    "metadata_not_strings": handmade({"__metadata__": {"k": 1}, **GOOD}, GOOD_DATA),
    "shorter_than_length_field": b"\x05\x00\x00",
    "empty_file": b"",
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_variants_become_blobs_with_a_warning_and_roundtrip(case: str) -> None:
    data = CORRUPT[case]
    assert_blob("bad.safetensors", data)
    repo = roundtrip_through_repo({"bad.safetensors": data, "config.json": b"{}"})
    assert any("bad.safetensors" in w for w in repo.last_import_warnings)
    assert repo.resolve("m").files["bad.safetensors"].format == "blob"


def test_the_good_base_of_the_corrupt_variants_is_valid() -> None:
    layout, warning = parse_file("good.safetensors", memoryview(handmade(GOOD, GOOD_DATA)))
    assert warning is None and layout.format == "safetensors"


def test_a_real_dtype_modelfs_does_not_know_becomes_a_blob() -> None:
    """safetensors writes F8_E4M3FNUZ; modelfs does not know it, so it must not guess."""
    unknown = sorted(set(st_torch._TYPES) - set(DTYPES))
    assert unknown, "every safetensors dtype is known: pick another unknown one"
    tdt = st_torch._TYPES[unknown[0]]
    data = st_torch.save({"w": torch.zeros(4, dtype=torch.uint8).view(tdt), "ok": torch.ones(3)})
    assert_blob("fnuz.safetensors", data)
    roundtrip_through_repo({"fnuz.safetensors": data})


@given(f=torch_files(), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_real_files_become_blobs_and_roundtrip(
        f: tuple[bytes, dict[str, object], dict[str, str] | None], cut: float) -> None:
    data, _, _ = f
    truncated = data[:int(len(data) * cut)]
    assert_blob("t.safetensors", truncated)
    roundtrip_through_repo({"t.safetensors": truncated})


@given(f=torch_files(), pos=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_any_single_byte_change_in_the_header_still_roundtrips(
        f: tuple[bytes, dict[str, object], dict[str, str] | None], pos: int, byte: int) -> None:
    """Whatever one changed header byte does, the parse is exact or a blob: never a guess."""
    data, _, _ = f
    (hlen,) = struct.unpack_from("<Q", data, 0)
    i = pos % (8 + hlen)
    bad = data[:i] + bytes([byte]) + data[i + 1:]
    layout, warning = parse_file("f.safetensors", memoryview(bad))
    assert_tiles(layout, bad)
    assert (layout.format == "blob") == (warning is not None)
    roundtrip_through_repo({"f.safetensors": bad})

"""Fuzzing the format parsers: every input parses cleanly or becomes a byte-exact blob.

Inputs start from real files (written by `safetensors` and `torch.save`) and are mutated:
bit flips, truncations, and header rewrites with the JSON that broke parsers before (deep
nesting, integers of thousands of digits, lists and objects where strings belong,
duplicate keys, NaN, lone surrogates and other odd Unicode). Whatever the input, the oracle
is the same: `parse_file` raises nothing, its layout tiles the file, a layout other than a
blob comes with no warning, and the file goes through a repo and back byte for byte.
"""

from __future__ import annotations

import io
import json
import math
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import blake3
import pytest
import safetensors.torch as st_torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.formats import FileLayout, InlinePart, TensorPart, parse_file
from modelfs.formats import base as formats_base
from modelfs.repo import Repo, StoreSettings
from modelfs.store import MemoryStore

SMALL = StoreSettings(chunk_elems=16, blob_chunk_bytes=96)
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


# -- the oracle ----------------------------------------------------------------------------------------
def assert_tiles(layout: FileLayout, data: bytes) -> None:
    pos = 0
    out = []
    for p in layout.parts:
        if isinstance(p, InlinePart):
            out.append(p.data)
            pos += len(p.data)
        else:
            assert p.offset == pos and p.nbytes == math.prod(p.shape) * p.dtype.itemsize
            out.append(data[p.offset:p.offset + p.nbytes])
            pos += p.nbytes
    assert pos == len(data) and b"".join(out) == data


def assert_clean_or_blob(path: str, data: bytes) -> FileLayout:
    """The property: a clean layout, or a blob with a warning; stored and read back exactly."""
    layout, warning = parse_file(path, memoryview(data))
    assert_tiles(layout, data)
    if layout.format != "blob":
        assert warning is None
        for p in layout.parts:
            if isinstance(p, TensorPart):
                p.name.encode("utf-8")  # names go into UTF-8 records and index keys
    repo = Repo.init(store=MemoryStore(), settings=SMALL)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / path).write_bytes(data)
        v = repo.import_dir(src, "m", infer_parent=False)
        entry = v.files[path]
        assert entry.key == blake3.blake3(data).digest()
        assert entry.format == layout.format
        assert b"".join(repo.iter_file(entry)) == data
    return layout


# -- real files to start from --------------------------------------------------------------------------
@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    names = draw(st.lists(st.text("abcxyz._0123", min_size=1, max_size=8), min_size=1, max_size=4,
                          unique=True))
    out = {}
    for i, n in enumerate(names):
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        dt = draw(st.sampled_from(DTYPES))
        out[n] = (torch.arange(math.prod(shape)) + i).reshape(shape).to(dt)
    return out


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    meta = draw(st.one_of(st.none(), st.just({"format": "pt"})))
    return st_torch.save(draw(state_dicts()), metadata=meta)


def header_of(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<Q", data, 0)
    return json.loads(data[8:8 + n]), data[8 + n:]


def with_header(raw: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw + body


# JSON values that once escaped the "not clean, so a blob" rule, and their neighbours
DEEP = "[" * 5000 + "]" * 5000
DEEP_OBJ = '{"a":' * 3000 + "1" + "}" * 3000
HUGE_INT = "9" * 5000
ODD_JSON = [DEEP, DEEP_OBJ, HUGE_INT, "-" + HUGE_INT, "NaN", "Infinity", "-Infinity", "1e999", "null",
            "true", "[]", "{}", '["F32"]', '{"F32": 1}', '"F32"', '"\\ud800"', '"\\u0000"', "1.5", "-1",
            '[1, 2, 3]', '[' + HUGE_INT + ']', '"' + "é" * 100 + '"']
ODD_NAMES = ["\\ud800", "\\udfff\\ud800", "\\u0000", "☃", "\U0001F600", "", "a" * 300, "__metadata__"]


@st.composite
def rewritten_headers(draw: st.DrawFn) -> bytes:
    """A real file with one header value replaced by odd JSON, or odd keys added."""
    header, body = header_of(draw(safetensors_files()))
    names = [k for k in header if k != "__metadata__"]
    kind = draw(st.sampled_from(["field", "entry", "name", "duplicate", "metadata", "top", "length"]))
    items = [json.dumps(k) + ":" + json.dumps(v) for k, v in header.items()]
    odd = draw(st.sampled_from(ODD_JSON))
    if kind == "field":
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        entry = dict(header[name])
        parts = [json.dumps(k) + ":" + (odd if k == field else json.dumps(v)) for k, v in entry.items()]
        if field == "extra":
            parts.append('"extra":' + odd)
        items[list(header).index(name)] = json.dumps(name) + ":{" + ",".join(parts) + "}"
    elif kind == "entry":
        items[list(header).index(draw(st.sampled_from(names)))] = json.dumps(names[0]) + ":" + odd
    elif kind == "name":
        entry = header[draw(st.sampled_from(names))]
        items.append('"' + draw(st.sampled_from(ODD_NAMES)) + '":' + json.dumps(entry))
    elif kind == "duplicate":
        items.append(items[list(header).index(draw(st.sampled_from(names)))])
    elif kind == "metadata":
        items.append('"__metadata__":' + draw(st.sampled_from([odd, '{"k":' + odd + "}", '{"k":"v","k":"w"}'])))
    elif kind == "top":
        return with_header(odd.encode(), body)
    else:  # a good header with a header length that lies
        raw = ("{" + ",".join(items) + "}").encode()
        return struct.pack("<Q", draw(st.sampled_from([0, 1, len(raw) - 1, len(raw) + 1, 2**64 - 1])))\
            + raw + body
    return with_header(("{" + ",".join(items) + "}").encode(), body)


def flip_bits(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, bit in flips:
        if out:
            out[pos % len(out)] ^= 1 << bit
    return bytes(out)


flips = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=8)


# -- safetensors ---------------------------------------------------------------------------------------------
@given(safetensors_files())
def test_real_safetensors_files_parse_cleanly(data: bytes) -> None:
    assert assert_clean_or_blob("model.safetensors", data).format == "safetensors"


@given(rewritten_headers())
@settings(max_examples=300)
def test_rewritten_headers_parse_cleanly_or_become_blobs(data: bytes) -> None:
    assert_clean_or_blob("model.safetensors", data)


@given(safetensors_files(), flips)
def test_bit_flips_parse_cleanly_or_become_blobs(data: bytes, where: list[tuple[int, int]]) -> None:
    (n,) = struct.unpack_from("<Q", data, 0)
    header_flips = [(p % (8 + n), b) for p, b in where]  # mostly where the parser looks
    assert_clean_or_blob("model.safetensors", flip_bits(data, header_flips))
    assert_clean_or_blob("model.safetensors", flip_bits(data, where))


@given(safetensors_files(), st.integers(0, 1 << 16))
def test_truncations_become_blobs(data: bytes, cut: int) -> None:
    short = data[:cut % len(data)]
    assert assert_clean_or_blob("model.safetensors", short).format == "blob"


@pytest.mark.parametrize("value", ["DEEP", "HUGE_INT", "LIST", "OBJECT"])
def test_the_three_poison_headers_of_issue_8_are_blobs(value: str) -> None:
    """Nesting 1,000+ levels, a dtype that is a list or an object, an integer of 4,300+ digits."""
    hdr = {"DEEP": '{"a":{"dtype":"F32","shape":' + DEEP + ',"data_offsets":[0,4]}}',
           "HUGE_INT": '{"a":{"dtype":"F32","shape":[' + HUGE_INT + '],"data_offsets":[0,4]}}',
           "LIST": '{"a":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}',
           "OBJECT": '{"a":{"dtype":{"F32":1},"shape":[1],"data_offsets":[0,4]}}'}[value]
    data = with_header(hdr.encode(), bytes(4))
    layout, warning = parse_file("p.safetensors", memoryview(data))
    assert layout.format == "blob" and warning is not None and "p.safetensors" in warning
    assert_clean_or_blob("p.safetensors", data)


def test_a_lone_surrogate_tensor_name_is_a_blob() -> None:
    """JSON can spell a lone surrogate; it cannot be written to UTF-8, so it must not be a name."""
    data = with_header(b'{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4))
    assert assert_clean_or_blob("s.safetensors", data).format == "blob"


def test_a_shape_of_many_huge_dimensions_is_refused_quickly() -> None:
    """math.prod of 20k dims of 2**62 is quadratic: the element count must stop early."""
    shape = ",".join(["4611686018427387904"] * 20000)
    data = with_header(('{"a":{"dtype":"F32","shape":[' + shape + '],"data_offsets":[0,4]}}').encode(), bytes(4))
    t0 = time.monotonic()
    layout, warning = parse_file("h.safetensors", memoryview(data))
    assert layout.format == "blob" and warning is not None
    assert time.monotonic() - t0 < 2


def test_a_zero_dimension_makes_huge_other_dimensions_empty() -> None:
    data = with_header(b'{"a":{"dtype":"F32","shape":[4611686018427387904,0],"data_offsets":[0,0]},'
                       b'"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy")
    assert assert_clean_or_blob("z.safetensors", data).format == "safetensors"


# -- a plug-in that fails -----------------------------------------------------------------------------------
class _Buggy:
    name = "buggy"

    def claims(self, path: str, head: bytes) -> bool:
        return path.endswith(".buggy")

    def parse(self, data: memoryview) -> FileLayout:
        raise TypeError("unhashable type: 'list'")  # a bug, not a FormatError


class _Lossy(_Buggy):
    name = "lossy"

    def claims(self, path: str, head: bytes) -> bool:
        return path.endswith(".lossy")

    def parse(self, data: memoryview) -> FileLayout:  # parts that skip a byte
        return FileLayout("lossy", (InlinePart(bytes(data[:1])), InlinePart(bytes(data[2:])), InlinePart(b"x")))


def test_a_plug_in_that_raises_or_loses_bytes_makes_a_blob(monkeypatch: pytest.MonkeyPatch) -> None:
    builtin = formats_base.registered_formats
    monkeypatch.setattr(formats_base, "registered_formats",
                        lambda: {"buggy": _Buggy(), "lossy": _Lossy(), **builtin()})
    data = b"some bytes of a file"
    layout, warning = parse_file("w.buggy", memoryview(data))
    assert layout.format == "blob" and warning is not None
    assert "buggy parser failed (TypeError" in warning and "w.buggy" in warning
    assert_tiles(layout, data)
    layout, warning = parse_file("w.lossy", memoryview(data))
    assert layout.format == "blob" and warning is not None and "does not cover" in warning


# -- torch pickles ------------------------------------------------------------------------------------------
def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@given(state_dicts())
def test_real_torch_pickles_parse_cleanly(sd: dict[str, torch.Tensor]) -> None:
    assert_clean_or_blob("pytorch_model.bin", torch_bytes(sd))


@given(state_dicts(), flips)
@settings(max_examples=200)
def test_torch_pickle_bit_flips_parse_cleanly_or_become_blobs(sd: dict[str, torch.Tensor],
                                                             where: list[tuple[int, int]]) -> None:
    data = torch_bytes(sd)
    assert_clean_or_blob("pytorch_model.bin", flip_bits(data, where))
    pkl = data.find(b"data.pkl")  # and where the pickle and its zip headers are
    assert_clean_or_blob("pytorch_model.bin", flip_bits(data, [(pkl + p % 400, b) for p, b in where]))
    tail = len(data) - 200  # the central directory
    assert_clean_or_blob("pytorch_model.bin", flip_bits(data, [(tail + p % 200, b) for p, b in where]))


@given(state_dicts(), st.integers(0, 1 << 16))
def test_torch_pickle_truncations_become_blobs(sd: dict[str, torch.Tensor], cut: int) -> None:
    data = torch_bytes(sd)
    assert assert_clean_or_blob("pytorch_model.bin", data[:cut % len(data)]).format == "blob"


def test_a_pickle_sharing_one_list_down_forty_levels_parses_in_linear_time() -> None:
    """The memo lets 2**40 paths reach one tensor; the walk visits each object once."""
    x: list[Any] = [torch.ones(2)]
    for _ in range(40):
        x = [x, x]
    t0 = time.monotonic()
    layout = assert_clean_or_blob("deep.pt", torch_bytes({"a": x, "w": torch.zeros(3)}))
    assert time.monotonic() - t0 < 5
    assert layout.format == "torch_pickle"
    assert {p.name for p in layout.parts if isinstance(p, TensorPart)} == {"a" + ".0" * 41, "w"}


def test_a_pickle_key_with_a_lone_surrogate_keeps_its_entry_name() -> None:
    data = torch_bytes({"\ud800": torch.ones(3), "ok": torch.zeros(2)})
    layout = assert_clean_or_blob("s.pt", data)
    assert layout.format == "torch_pickle"
    names = {p.name for p in layout.parts if isinstance(p, TensorPart)}
    assert "ok" in names and all(n.encode() for n in names)

"""The format conformance suite: parts tile the file exactly, and a file round-trips byte-exact.

A format turns a file into verbatim inline bytes and tensors; concatenating the parts must give
the file back, whatever the file holds. So every format (built in or a plug-in) runs the same
checks on files it provides: it claims them, its parts tile them (no gap, no overlap, inline
bytes equal to the file's, each tensor `prod(shape) * itemsize` bytes), importing them into a
repo and exporting gives the same bytes and ranged reads the same slices, files it must refuse
become blobs, and a truncated or byte-flipped file parses exactly or becomes a blob, never
raises and never loses a byte.

Subclass `FormatTests` with ``format_name`` and `sample_files`:

    class TestNpy(FormatTests):
        format_name = "npy"

        def sample_files(self):
            return {"w.npy": npy_bytes(...)}
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import ClassVar

import blake3

from modelfs.formats import FileLayout, InlinePart, TensorPart, parse_file, registered_formats
from modelfs.repo import Repo, StoreSettings
from modelfs.store import MemoryStore

# many chunks even in tiny files: chunk boundaries inside every tensor
SMALL = StoreSettings(chunk_elems=16, blob_chunk_bytes=96)


def assert_tiles(layout: FileLayout, data: bytes) -> None:
    """Concatenating the parts in order gives the file back, with no gap and no overlap."""
    pos = 0
    rebuilt = []
    for p in layout.parts:
        if isinstance(p, InlinePart):
            assert data[pos:pos + len(p.data)] == p.data, f"inline bytes at {pos} differ from the file"
            rebuilt.append(p.data)
            pos += len(p.data)
        else:
            assert p.offset == pos, f"tensor {p.name!r} at {p.offset}, the part before ends at {pos}"
            assert p.nbytes == math.prod(p.shape) * p.dtype.itemsize, f"{p.name!r}: size and shape disagree"
            rebuilt.append(data[p.offset:p.offset + p.nbytes])
            pos += p.nbytes
    assert pos == len(data) == layout.size
    assert b"".join(rebuilt) == data


def roundtrip_through_repo(files: dict[str, bytes], settings: StoreSettings = SMALL) -> Repo:
    """Import `files` as a version of a fresh in-memory repo, export it, compare every byte."""
    repo = Repo.init(store=MemoryStore(), settings=settings)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        v = repo.import_dir(src, "m", infer_parent=False)
        repo.export(v.ref, dst)
        for rel, data in files.items():
            assert (dst / rel).read_bytes() == data, rel
            assert v.files[rel].key == blake3.blake3(data).digest(), rel  # content-addressed
            reader = repo.open_file(v.files[rel])
            assert reader.read(0, len(data) + 10) == data, rel
            step = max(1, len(data) // 7)
            for off in range(0, len(data), step):  # ranged reads across part and chunk boundaries
                assert reader.read(off, step + 3) == data[off:off + step + 3], (rel, off)
    return repo


class FormatTests:
    """The suite; subclass with ``format_name`` and `sample_files` (see the module doc)."""

    format_name: ClassVar[str]

    # -- hooks -----------------------------------------------------------------------------------
    def sample_files(self) -> dict[str, bytes]:
        """Valid files of the format (path -> bytes); the more kinds of content, the better."""
        raise NotImplementedError

    def invalid_files(self) -> dict[str, bytes]:
        """Files the format claims but must refuse: each must become a blob, with a warning."""
        return {}

    # -- the tests --------------------------------------------------------------------------------
    def test_is_registered_under_its_name(self) -> None:
        fmt = registered_formats()[self.format_name]
        assert fmt.name == self.format_name

    def test_claims_and_parses_its_files(self) -> None:
        files = self.sample_files()
        assert files, "sample_files() gave no files"
        fmt = registered_formats()[self.format_name]
        for path, data in files.items():
            assert fmt.claims(path, bytes(data[:64])), path
            layout, warning = parse_file(path, memoryview(data))
            assert warning is None and layout.format == self.format_name, (path, warning)
            assert layout == fmt.parse(memoryview(data))

    def test_parts_tile_the_file(self) -> None:
        tensors = 0
        for path, data in self.sample_files().items():
            layout, _ = parse_file(path, memoryview(data))
            assert_tiles(layout, data)
            tensors += sum(isinstance(p, TensorPart) for p in layout.parts)
        assert tensors, "no sample file has a tensor part: the format was not exercised"

    def test_roundtrip_through_a_repo_is_byte_exact(self) -> None:
        files = self.sample_files()
        roundtrip_through_repo(files)
        roundtrip_through_repo(files, StoreSettings())  # default chunk sizes too

    def test_files_it_refuses_become_blobs(self) -> None:
        for path, data in self.invalid_files().items():
            layout, warning = parse_file(path, memoryview(data))
            assert layout.format == "blob", f"{path} parsed as {layout.format}"
            assert warning is not None and path in warning
            assert_tiles(layout, data)
        if self.invalid_files():
            roundtrip_through_repo(self.invalid_files())

    def test_damaged_files_parse_exactly_or_become_blobs(self) -> None:
        """Truncations and single changed bytes: the parse is exact or a blob, never a guess."""
        damaged: dict[str, bytes] = {}
        for i, (path, data) in enumerate(self.sample_files().items()):
            for cut in sorted({0, 1, len(data) // 3, len(data) // 2, len(data) - 1}):
                damaged[f"cut{i}-{cut}/{path}"] = data[:cut]
            for pos in sorted({0, 8, 9, 17, 30, len(data) // 2, len(data) - 1}):
                if 0 <= pos < len(data):
                    damaged[f"flip{i}-{pos}/{path}"] = data[:pos] + bytes([data[pos] ^ 0x5A]) + data[pos + 1:]
        for path, data in damaged.items():
            layout, _ = parse_file(path, memoryview(data))
            assert_tiles(layout, data)
        roundtrip_through_repo(dict(list(damaged.items())[:12]))

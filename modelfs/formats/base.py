"""The format interface, the registry and the fallback to a chunked blob.

A layout is an ordered list of parts that tile the file exactly: verbatim inline bytes
(a safetensors header, zip metadata) and tensors (bytes of one element type, chunked and
delta-coded). Concatenating the parts gives the file back, so formats cannot lose bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from modelfs.dtypes import BYTES, DType
from modelfs.registry import Registry

log = logging.getLogger(__name__)


class FormatError(ValueError):
    """The file does not parse cleanly as this format; it will be stored as a blob."""


# Bounds on the work and memory one file's header may cause (a parse holds every part in
# memory and the importer does per-part work): beyond them the file is a blob. Real
# checkpoints stay far below: the largest safetensors headers are a few MB, ~100k tensors.
MAX_TENSORS = 200_000  # tensor parts per file


def bounded_numel(shape: list[int] | tuple[int, ...], limit: int) -> int | None:
    """The element count of `shape`, or None once it passes `limit`.

    A product of many huge dimensions costs quadratic time in Python ints, so stop early;
    a zero dimension makes any shape empty, whatever the others are.
    """
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        n *= d
        if n > limit:
            return None
    return n


def check_name(name: str, what: str) -> None:
    """Tensor names go into UTF-8 records and index keys: lone surrogates cannot."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} {name!r} is not valid Unicode") from None


@dataclass(frozen=True, slots=True)
class InlinePart:
    data: bytes


@dataclass(frozen=True, slots=True)
class TensorPart:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    offset: int  # byte offset in the file
    nbytes: int


Part = InlinePart | TensorPart


@dataclass(frozen=True, slots=True)
class FileLayout:
    format: str
    parts: tuple[Part, ...]

    @property
    def size(self) -> int:
        return sum(len(p.data) if isinstance(p, InlinePart) else p.nbytes for p in self.parts)


class Format(Protocol):
    name: str

    def claims(self, path: str, head: bytes) -> bool:
        """Whether this file says it is in this format (by name or magic bytes)."""
        ...

    def parse(self, data: memoryview) -> FileLayout:
        """A layout whose parts tile `data` exactly; FormatError if anything is off."""
        ...


FORMATS: Registry[Format] = Registry(
    "modelfs.formats", "file format", lambda f: f.name, replace=True,
    missing=lambda name, _: f"file format {name!r} is not installed (a plug-in missing?)")
register_format = FORMATS.register
get_format = FORMATS.get
registered_formats = FORMATS.all


def blob_layout(size: int) -> FileLayout:
    """Any file at all: one stream of bytes, chunked and deduplicated like a tensor."""
    return FileLayout("blob", (TensorPart("", BYTES, (size,), 0, size),) if size else ())


def parse_file(path: str, data: memoryview) -> tuple[FileLayout, str | None]:
    """The layout of the first format that claims the file, else a blob; never a guess.

    Returns the layout and a warning when a file claimed a format but failed to parse.
    Any exception of a format (a plug-in's bug, a poison header it did not foresee) makes
    the file a blob too: one bad file must never block the rest of a model.
    """
    head = bytes(data[:64])
    for fmt in registered_formats().values():
        try:
            if not fmt.claims(path, head):
                continue
            layout = fmt.parse(data)
            covers = _tiles(layout, data)
        except FormatError as e:
            return blob_layout(len(data)), (f"{path}: not a valid {fmt.name} file ({_short(e)}); "
                                            "stored byte-exact as a blob")
        except Exception as e:  # noqa: BLE001  (a parser bug must not fail the import)
            log.info("format %s failed on %s", fmt.name, path, exc_info=True)  # traceback with -v
            return blob_layout(len(data)), (f"{path}: the {fmt.name} parser failed "
                                            f"({type(e).__name__}: {_short(e)}); stored byte-exact as a blob")
        if not covers:
            return blob_layout(len(data)), f"{path}: {fmt.name} layout does not cover the file; stored as a blob"
        n = sum(isinstance(p, TensorPart) for p in layout.parts)
        if n > MAX_TENSORS:
            return blob_layout(len(data)), (f"{path}: {n} tensors, more than the {MAX_TENSORS} a "
                                            f"{fmt.name} file may hold here; stored byte-exact as a blob")
        return layout, None
    return blob_layout(len(data)), None


def _short(e: BaseException, limit: int = 200) -> str:
    text = str(e)
    return text if len(text) <= limit else text[:limit] + "..."


def _tiles(layout: FileLayout, data: memoryview) -> bool:
    """Whether the parts give the file back: each tensor where the part before it ends, and
    inline bytes equal to the file's (a memcmp), so no format can lose or change a byte."""
    pos = 0
    for p in layout.parts:
        if isinstance(p, TensorPart):
            if p.offset != pos or p.nbytes < 0:
                return False
            pos += p.nbytes
        else:
            if data[pos:pos + len(p.data)] != p.data:
                return False
            pos += len(p.data)
    return pos == len(data)

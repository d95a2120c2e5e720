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
    """
    head = bytes(data[:64])
    for fmt in registered_formats().values():
        if not fmt.claims(path, head):
            continue
        try:
            layout = fmt.parse(data)
        except FormatError as e:
            return blob_layout(len(data)), f"{path}: not a valid {fmt.name} file ({e}); stored byte-exact as a blob"
        if layout.size != len(data):
            return blob_layout(len(data)), f"{path}: {fmt.name} layout does not cover the file; stored as a blob"
        return layout, None
    return blob_layout(len(data)), None

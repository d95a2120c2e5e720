"""torch.save's zip layout (`pytorch_model.bin`, `*.pt`): each tensor storage is a tensor part.

The zip is parsed from its central directory and each entry's local header, never by
guessing: every stored (uncompressed) `<archive>/data/<key>` entry becomes a tensor part,
and everything else (local headers, `data.pkl`, data descriptors, the central directory)
stays verbatim inline bytes, so the parts tile the file byte-exact, CRCs included.

A storage's element type comes from `data.pkl`, read by an unpickler that imports nothing
and calls nothing: every global is a recording placeholder. A storage is named after the
first state-dict key that uses it (so a `.bin` child delta-codes against a `.safetensors`
parent of the same model), and given that tensor's shape when it covers the storage
exactly. Whatever is uncertain (an unknown storage class, a storage whose byte count does
not match, a compressed entry) leaves that storage a plain byte (U8) part.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from modelfs.dtypes import BYTES, DTYPES, DType
from modelfs.formats.base import (
    MAX_TENSORS,
    FileLayout,
    FormatError,
    InlinePart,
    TensorPart,
    bounded_numel,
    check_name,
    register_format,
)

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_LOC64 = b"PK\x06\x07"
_STORAGE_RE = re.compile(r"^([^/]+)/data/([^/]+)$")
_PICKLE_RE = re.compile(r"^([^/]+)/data\.pkl$")
MAX_PICKLE = 64 << 20  # data.pkl of a 200k-tensor state dict is ~30 MB; it is unpickled whole
MAX_ENTRIES = MAX_TENSORS + 64  # zip entries: one per storage, plus data.pkl, version, ...
MAX_INLINE = 64 << 20  # inline bytes live in the file record; more than this is a blob

# Legacy typed storage classes (`torch.FloatStorage`, ...) -> element type.
_STORAGE_CLASSES = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL", "ComplexFloatStorage": "C64",
}
# `torch.<dtype>` globals (passed to `_rebuild_tensor_v3` with an UntypedStorage) -> element type.
_TORCH_DTYPES = {d.torch_name: d.name for d in DTYPES.values() if d.torch_name}


@dataclass(frozen=True, slots=True)
class ZipEntry:
    name: str
    header_offset: int
    data_start: int
    size: int
    method: int


# ---------------------------------------------------------------- zip structure


def _eocd(data: memoryview) -> tuple[int, int]:
    """(central directory offset, entry count), zip64 records honoured."""
    size = len(data)
    tail = bytes(data[max(0, size - (1 << 16) - 22):])
    pos = tail.rfind(_EOCD)
    if pos < 0:
        raise FormatError("no end-of-central-directory record")
    base = max(0, size - (1 << 16) - 22)
    eocd = base + pos
    if eocd + 22 > size:
        raise FormatError("truncated end-of-central-directory record")
    _, disk, _, _, count, _, cd_off, _ = struct.unpack_from("<4sHHHHIIH", data, eocd)
    if disk != 0:
        raise FormatError("multi-disk zip")
    if cd_off == 0xFFFFFFFF or count == 0xFFFF:
        loc = eocd - 20
        if loc < 0 or bytes(data[loc:loc + 4]) != _LOC64:
            raise FormatError("zip64 sizes without a zip64 locator")
        (rec,) = struct.unpack_from("<Q", data, loc + 8)
        if rec + 56 > size or bytes(data[rec:rec + 4]) != _EOCD64:
            raise FormatError("bad zip64 end-of-central-directory record")
        count, _, cd_off = struct.unpack_from("<QQQ", data, rec + 32)
    if cd_off > size:
        raise FormatError("central directory offset past the end of the file")
    if count > MAX_ENTRIES:
        raise FormatError(f"{count} zip entries, more than the {MAX_ENTRIES} limit")
    return cd_off, count


def _zip64_extra(extra: bytes, need: list[str], values: dict[str, int]) -> None:
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + n]
        if tag == 1:
            for i, key in enumerate(need):
                if 8 * i + 8 > len(body):
                    raise FormatError("short zip64 extra field")
                (values[key],) = struct.unpack_from("<Q", body, 8 * i)
            return
        pos += 4 + n
    if need:
        raise FormatError("zip64 sizes missing from the extra field")


def read_entries(data: memoryview) -> tuple[list[ZipEntry], int]:
    """The entries in file order and where the central directory starts; strict checks."""
    cd_off, count = _eocd(data)
    entries: list[ZipEntry] = []
    pos = cd_off
    for _ in range(count):
        if pos + 46 > len(data) or bytes(data[pos:pos + 4]) != _CENTRAL:
            raise FormatError("bad central directory entry")
        (_, _, _, flags, method, _, _, _, csize, usize, n, m, k, _, _, _, off) = struct.unpack_from(
            "<4sHHHHHHIIIHHHHHII", data, pos)
        name_raw = bytes(data[pos + 46:pos + 46 + n])
        extra = bytes(data[pos + 46 + n:pos + 46 + n + m])
        vals = {"usize": usize, "csize": csize, "off": off}
        _zip64_extra(extra, [key for key, v in (("usize", usize), ("csize", csize), ("off", off))
                             if v == 0xFFFFFFFF], vals)
        pos += 46 + n + m + k
        if flags & 1:
            raise FormatError("encrypted zip entry")
        try:
            name = name_raw.decode("utf-8" if flags & 0x800 else "cp437")
        except UnicodeDecodeError:
            raise FormatError(f"entry name {name_raw[:60]!r} is not valid UTF-8") from None
        lo = vals["off"]
        if lo + 30 > cd_off or bytes(data[lo:lo + 4]) != _LOCAL:
            raise FormatError(f"entry {name!r}: no local header at offset {lo}")
        ln, lm = struct.unpack_from("<HH", data, lo + 26)
        if bytes(data[lo + 30:lo + 30 + ln]) != name_raw:
            raise FormatError(f"entry {name!r}: local header names another file")
        start = lo + 30 + ln + lm
        if start + vals["csize"] > cd_off:
            raise FormatError(f"entry {name!r} runs into the central directory")
        if method == 0 and vals["csize"] != vals["usize"]:
            raise FormatError(f"stored entry {name!r} has different sizes")
        entries.append(ZipEntry(name, lo, start, vals["csize"], method))
    entries.sort(key=lambda e: e.header_offset)
    end = 0
    for e in entries:
        if e.header_offset < end:
            raise FormatError(f"entry {e.name!r} overlaps the previous one")
        end = e.data_start + e.size
    if len({e.name for e in entries}) != len(entries):
        raise FormatError("duplicate entry names")
    return entries, cd_off


# ---------------------------------------------------------------- data.pkl, safely


class _Placeholder:
    """Stands in for any pickled global: creating or calling it records its arguments.

    Placeholders are types (NEWOBJ needs a type) made per global name; nothing real is
    imported, so a pickle can neither run code nor pull in modules.
    """

    module = ""
    name = ""

    def __new__(cls, *args: Any, **kw: Any) -> _Placeholder:
        obj = object.__new__(cls)
        obj.args = args
        obj.items = {}
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kw: Any) -> None:
        pass

    args: tuple[Any, ...]
    items: dict[Any, Any]
    state: Any

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Storage:
    cls: str  # "FloatStorage", "UntypedStorage", ...
    key: str
    numel: int


class _SafeUnpickler(pickle.Unpickler):
    """Imports no module and runs no pickled code: globals become placeholder types."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(io.BytesIO(raw))
        self.storages: dict[str, _Storage] = {}
        self._types: dict[tuple[str, str], type[_Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self._types:
            self._types[key] = type(f"Placeholder_{len(self._types)}", (_Placeholder,),
                                    {"module": module, "name": name})
        return self._types[key]

    def persistent_load(self, pid: Any) -> Any:
        if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], type) and issubclass(pid[1], _Placeholder)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            s = _Storage(pid[1].name, pid[2], pid[4])
            self.storages.setdefault(s.key, s)
            return s
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


@dataclass(slots=True)
class StorageInfo:
    """What the pickle says about one storage: element type, a tensor name and shape if known."""

    cls: str
    numel: int
    dtype: str | None = None
    name: str | None = None
    shape: tuple[int, ...] | None = None


def _walk(obj: Any, path: str, depth: int = 0, seen: set[int] | None = None
          ) -> Iterator[tuple[str, _Placeholder]]:
    """(dotted key, call) of every tensor rebuild reachable through dicts, lists and objects.

    Each object is visited once (by its first path): a pickle's memo can share one list under
    many keys, and walking every path of such a graph would take exponential time.
    """
    seen = set() if seen is None else seen
    if depth > 64 or id(obj) in seen:
        return
    if isinstance(obj, _Placeholder) and type(obj).name.startswith("_rebuild_tensor"):
        yield path, obj
        return
    children: list[tuple[Any, Any]] = []
    if isinstance(obj, dict | list | tuple | _Placeholder):
        seen.add(id(obj))  # the root object stays alive, so ids are not reused meanwhile
    if isinstance(obj, dict):
        children = list(obj.items())
    elif isinstance(obj, _Placeholder):
        children = list(obj.items.items())
        if isinstance(obj.state, dict):
            children += list(obj.state.items())
    elif isinstance(obj, list | tuple):
        children = list(enumerate(obj))
    for k, v in children:
        if isinstance(k, str | int) and not isinstance(k, bool):
            yield from _walk(v, f"{path}.{k}" if path else str(k), depth + 1, seen)


def storages_from_pickle(raw: bytes) -> dict[str, StorageInfo]:
    """Storage key -> what the pickle says about it; FormatError if it does not load."""
    up = _SafeUnpickler(raw)
    try:
        root = up.load()
    except Exception as e:  # a malformed pickle is a parse failure, never a crash
        raise FormatError(f"data.pkl does not load: {type(e).__name__}: {e}") from None
    if len(up.storages) > MAX_TENSORS:
        raise FormatError(f"{len(up.storages)} storages, more than the {MAX_TENSORS} limit")
    infos = {k: StorageInfo(s.cls, s.numel, _STORAGE_CLASSES.get(s.cls)) for k, s in up.storages.items()}
    for name, t in _walk(root, ""):
        args = t.args
        if not args or not isinstance(args[0], _Storage):
            continue
        info = infos[args[0].key]
        if info.cls == "UntypedStorage":
            last = args[-1]
            dt_name = None
            if (type(t).name == "_rebuild_tensor_v3" and isinstance(last, type)
                    and issubclass(last, _Placeholder) and last.module == "torch"):
                dt_name = _TORCH_DTYPES.get(last.name)
            if info.dtype is None:
                info.dtype = dt_name or "?"
            elif info.dtype != dt_name:
                info.dtype = "?"  # two views disagree: uncertain, so bytes
        if info.name is None and name and _valid_name(name):
            info.name = name
            offset, size, stride = (tuple(args) + (None, None, None, None))[1:4]
            if (offset == 0 and isinstance(size, tuple) and isinstance(stride, tuple)
                    and all(isinstance(d, int) for d in size) and _contiguous(size, stride)):
                info.shape = tuple(size)
    return infos


def _valid_name(name: str) -> bool:
    try:
        check_name(name, "key")
    except FormatError:
        return False  # a key with lone surrogates: the storage keeps its entry name
    return True


def _contiguous(size: tuple[int, ...], stride: tuple[Any, ...]) -> bool:
    expect = 1
    for d, s in zip(reversed(size), reversed(stride), strict=False):
        if d != 1 and s != expect:
            return False
        expect *= d
    return len(size) == len(stride)


# ---------------------------------------------------------------- the format


class TorchPickleFormat:
    name = "torch_pickle"

    def claims(self, path: str, head: bytes) -> bool:
        if not head.startswith(_LOCAL) or len(head) < 30:
            return False
        (n,) = struct.unpack_from("<H", head, 26)
        first = head[30:30 + n]
        return bool(re.match(rb"^[^/]+/(data\.pkl|\.format_version|version|byteorder)", first)) or \
            path.endswith((".bin", ".pt", ".pth", ".ckpt"))

    def parse(self, data: memoryview) -> FileLayout:
        entries, _ = read_entries(data)
        pkl = [e for e in entries if _PICKLE_RE.match(e.name)]
        if len(pkl) != 1:
            raise FormatError("not a torch.save archive (no single <archive>/data.pkl)")
        prefix = _PICKLE_RE.match(pkl[0].name).group(1)  # type: ignore[union-attr]
        if pkl[0].method != 0 or pkl[0].size > MAX_PICKLE:
            raise FormatError("data.pkl is compressed or too large")
        infos = storages_from_pickle(bytes(data[pkl[0].data_start:pkl[0].data_start + pkl[0].size]))
        parts: list[InlinePart | TensorPart] = []
        pos = 0
        used: set[str] = set()
        for e in entries:
            m = _STORAGE_RE.match(e.name)
            if m is None or m.group(1) != prefix or e.method != 0 or e.size == 0:
                continue
            part = self._part(m.group(2), e, infos.get(m.group(2)), used)
            if e.data_start > pos:
                parts.append(InlinePart(bytes(data[pos:e.data_start])))
            parts.append(part)
            pos = e.data_start + e.size
        if pos < len(data):
            parts.append(InlinePart(bytes(data[pos:])))
        inline = sum(len(p.data) for p in parts if isinstance(p, InlinePart))
        if inline > MAX_INLINE:
            raise FormatError(f"{inline} bytes outside tensor storages (compressed entries?)")
        return FileLayout(self.name, tuple(parts))

    @staticmethod
    def _part(key: str, e: ZipEntry, info: StorageInfo | None, used: set[str]) -> TensorPart:
        """A typed part where the pickle is unambiguous about it, else a byte part."""
        name = f"{e.name}"
        dt: DType = BYTES
        shape: tuple[int, ...] = (e.size,)
        if info is not None and info.dtype in DTYPES:
            cand = DTYPES[info.dtype]
            numel = info.numel if info.cls != "UntypedStorage" else info.numel // cand.itemsize
            if numel * cand.itemsize == e.size:
                dt, shape = cand, (numel,)
                if info.shape is not None and bounded_numel(info.shape, numel) == numel:
                    shape = info.shape
        if info is not None and info.name and info.name not in used:
            name = info.name
        used.add(name)
        return TensorPart(name, dt, shape, e.data_start, e.size)


TORCH_PICKLE = register_format(TorchPickleFormat())

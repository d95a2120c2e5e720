"""safetensors: the header kept verbatim, each tensor's byte range mapped to a tensor part.

The checks are strict (tensors must tile the data area with no gap or overlap, sizes must
match dtype x shape, known dtypes only): anything else is not guessed at but stored as a blob.
Every way the header can be off, however odd (deep nesting, huge integers, a list where a
string belongs, more tensors or header bytes than the limits), is a FormatError.
"""

from __future__ import annotations

import json
import struct

from modelfs.dtypes import DTYPES
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

# The JSON of a header costs ~20x its size in Python objects while it is parsed: 16 MiB
# bounds that near 0.3 GB and holds ~150k tensors with real names (real headers: a few MB).
MAX_HEADER = 16 * 1024 * 1024


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"duplicate key {k!r} in header")
        out[k] = v
    return out


class SafetensorsFormat:
    name = "safetensors"

    def claims(self, path: str, head: bytes) -> bool:
        if path.endswith(".safetensors"):
            return True
        if len(head) < 10:
            return False
        (n,) = struct.unpack_from("<Q", head, 0)
        return 2 <= n <= MAX_HEADER and head[8:9] == b"{"

    def parse(self, data: memoryview) -> FileLayout:
        size = len(data)
        if size < 8:
            raise FormatError(f"file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack_from("<Q", data, 0)
        if n > MAX_HEADER:
            raise FormatError(f"header length {n} exceeds the {MAX_HEADER}-byte limit")
        if 8 + n > size:
            raise FormatError(f"header length {n} runs past the end of the {size}-byte file")
        raw = bytes(data[8:8 + n])
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except RecursionError:
            raise FormatError("header JSON is nested too deeply") from None
        except ValueError as e:  # bad UTF-8, bad JSON, an integer of more than 4300 digits
            raise FormatError(f"header is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise FormatError("header is not a JSON object")
        if len(header) > MAX_TENSORS + 1:
            raise FormatError(f"{len(header) - 1} tensors, more than the {MAX_TENSORS} limit")
        meta = header.get("__metadata__")
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise FormatError("__metadata__ is not a map of strings")
        tensors: list[TensorPart] = []
        data_start = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            tensors.append(self._tensor(name, info, data_start, size))
        tensors.sort(key=lambda t: (t.offset, t.nbytes))
        pos = data_start
        for t in tensors:
            if t.offset != pos:
                kind = "gap" if t.offset > pos else "overlap"
                raise FormatError(f"{kind} before tensor {t.name!r} at data offset {t.offset - data_start}")
            pos += t.nbytes
        if pos != size:
            raise FormatError(f"tensors end at byte {pos} but the file has {size} bytes")
        return FileLayout(self.name, (InlinePart(bytes(data[:data_start])), *tensors))

    @staticmethod
    def _tensor(name: str, info: object, data_start: int, size: int) -> TensorPart:
        check_name(name, "tensor name")
        if not isinstance(info, dict):
            raise FormatError(f"entry {name!r} is not an object")
        dtype = info.get("dtype")
        dt = DTYPES.get(dtype) if isinstance(dtype, str) else None
        if dt is None:
            raise FormatError(f"tensor {name!r} has unknown dtype {str(dtype)[:40]!r}")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise FormatError(f"tensor {name!r} has a bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)
                and offs[0] <= offs[1]):
            raise FormatError(f"tensor {name!r} has bad data_offsets {offs!r}")
        numel = bounded_numel(shape, size)
        if numel is None:
            raise FormatError(f"tensor {name!r} has more elements than the file has bytes")
        nbytes = numel * dt.itemsize
        if offs[1] - offs[0] != nbytes:
            raise FormatError(f"tensor {name!r}: {offs[1] - offs[0]} bytes for {dt.name}{shape} (expected {nbytes})")
        return TensorPart(name, dt, tuple(shape), data_start + offs[0], nbytes)


SAFETENSORS = register_format(SafetensorsFormat())

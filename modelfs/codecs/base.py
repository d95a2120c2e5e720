"""The codec interface and registry (ids are stored with every chunk, so they never change)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from modelfs.dtypes import DType
from modelfs.errors import ModelfsError


@dataclass(frozen=True, slots=True)
class EncodeContext:
    """What a codec may use: the chunk's element type and its bases' decoded bytes and types."""

    dtype: DType
    bases: Sequence[bytes] = ()
    base_dtypes: Sequence[DType] = ()
    hint: Any = None  # what the committer knows (LoRA factors, merge weights); never stored


class Codec(Protocol):
    id: str
    n_bases: int  # how many base chunks decode needs (0: self-contained)

    def applies(self, ctx: EncodeContext) -> bool:
        """Whether this codec can encode a chunk in this context at all."""
        ...

    def encode(self, data: bytes, ctx: EncodeContext) -> bytes | None:
        """Payload, or None where the codec declines (it would not be lossless or useful)."""
        ...

    def decode(self, payload: memoryview, length: int, ctx: EncodeContext) -> bytes: ...


_REGISTRY: dict[str, Codec] = {}
_loaded_entry_points = False


def register_codec(codec: Codec) -> Codec:
    if codec.id in _REGISTRY and _REGISTRY[codec.id] is not codec:
        raise ModelfsError(f"codec id {codec.id!r} registered twice")
    _REGISTRY[codec.id] = codec
    return codec


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group="modelfs.codecs"):
        obj = ep.load()
        register_codec(obj() if isinstance(obj, type) else obj)


def get_codec(codec_id: str) -> Codec:
    try:
        return _REGISTRY[codec_id]
    except KeyError:
        _load_entry_points()
        if codec_id in _REGISTRY:
            return _REGISTRY[codec_id]
        raise ModelfsError(
            f"chunk uses codec {codec_id!r}, which is not installed (a plug-in missing?)"
        ) from None


def registered_codecs() -> dict[str, Codec]:
    _load_entry_points()
    return dict(_REGISTRY)

"""The codec interface and registry (ids are stored with every chunk, so they never change)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from modelfs.dtypes import DType
from modelfs.registry import Registry


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


CODECS: Registry[Codec] = Registry(
    "modelfs.codecs", "codec id", lambda c: c.id,
    missing=lambda name, _: f"chunk uses codec {name!r}, which is not installed (a plug-in missing?)")
register_codec = CODECS.register
get_codec = CODECS.get
registered_codecs = CODECS.all

"""Which encoding a chunk is stored in: the smallest lossless one, weighed by read cost.

The codecs say how to encode; this says which to keep. It is apart from them so the trade-offs
(how much a deeper chain must save, when a payload is small enough to stop looking) are in one
place, for `choose_encoding` and for the importer's hinted encodings alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelfs import numerics
from modelfs.codecs.base import EncodeContext
from modelfs.codecs.builtin import (
    AVG,
    CAST,
    PLANES,
    PRUNE,
    SUB,
    XOR,
    ZSTD,
    PredictXorCodec,
    PruneCodec,
)
from modelfs.dtypes import DType

GOOD_ENOUGH = 1 / 64  # a payload this small (as a share of the chunk) cannot usefully be beaten
DEPTH_PENALTY = 0.10  # a delta one level deeper must be 10% smaller to be preferred
SELF_CONTAINED_ABOVE = 0.75  # try planes/zstd only when no delta got below this share


def good_enough(payload_len: int, chunk_len: int) -> bool:
    """Whether a payload is small enough to end the search (a near-exact prediction)."""
    return payload_len <= chunk_len * GOOD_ENOUGH


@dataclass(frozen=True, slots=True)
class Encoding:
    codec_id: str
    payload: bytes
    base_set: int  # index into the base sets offered, or -1 for self-contained


def _delta_codecs(dtype: DType) -> tuple[PredictXorCodec | PruneCodec, ...]:
    """Float weights move by small integer steps of their bit patterns: `sub` beats `xor` there."""
    same = SUB if dtype.is_float and dtype.itemsize in numerics.INT else XOR
    return (same, CAST, PRUNE, AVG)


def choose_encoding(data: bytes, dtype: DType,
                    base_sets: Sequence[tuple[Sequence[bytes], Sequence[DType]]] = (),
                    depths: Sequence[int] = ()) -> Encoding:
    """The smallest lossless encoding among the deltas the bases allow and self-contained ones.

    `depths[i]` is the chain depth the chunk gets when coded against base set i: each level
    costs a decode on every read, so sizes are weighed by (1 + DEPTH_PENALTY * depth), which
    lets a slightly larger delta against a shallow ancestor win over one against a deep parent.
    Cheap early exits keep import fast: a delta that is already tiny ends the search, and the
    self-contained codecs are tried only when no delta got below 3/4 of the raw size.
    """
    n = len(data)
    best = Encoding("raw", bytes(data), -1)
    best_cost = float(n)
    for i, (bases, btypes) in enumerate(base_sets):
        ctx = EncodeContext(dtype, bases, btypes)
        weight = 1 + DEPTH_PENALTY * (depths[i] if i < len(depths) else 1)
        for codec in _delta_codecs(dtype):
            if not codec.applies(ctx):
                continue
            payload = codec.encode(data, ctx)
            if payload is not None and len(payload) * weight < best_cost:
                best, best_cost = Encoding(codec.id, payload, i), len(payload) * weight
        if good_enough(len(best.payload), n):
            return best
    if len(best.payload) > n * SELF_CONTAINED_ABOVE:
        ctx = EncodeContext(dtype)
        for codec in (PLANES if dtype.itemsize > 1 else ZSTD,):
            payload = codec.encode(data, ctx)
            if payload is not None and len(payload) < best_cost:
                best, best_cost = Encoding(codec.id, payload, -1), float(len(payload))
    return best

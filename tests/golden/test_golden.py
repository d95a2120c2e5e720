"""Golden files pin the on-disk format: a change to stored bytes has to be a deliberate one.

Every record a store holds (chunk record, file record, version record, model record, lineage
index keys, store settings) and the payload of every built-in codec is built here from small
fixed inputs and compared with ``golden.json``, both ways:

- encoding today gives exactly the stored bytes (nothing writes a new format by accident);
- the stored bytes decode to the same objects and chunk bytes (old stores keep reading).

When a format change is intended, bump the record's version where it has one, keep a reader
for the old bytes, and rewrite the file with ``python tests/golden/test_golden.py --write``;
the diff of ``golden.json`` is then part of the reviewed change.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from modelfs.codecs import EncodeContext, get_codec
from modelfs.codecs.lowrank import chunk_hint
from modelfs.codecs.mix import MixHint, TiesHint
from modelfs.codecs.planes import decode_planes, encode_planes
from modelfs.codecs.qdelta import QuantHint
from modelfs.dtypes import DTYPES
from modelfs.lineage import FileEntry, LineageGraph, ModelInfo, Version
from modelfs.repo import Repo
from modelfs.repo.chunks import ChunkRecord, chunk_key
from modelfs.repo.files import FileRecord, StoredInline, StoredTensor
from modelfs.store import MemoryStore

GOLDEN = Path(__file__).with_name("golden.json")
F32, F16, I8 = DTYPES["F32"], DTYPES["F16"], DTYPES["I8"]
N = 64  # elements per test chunk: small files, every plane method still reached


# -- fixed inputs (arithmetic, not a random generator, so they never change) ----------------------
def weights(n: int = N, scale: float = 0.02, phase: float = 0.0) -> np.ndarray:
    return (np.sin(np.arange(n, dtype=np.float64) * 0.7 + phase) * scale).astype(np.float32)


PARENT = weights()
CHILD = PARENT.copy()
CHILD[::7] += np.float32(1e-4)  # a small fine-tuning step on some elements
OTHER = weights(phase=1.0)
PRUNED = PARENT.copy()
PRUNED[np.abs(PARENT) < np.float32(0.008)] = 0  # a magnitude prune (>= 8 zeros, > 1% newly zero)
FACTOR_B = (np.arange(8, dtype=np.float32).reshape(8, 1) - 3) * np.float32(0.01)
FACTOR_A = (np.arange(8, dtype=np.float32).reshape(1, 8) - 4) * np.float32(0.02)
LOWRANK_CHILD = PARENT + (FACTOR_B @ FACTOR_A).reshape(-1) * np.float32(2.0)
SPARSE_CHILD = PARENT.copy()
SPARSE_CHILD[[3, 40]] = np.float32(0.5)


@dataclass(frozen=True)
class CodecCase:
    codec: str
    data: bytes
    ctx: EncodeContext


def _avg(a: np.ndarray, b: np.ndarray) -> bytes:
    return ((a + b) / np.float32(2)).astype(np.float32).tobytes()


def codec_cases() -> dict[str, CodecCase]:
    p, c = PARENT.tobytes(), CHILD.tobytes()
    mixed = (np.float32(0.3) * PARENT + np.float32(0.7) * OTHER).astype(np.float32).tobytes()
    return {
        "raw": CodecCase("raw", c, EncodeContext(F32)),
        "zstd": CodecCase("zstd", bytes(range(32)) * 4, EncodeContext(I8)),
        "planes": CodecCase("planes", c, EncodeContext(F32)),
        "xor": CodecCase("xor", c, EncodeContext(F32, [p], [F32])),
        "sub": CodecCase("sub", c, EncodeContext(F32, [p], [F32])),
        "cast": CodecCase("cast", PARENT.astype(np.float16).tobytes(), EncodeContext(F16, [p], [F32])),
        "avg": CodecCase("avg", _avg(PARENT, OTHER), EncodeContext(F32, [p, OTHER.tobytes()], [F32, F32])),
        "prune": CodecCase("prune", PRUNED.tobytes(), EncodeContext(F32, [p], [F32])),
        "sparse": CodecCase("sparse", SPARSE_CHILD.tobytes(), EncodeContext(F32, [p], [F32])),
        "mix": CodecCase("mix", mixed, EncodeContext(F32, [p, OTHER.tobytes()], [F32, F32], MixHint((0.3, 0.7)))),
        "ties": CodecCase("ties", c, EncodeContext(F32, [p, c, OTHER.tobytes()], [F32] * 3,
                                                    TiesHint((0.001, 0.002), 0.5))),
        "lowrank": CodecCase("lowrank", LOWRANK_CHILD.tobytes(), EncodeContext(
            F32, [p], [F32], chunk_hint(FACTOR_B, FACTOR_A, 2.0, 0, N, variant="fma"))),
        # lossy mode's codecs (exact on any chunk: what their grid misses is an exception)
        "qdelta": CodecCase("qdelta", c, EncodeContext(F32, [p], [F32], QuantHint(1e-3))),
        "qdelta-avg": CodecCase("qdelta-avg", c, EncodeContext(F32, [p, OTHER.tobytes()], [F32, F32],
                                                                QuantHint(1e-3))),
        "qdelta-prune": CodecCase("qdelta-prune", PRUNED.tobytes(), EncodeContext(F32, [p], [F32], QuantHint(1e-3))),
    }


# -- records -------------------------------------------------------------------------------------------
KEY_A, KEY_B = chunk_key(PARENT.tobytes()), chunk_key(CHILD.tobytes())
HEADER = b'\x18\x00\x00\x00\x00\x00\x00\x00{"w":{"dtype":"F32"}}   '  # any verbatim bytes


def chunk_record() -> ChunkRecord:
    payload = get_codec("xor").encode(CHILD.tobytes(), EncodeContext(F32, [PARENT.tobytes()], [F32]))
    assert payload is not None
    return ChunkRecord("xor", F32, 1, N * 4, ((KEY_A, F32),), memoryview(payload))


def file_record() -> FileRecord:
    return FileRecord("safetensors", len(HEADER) + 2 * N * 4, bytes(range(32)), (
        StoredInline(0, HEADER),
        StoredTensor("w", F32, (2, N), len(HEADER), 2 * N * 4, N * 4, (KEY_A, KEY_B)),
    ))


def version() -> Version:
    files = {"model.safetensors": FileEntry(bytes(range(32)), 1234, "safetensors", 0o644),
             "config.json": FileEntry(bytes(range(1, 33)), 56, "blob", 0o600)}
    return Version("v-child", "m", 2, "v-base", ("v-other",), "finetune", "two steps", 1_700_000_000.5,
                   MappingProxyType(files), MappingProxyType({"lr": 5e-5, "note": "é"}))


def lineage_index() -> dict[str, list[tuple[bytes, bytes]]]:
    """What recording a version writes into the index tables (keys and values)."""
    store = MemoryStore()
    base = Version("v-base", "m", 1, None, (), None, "", 1_699_999_999.0)
    with store.write() as txn:
        LineageGraph.add_version(txn, base)
        LineageGraph.add_version(txn, version())
    with store.read() as txn:
        return {t: [(bytes(k), bytes(v)) for k, v in txn.items(t)] for t in ("vnums", "children", "models")}


def store_meta() -> list[tuple[bytes, bytes]]:
    """The meta records of a fresh store (its settings)."""
    repo = Repo.init(store=MemoryStore())
    try:
        with repo.read_txn() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.items("meta")]
    finally:
        repo.close()


PLANE_ELEMS = 64


def plane_bytes() -> bytes:
    """A buffer whose planes take each stored form: all-zero, zstd (runs), raw, and a tail."""
    i = np.arange(PLANE_ELEMS)
    x = np.zeros((PLANE_ELEMS, 3), dtype=np.uint8)
    x[:, 1] = i // 16  # long runs: zstd shrinks them
    x[:, 2] = (i * 167 + 13) % 256  # 64 distinct bytes: zstd cannot, so they stay raw
    return x.tobytes() + b"\x01\x02"


# -- the golden table ----------------------------------------------------------------------------------
def _pairs_hex(pairs: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[k.hex(), v.hex()] for k, v in pairs]


def build() -> dict[str, Any]:
    """Everything pinned, as JSON-able hex."""
    out: dict[str, Any] = {"codec/" + name: get_codec(case.codec).encode(case.data, case.ctx).hex()  # type: ignore[union-attr]
                           for name, case in codec_cases().items()}
    out["record/chunk"] = chunk_record().to_bytes().hex()
    out["record/file"] = file_record().to_bytes().hex()
    out["record/version"] = version().to_bytes().hex()
    out["record/model"] = ModelInfo("m", "v-child", 2, 1_699_999_999.0).to_bytes().hex()
    out["index/lineage"] = {t: _pairs_hex(p) for t, p in lineage_index().items()}
    out["meta/fresh_store"] = _pairs_hex(store_meta())
    out["planes/payload"] = encode_planes(plane_bytes(), 3).hex()
    return out


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return dict(json.loads(GOLDEN.read_text()))


def test_golden_file_covers_exactly_what_is_built(golden: dict[str, Any]) -> None:
    assert sorted(golden) == sorted(build())


@pytest.mark.parametrize("name", sorted(codec_cases()))
def test_codec_payloads_are_unchanged_and_old_payloads_decode(golden: dict[str, Any], name: str) -> None:
    case = codec_cases()[name]
    codec = get_codec(case.codec)
    stored = bytes.fromhex(golden["codec/" + name])
    assert codec.decode(memoryview(stored), len(case.data), case.ctx) == case.data
    payload = codec.encode(case.data, case.ctx)
    assert payload is not None and payload == stored, f"{name}: the {case.codec} payload changed"


def test_the_codec_cases_take_the_paths_they_pin() -> None:
    """Each case exercises its codec: the predicting ones predict exactly (an all-zero residual)."""
    cases = codec_cases()
    for name in ("cast", "avg", "mix", "lowrank"):
        c = cases[name]
        payload = get_codec(c.codec).encode(c.data, c.ctx)
        zero_residual = encode_planes(bytes(len(c.data)), c.ctx.dtype.itemsize)
        assert payload is not None and payload.endswith(zero_residual), name
    for name in ("prune", "sparse"):  # both accept their input (neither declines it)
        assert get_codec(name).encode(cases[name].data, cases[name].ctx) is not None, name


@pytest.mark.parametrize(("name", "make", "read"), [
    ("record/chunk", chunk_record, ChunkRecord.from_bytes),
    ("record/file", file_record, FileRecord.from_bytes),
    ("record/version", version, Version.from_bytes),
])
def test_records_are_unchanged_and_old_records_read(golden: dict[str, Any], name: str,
                                                    make: Callable[[], Any], read: Callable[[bytes], Any]) -> None:
    stored = bytes.fromhex(golden[name])
    obj = make()
    assert obj.to_bytes() == stored, f"{name}: the stored form changed"
    back = read(stored)
    assert back.to_bytes() == stored
    if isinstance(obj, ChunkRecord):
        assert (back.codec, back.dtype, back.depth, back.length, back.bases) == (
            obj.codec, obj.dtype, obj.depth, obj.length, obj.bases)
        assert bytes(back.payload) == bytes(obj.payload)
    else:
        assert back == obj


def test_chunk_record_layout_is_the_documented_one(golden: dict[str, Any]) -> None:
    """version 1, codec id, dtype name, depth, length, bases (key + dtype), payload."""
    raw = bytes.fromhex(golden["record/chunk"])
    assert raw[:2] == b"\x01\x03" and raw[2:5] == b"xor" and raw[5:9] == b"\x03F32"
    assert raw[9:11] == (1).to_bytes(2, "little") and raw[11:19] == (N * 4).to_bytes(8, "little")
    assert raw[19] == 1 and raw[20:52] == KEY_A and raw[52:56] == b"\x03F32"


def test_model_record_and_lineage_index_are_unchanged(golden: dict[str, Any]) -> None:
    info = ModelInfo("m", "v-child", 2, 1_699_999_999.0)
    assert info.to_bytes().hex() == golden["record/model"]
    assert ModelInfo.from_bytes("m", bytes.fromhex(golden["record/model"])) == info
    assert {t: _pairs_hex(p) for t, p in lineage_index().items()} == golden["index/lineage"]


def test_fresh_store_meta_is_unchanged(golden: dict[str, Any]) -> None:
    assert _pairs_hex(store_meta()) == golden["meta/fresh_store"]


def test_plane_payload_is_unchanged_and_old_payload_decodes(golden: dict[str, Any]) -> None:
    data = plane_bytes()
    stored = bytes.fromhex(golden["planes/payload"])
    assert decode_planes(memoryview(stored), len(data)) == data
    assert encode_planes(data, 3) == stored
    # header: 3 planes, a 2-byte tail; then one plane of each method (zero 2, zstd 1, raw 0)
    assert stored[:5] == b"\x03\x02\x00\x00\x00" and stored[5:7] == b"\x01\x02"
    assert stored[7:12] == b"\x02\x00\x00\x00\x00"
    assert stored[12] == 1 and stored[-PLANE_ELEMS - 5] == 0 and stored[-PLANE_ELEMS:] == data[2:-2:3]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden/test_golden.py --write   (rewrites golden.json)")
    GOLDEN.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")

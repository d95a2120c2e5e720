"""The lineage layer: immutable versions, versioning and provenance edges, traversal.

Run on both store implementations, since the graph only ever talks to the store interface.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfs.errors import NotFound
from modelfs.lineage import FileEntry, LineageGraph, ModelInfo, Version
from modelfs.store import Store

G = LineageGraph




def mk(vid: str, model: str, number: int, previous: str | None = None, derived: tuple[str, ...] = (),
       how: str | None = None, t: float = 0.0) -> Version:
    files = {"model.safetensors": FileEntry(bytes([len(vid)]) * 32, 10, "safetensors"),
             "sub/config.json": FileEntry(b"\x01" * 32, 3, "blob", 0o600)}
    return Version(vid, model, number, previous, derived, how, f"msg {vid}", t or float(number),
                   MappingProxyType(files), MappingProxyType({"lr": 1e-4, "tags": ["a", "b"]}))


def add(store: Store, *versions: Version) -> None:
    for v in versions:
        with store.write() as txn:
            G.add_version(txn, v)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=8)


@given(model=st.text(min_size=1, max_size=20), number=st.integers(1, 2**40), msg=st.text(max_size=30),
       how=st.none() | st.text(max_size=10), prov=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
       derived=st.lists(st.text(alphabet="0123456789abcdef", min_size=20, max_size=20), max_size=3),
       paths=st.dictionaries(st.text(min_size=1, max_size=12), st.integers(0, 2**50), max_size=4))
def test_version_record_roundtrips(model: str, number: int, msg: str, how: str | None, prov: dict[str, object],
                                   derived: list[str], paths: dict[str, int]) -> None:
    files = {p: FileEntry(bytes([i % 256]) * 32, size, "blob", 0o640) for i, (p, size) in enumerate(paths.items())}
    v = Version("0123456789abcdef0123", model, number, "f" * 20 if number > 1 else None, tuple(derived), how, msg,
                1234.5, MappingProxyType(files), MappingProxyType(prov))
    back = Version.from_bytes(v.to_bytes())
    assert back.to_bytes() == v.to_bytes()
    assert dict(back.files) == files and dict(back.provenance) == prov
    assert back.parents == v.parents and back.ref == f"{model}@{number}"
    assert back.logical_size == sum(paths.values())


def test_model_info_roundtrips() -> None:
    info = ModelInfo("m", "abc", 3, 12.5)
    assert ModelInfo.from_bytes("m", info.to_bytes()) == info


def test_add_version_records_numbers_heads_and_children(store: Store) -> None:
    a1 = mk("a1" * 5, "base", 1)
    a2 = mk("a2" * 5, "base", 2, previous=a1.id)
    b1 = mk("b1" * 5, "child", 1, derived=(a1.id,), how="finetune")
    add(store, a1, a2, b1)
    with store.read() as txn:
        assert G.model(txn, "base") == ModelInfo("base", a2.id, 2, a1.time)
        assert G.model(txn, "child") == ModelInfo("child", b1.id, 1, b1.time)
        assert G.model(txn, "nope") is None
        assert [m.name for m in G.models(txn)] == ["base", "child"]
        assert G.version_by_number(txn, "base", 1) == a1
        assert [v.id for v in G.versions(txn, "base")] == [a1.id, a2.id]
        assert {c.id for c in G.children(txn, a1.id)} == {a2.id, b1.id}
        assert G.children(txn, b1.id) == []
        assert {v.id for v in G.all_versions(txn)} == {a1.id, a2.id, b1.id}
        assert G.version(txn, b1.id).how == "finetune"
        assert b1.parents == (a1.id,) and a2.parents == (a1.id,)


def test_versions_of_a_model_are_ordered_by_number_past_255(store: Store) -> None:
    vs = [mk(f"v{i:018d}", "m", i, previous=f"v{i - 1:018d}" if i > 1 else None) for i in range(1, 260)]
    with store.write() as txn:
        for v in vs:
            G.add_version(txn, v)
    with store.read() as txn:
        assert [v.number for v in G.versions(txn, "m")] == list(range(1, 260))
        assert G.model(txn, "m").head == vs[-1].id  # type: ignore[union-attr]


def test_model_names_that_prefix_each_other_do_not_mix(store: Store) -> None:
    add(store, mk("x" * 20, "m", 1), mk("y" * 20, "m2", 1), mk("z" * 20, "m.x", 1))
    with store.read() as txn:
        assert [v.id for v in G.versions(txn, "m")] == ["x" * 20]
        assert [v.id for v in G.versions(txn, "m2")] == ["y" * 20]


def test_versions_are_immutable(store: Store) -> None:
    v = mk("a" * 20, "m", 1)
    add(store, v)
    with pytest.raises(NotFound), store.write() as txn:
        G.add_version(txn, mk("a" * 20, "m", 2))
    with store.read() as txn:
        assert G.version(txn, v.id) == v
        assert G.model(txn, "m").count == 1  # type: ignore[union-attr]


def test_unknown_versions_are_not_found(store: Store) -> None:
    add(store, mk("a" * 20, "m", 1))
    with store.read() as txn:
        with pytest.raises(NotFound, match="unknown version"):
            G.version(txn, "nope")
        with pytest.raises(NotFound, match="no version 7"):
            G.version_by_number(txn, "m", 7)
        with pytest.raises(NotFound):
            G.version_by_number(txn, "other", 1)
        for n in (0, -1, 1 << 64, 99999999999999999999):  # beyond the key's 8 bytes: no struct.error
            with pytest.raises(NotFound, match=f"no version {n}"):
                G.version_by_number(txn, "m", n)


def test_ancestors_and_common_ancestor_with_a_merge(store: Store) -> None:
    r"""root -> a -> a2 ; root -> b ; merge(a2, b) -> m ; unrelated u."""
    root = mk("r" * 20, "root", 1)
    a = mk("a" * 20, "a", 1, derived=(root.id,))
    a2 = mk("c" * 20, "a", 2, previous=a.id)
    b = mk("b" * 20, "b", 1, derived=(root.id,))
    m = mk("m" * 20, "merged", 1, derived=(a2.id, b.id), how="merge")
    u = mk("u" * 20, "u", 1)
    add(store, root, a, a2, b, m, u)
    with store.read() as txn:
        assert m.parents == (a2.id, b.id)
        assert G.ancestors(txn, m.id) == {m.id: 0, a2.id: 1, b.id: 1, a.id: 2, root.id: 2}
        assert G.common_ancestor(txn, a2.id, b.id) == root.id
        assert G.common_ancestor(txn, m.id, a.id) == a.id
        assert G.common_ancestor(txn, m.id, m.id) == m.id
        assert G.common_ancestor(txn, u.id, a.id) is None
        assert {c.id for c in G.children(txn, b.id)} == {m.id}

"""Push, pull, clone and fetch against a real S3 server and a shared directory: byte-exact
round trips, only what changed moves (counted at the client, checked at the server), requests
per push scale with packs, and a lazy clone moves metadata only."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfs.remote import open_chunk_source, remote_for_store
from modelfs.remote.pull import clone, fetch, pull
from modelfs.remote.push import push
from modelfs.repo import Repo
from tests.conftest import dir_blake3
from tests.remote.conftest import RemoteSpot


def exported(repo: Repo, ref: str, dest: Path) -> dict[str, str]:
    repo.export(ref, dest)
    return dir_blake3(dest)


def test_push_clone_pull_round_trip_byte_exact(spot: RemoteSpot, tmp_path: Path, make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, (ft1, ft2) = make_lineage(n_tensors=4, elems=1 << 16, children=2)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "base")
    a.import_dir(ft1, "ft", parents=["base"])
    out = push(a, spot.attach(a), pack_bytes=1 << 20)
    assert out["refs_moved"] == ["base", "ft"] and out["versions"] == 2

    clone(spot.url, tmp_path / "b", options=spot.options)
    b = Repo.open(tmp_path / "b")
    assert [v.id for v in b.all_versions()] == [v.id for v in a.all_versions()]
    assert exported(b, "base", tmp_path / "x1") == dir_blake3(base)
    assert exported(b, "ft@1", tmp_path / "x2") == dir_blake3(ft1)

    a.import_dir(ft2, "ft")  # ft@2 on a, pushed, then pulled by b: only its new chunks move
    push(a, spot.attach(a), pack_bytes=1 << 20)
    new_chunks = a.chunk_keys(a.resolve("ft@2")) - a.chunk_keys(a.resolve("ft@1"), a.resolve("base"))
    stored = a.stored_size_of(new_chunks)
    got = pull(b, spot.attach(b))
    assert got["versions"] == 1 and got["chunks"] == len(new_chunks)
    assert b.model("ft").head == a.model("ft").head
    assert exported(b, "ft@2", tmp_path / "x3") == dir_blake3(ft2)
    assert got["chunk_bytes"] <= 1.1 * stored
    assert got["bytes_down"] <= 1.1 * stored + (16 << 10)  # the rest: the new index, one version, a ref
    again = pull(b, spot.attach(b))
    assert again["versions"] == 0 and again["chunks"] == 0
    b.close()
    a.close()


def test_push_of_a_finetune_moves_at_most_1_1x_its_new_chunks(spot: RemoteSpot, tmp_path: Path,
                                                              make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, (ft,) = make_lineage(n_tensors=4, elems=1 << 20, children=1)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "base")
    push(a, spot.attach(a))
    before = spot.sizes()
    a.import_dir(ft, "ft", parents=["base"])
    v = a.resolve("ft")
    new_chunks = a.chunk_keys(v) - a.chunk_keys(a.resolve("base"))
    stored = a.stored_size_of(new_chunks)
    out = push(a, spot.attach(a), ["ft"])
    assert out["chunks"] == len(new_chunks) and out["versions"] == 1
    assert out["bytes_up"] <= 1.1 * stored, (out["bytes_up"], stored)
    after = spot.sizes()
    # the server holds what the client says it sent: the new objects, byte for byte
    added = {k: n for k, n in after.items() if k not in before}
    assert sum(added.values()) == out["bytes_up"]
    assert all(k.startswith(("packs/", "refs/ft.json")) for k in added)
    a.close()


def test_requests_per_push_scale_with_packs_not_chunks(spot: RemoteSpot, tmp_path: Path,
                                                       make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, _ = make_lineage(n_tensors=300, elems=1 << 13, children=0)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "many")
    n_chunks = len(a.chunk_keys(a.resolve("many")))
    out = push(a, spot.attach(a), pack_bytes=2 << 20)
    assert n_chunks >= 300 and out["chunks"] == n_chunks
    # two objects per pack (the pack, its index), plus a handful: the format marker, listings, the ref
    assert out["requests"] <= 2 * out["packs"] + 8, out
    assert out["requests"] < n_chunks / 10
    a.close()


def test_lazy_clone_moves_under_1_percent_and_fetch_brings_the_rest(spot: RemoteSpot, tmp_path: Path,
                                                                    make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, kids = make_lineage(n_tensors=4, elems=1 << 20, children=11)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    for k in kids:
        a.import_dir(k, "m")
    assert len(a.versions("m")) == 12
    stored = a.stored_size_of(a.chunk_keys(*a.versions("m")))
    push(a, spot.attach(a))
    out = clone(spot.url, tmp_path / "lazy", lazy=True, options=spot.options)
    assert out["bytes_down"] <= 0.01 * stored, (out["bytes_down"], stored)
    lazy = Repo.open(tmp_path / "lazy")
    assert lazy.lazy_remote() == "origin" and len(lazy.versions("m")) == 12
    assert lazy.stored_size_of(lazy.chunk_keys(*lazy.versions("m"))) == 0  # no chunk came down

    # the chunk source 11b's read path uses: the exact records, by ranged GETs
    source = remote_for_store(lazy, spot.options)
    assert source is not None and source.name == "origin"
    keys = sorted(a.chunk_keys(a.resolve("m@3")))
    got = source.fetch(keys[:5] + [b"\0" * 32])
    with a.read_txn() as txn:
        assert got == {k: bytes(txn.get("chunks", k)) for k in keys[:5]}
    assert remote_for_store(a) is None

    f = fetch(lazy, "m@12", spot.options)
    assert f["chunks"] > 0
    assert exported(lazy, "m@12", tmp_path / "x") == dir_blake3(kids[-1])
    lazy.close()
    a.close()


@pytest.mark.parametrize("spot", ["file"], indirect=True)  # the same on S3: the lazy clone test ranges over it
def test_pull_into_a_lazy_store_brings_metadata_only(spot: RemoteSpot, tmp_path: Path,
                                                     make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, (ft,) = make_lineage(n_tensors=2, elems=1 << 16, children=1)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    push(a, spot.attach(a))
    clone(spot.url, tmp_path / "lazy", lazy=True, options=spot.options)
    a.import_dir(ft, "m")
    push(a, spot.attach(a))
    lazy = Repo.open(tmp_path / "lazy")
    out = pull(lazy, spot.attach(lazy))
    assert out["versions"] == 1 and out["chunks"] == 0 and out["lazy"]
    assert lazy.resolve("m@2").id == a.resolve("m@2").id
    src = open_chunk_source(lazy, "origin", spot.options)
    keys = sorted(a.chunk_keys(a.resolve("m@2")) - a.chunk_keys(a.resolve("m@1")))
    assert set(src.fetch(keys)) == set(keys)  # the new version's chunks are reachable through it
    lazy.close()
    a.close()


@pytest.mark.parametrize("spot", ["file"], indirect=True)  # history logic: the transport plays no part
@pytest.mark.parametrize("what", ["diverged", "ahead"])
def test_pull_refuses_a_diverged_history_and_skips_a_store_ahead(spot: RemoteSpot, tmp_path: Path,
                                                                 make_lineage, what: str) -> None:  # type: ignore[no-untyped-def]
    from modelfs.errors import Conflict

    base, (ft1, ft2) = make_lineage(n_tensors=2, elems=1 << 14, children=2)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    push(a, spot.attach(a))
    clone(spot.url, tmp_path / "b", options=spot.options)
    b = Repo.open(tmp_path / "b")
    b.import_dir(ft1, "m")
    if what == "diverged":
        a.import_dir(ft2, "m")
        push(a, spot.attach(a))
        with pytest.raises(Conflict, match="differ from m@2 on; nothing was pulled"):
            pull(b, spot.attach(b))
    else:
        assert pull(b, spot.attach(b))["versions"] == 0
    assert len(b.versions("m")) == 2  # b's own version is still there
    b.close()
    a.close()


@pytest.mark.parametrize("spot", ["file"], indirect=True)
def test_a_pruned_lineage_travels_with_its_numbers_and_a_prune_after_push_is_refused(
        spot: RemoteSpot, tmp_path: Path, make_lineage) -> None:  # type: ignore[no-untyped-def]
    from modelfs.errors import Conflict

    base, kids = make_lineage(n_tensors=2, elems=1 << 14, children=3)
    a = Repo.init(tmp_path / "a")
    for d in [base, *kids]:
        a.import_dir(d, "m")
    a.history().prune("m", keep_last=2)  # m@3 and m@4 stay: numbers now skip
    push(a, spot.attach(a))
    clone(spot.url, tmp_path / "b", options=spot.options)
    with Repo.open(tmp_path / "b") as b:
        assert [v.number for v in b.versions("m")] == [3, 4]
        assert exported(b, "m@4", tmp_path / "x") == dir_blake3(kids[-1])
    a.history().prune("m", keep_last=1)
    with pytest.raises(Conflict, match="remote has newer versions of m; pull first"):
        push(a, spot.attach(a))
    a.close()


def test_remote_config_refuses_duplicates_unknowns_and_bad_urls(tmp_path: Path) -> None:
    from modelfs.errors import Conflict, NotFound
    from modelfs.remote import Remote, RemoteRefused
    from modelfs.repo import Transfer

    with Repo.init(tmp_path / "a") as a:
        t = Transfer(a)
        t.set_remote("origin", {"url": "file:///x", "endpoint": None})
        with pytest.raises(Conflict, match="remote 'origin' exists"):
            t.set_remote("origin", {"url": "file:///y", "endpoint": None})
        assert t.remotes() == {"origin": {"url": "file:///x", "endpoint": None}}
        with pytest.raises(NotFound, match="no remote 'other'"):
            t.remove_remote("other")
        with pytest.raises(NotFound, match="no remote 'other' in this store"):
            Remote.of(a, "other")
        for url, msg in [("bucket/prefix", "has no scheme"), ("s3:///p", "names no bucket"),
                         ("file://host/p", "names a local path"), ("gs://b/p", "unknown remote URL scheme")]:
            with pytest.raises(RemoteRefused, match=msg):
                Remote("x", url)
        t.remove_remote("origin")
        assert t.remotes() == {}

"""Faults, each with nothing lost and one clear line: the server killed mid-push (then the
push resumes), a stalled or restarting server (timeouts, retries with backoff), an object
corrupted on the server, two pushers at once, wrong credentials, a missing bucket."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from modelfs.errors import Conflict, CorruptData, ModelfsError, NotFound, RemoteUnavailable
from modelfs.remote import Remote, RemoteRefused, open_chunk_source
from modelfs.remote.gc import gc_remote
from modelfs.remote.pull import clone, pull
from modelfs.remote.push import Pusher, parse_targets, push
from modelfs.remote.transport import Options
from modelfs.repo import Repo, Transfer
from tests.conftest import dir_blake3
from tests.remote.conftest import RemoteSpot


class Abort(Exception):
    """The pushing process dying, for a directory remote (no server to kill)."""


def _push_until(repo: Repo, remote: Remote, packs: int, fault: object) -> Exception:
    """Push with 256 KiB packs and cut it off after `packs` packs are up; the error it met."""
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += 1
        if done == packs:
            fault()  # type: ignore[operator]

    with pytest.raises((RemoteUnavailable, Abort)) as err:
        Pusher(repo, remote, pack_bytes=256 << 10, workers=1, progress=progress).run(parse_targets(repo, []))
    return err.value


def test_a_push_killed_part_way_resumes_uploading_only_the_rest(spot: RemoteSpot, tmp_path: Path,
                                                               make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, _ = make_lineage(n_tensors=40, elems=1 << 15, children=0)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    total = len(a.chunk_keys(a.resolve("m")))

    def fault() -> None:
        if spot.server is not None:
            spot.server.kill()
        else:
            raise Abort()

    err = _push_until(a, spot.attach(a), 3, fault)
    if spot.server is not None:
        assert "did not answer" in str(err) and "\n" not in str(err)
        spot.server.start()
    sizes = spot.sizes()
    assert not any(k.startswith("refs/") for k in sizes)  # no ref to a version not all there
    assert sum(k.endswith(".idx") for k in sizes) >= 2

    out = push(a, spot.attach(a), pack_bytes=256 << 10)
    assert 0 < out["chunks"] < total  # only what the killed push had not finished
    clone(spot.url, tmp_path / "b", options=spot.options)
    b = Repo.open(tmp_path / "b")
    b.export("m", tmp_path / "x")
    assert dir_blake3(tmp_path / "x") == dir_blake3(base)
    # every pack the killed push finished is the resumed push's now: gc keeps them all
    assert gc_remote(spot.attach(a), grace=0)["deleted"] == 0
    assert pull(b, spot.attach(b))["versions"] == 0
    b.close()
    a.close()


def test_gc_removes_only_unreachable_packs_past_the_grace(spot: RemoteSpot, tmp_path: Path,
                                                         make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, _ = make_lineage(n_tensors=8, elems=1 << 15, children=0)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    r = spot.attach(a)
    push(a, r, pack_bytes=256 << 10)
    live = set(spot.sizes())
    r.store.put("packs/orphan.pack", b"left by a push that died before its index")
    r.store.put("packs/dead.pack", b"x" * 100)
    r.store.put("packs/dead.idx", b"not even a valid index")  # gc must not choke on it either
    with pytest.raises(CorruptData, match="index of pack dead is damaged"):
        gc_remote(r, grace=0)
    r.store.delete("packs/dead.idx")
    assert gc_remote(r)["deleted"] == 0  # younger than the grace: a push may be uploading them
    out = gc_remote(r, grace=0)
    assert out["deleted"] == 2 and set(spot.sizes()) == live
    clone(spot.url, tmp_path / "b", options=spot.options)


def test_a_stalled_server_times_out_with_one_line_and_a_restart_is_ridden_out(
        s3_alive, tmp_path: Path, make_lineage, cli) -> None:  # type: ignore[no-untyped-def]
    server = s3_alive
    bucket = server.make_bucket()
    base, _ = make_lineage(n_tensors=2, elems=1 << 14, children=0)
    store = tmp_path / "a"
    with Repo.init(store) as a:
        a.import_dir(base, "m")
        Transfer(a).set_remote("origin", {"url": f"s3://{bucket}/p", "endpoint": None})
    server.pause()
    try:
        t0 = time.monotonic()
        r = cli("push", "--timeout", "1", "--retries", "2", store=store, env=server.env())
        took = time.monotonic() - t0
    finally:
        server.resume()
    assert r.returncode == 1 and took < 20
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not answer" in lines[0] and bucket in lines[0], r.stderr
    assert "Traceback" not in r.stderr

    # a server that goes away and comes back while a push retries: the backoff rides it out
    server.kill()
    restarter = threading.Timer(1.0, server.start)
    restarter.start()
    a = Repo.open(store)
    try:
        out = push(a, Remote.of(a, "origin", server.options(attempts=8)))
    finally:
        restarter.join()
    assert out["versions"] == 1
    a.close()


def test_an_object_corrupted_on_the_server_is_caught_and_nothing_wrong_is_kept(
        spot: RemoteSpot, tmp_path: Path, make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, (ft,) = make_lineage(n_tensors=2, elems=1 << 16, children=1)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    push(a, spot.attach(a))
    clone(spot.url, tmp_path / "b", options=spot.options)
    clone(spot.url, tmp_path / "lazy", lazy=True, options=spot.options)
    a.import_dir(ft, "m")
    out = push(a, spot.attach(a))
    r = spot.attach(a)
    packs = sorted(o.key for o in r.store.list("packs/") if o.key.endswith(".pack"))
    assert out["packs"] == 2 and len(packs) == 4
    for key in packs:  # flip one byte in the middle of every pack: each record now fails its blake3
        data = bytearray(r.store.get(key) or b"")
        data[len(data) // 2] ^= 0xFF
        r.store.put(key, bytes(data))

    b = Repo.open(tmp_path / "b")
    with pytest.raises(CorruptData, match="corrupted") as err:
        pull(b, spot.attach(b))
    assert "\n" not in str(err.value)
    assert len(b.versions("m")) == 1  # nothing adopted
    assert b.maintenance().fsck().ok  # and nothing wrong stored
    b.close()

    with pytest.raises(CorruptData, match="corrupted"):
        clone(spot.url, tmp_path / "c", options=spot.options)
    assert not (tmp_path / "c").exists()  # a failed clone leaves no store

    lazy = Repo.open(tmp_path / "lazy")
    source = open_chunk_source(lazy, "origin", spot.options)
    keys = sorted(a.chunk_keys(a.resolve("m@1")))
    with pytest.raises(RemoteUnavailable, match="corrupted") as err2:
        source.fetch(keys)
    assert "origin" in str(err2.value) and keys[0].hex()[:16] in str(err2.value)
    lazy.close()
    a.close()


def test_two_pushers_at_once_one_is_refused_and_nothing_is_lost(spot: RemoteSpot, tmp_path: Path,
                                                                make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, (ft1, ft2) = make_lineage(n_tensors=2, elems=1 << 15, children=2)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    push(a, spot.attach(a))
    clone(spot.url, tmp_path / "b", options=spot.options)
    b = Repo.open(tmp_path / "b")
    a.import_dir(ft1, "m")
    b.import_dir(ft2, "m")
    planned = threading.Barrier(2, timeout=30)  # both have read the refs before either moves one
    results: dict[str, object] = {}

    def run(name: str, repo: Repo) -> None:
        try:
            results[name] = Pusher(repo, spot.attach(repo), on_total=lambda n: planned.wait()).run(
                parse_targets(repo, []))
        except ModelfsError as e:
            results[name] = e

    threads = [threading.Thread(target=run, args=(n, r)) for n, r in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [v for v in results.values() if isinstance(v, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], Conflict)
    assert str(errors[0]) == "remote has newer versions of m; pull first"
    winner, loser = (a, b) if not isinstance(results["a"], Exception) else (b, a)
    ref = spot.attach(a).ref("m")
    assert ref is not None and ref.versions == tuple(v.id for v in winner.versions("m"))
    assert len(loser.versions("m")) == 2  # the loser keeps its version
    with pytest.raises(Conflict, match="remote has newer versions of m; pull first"):
        push(loser, spot.attach(loser))  # and is refused again until it pulls
    a.close()
    b.close()


def test_wrong_credentials_and_a_missing_bucket_are_one_line_each(s3_server, tmp_path: Path,
                                                                   make_lineage, cli) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_server.make_bucket()
    base, _ = make_lineage(n_tensors=1, elems=1 << 12, children=0)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    bad = Options(endpoint=s3_server.endpoint, access_key=s3_server.access_key, secret_key="wrong", attempts=1)
    Transfer(a).set_remote("origin", {"url": f"s3://{bucket}/p", "endpoint": s3_server.endpoint})
    with pytest.raises(RemoteRefused, match="refused the credentials"):
        push(a, Remote.of(a, "origin", bad))
    Transfer(a).set_remote("gone", {"url": "s3://no-such-bucket-here/p", "endpoint": s3_server.endpoint})
    with pytest.raises(NotFound, match="bucket 'no-such-bucket-here' does not exist"):
        push(a, Remote.of(a, "gone", s3_server.options()))
    with pytest.raises(NotFound, match="does not exist"):
        clone(f"file://{tmp_path / 'nowhere'}", tmp_path / "c")
    assert not (tmp_path / "c").exists()
    a.close()
    assert s3_server.object_sizes(bucket) == {}  # nothing reached the bucket

    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    for args in (["push", "--retries", "1", "origin"], ["clone", f"s3://{bucket}/p", tmp_path / "d"]):
        r = cli(*args, store=tmp_path / "a", env=env)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "refused the credentials" in r.stderr
    assert not (tmp_path / "d").exists()


def test_the_server_listens_on_loopback_only(s3_server) -> None:  # type: ignore[no-untyped-def]
    addrs = s3_server.listening()
    assert addrs and all(a.startswith("127.0.0.1:") for a in addrs), addrs


@pytest.mark.parametrize("spot", ["file"], indirect=True)
def test_a_delta_uploaded_without_its_base_gets_its_base_on_the_next_push(spot: RemoteSpot, tmp_path: Path,
                                                                          make_lineage) -> None:  # type: ignore[no-untyped-def]
    """A killed push may leave a delta chunk's pack on the remote and not its base's pack."""
    from modelfs.remote.packs import KIND_CHUNKS, Record, build_pack, index_key, pack_key

    base, (ft,) = make_lineage(n_tensors=2, elems=1 << 16, children=1)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "base")
    a.import_dir(ft, "ft", parents=["base"])
    deltas = [k for k in a.chunk_keys(a.resolve("ft")) if a.chunk_record(k).bases]
    assert deltas
    r = spot.attach(a)
    with a.read_txn() as txn:
        raw = bytes(txn.get("chunks", deltas[0]))
    data, idx = build_pack(KIND_CHUNKS, [Record("chunks", deltas[0], raw, tuple(
        b for b, _ in a.chunk_record(deltas[0]).bases))])
    r.store.put(pack_key(idx.pack), data)
    r.store.put(index_key(idx.pack), idx.to_bytes())
    out = push(a, spot.attach(a))
    assert out["chunks"] == len(a.chunk_keys(a.resolve("ft"), a.resolve("base"))) - 1
    clone(spot.url, tmp_path / "b", options=spot.options)
    with Repo.open(tmp_path / "b") as b:
        b.export("ft", tmp_path / "x")
        assert b.maintenance().fsck().ok
    assert dir_blake3(tmp_path / "x") == dir_blake3(ft)
    a.close()


@pytest.mark.parametrize("spot", ["file"], indirect=True)
def test_a_damaged_ref_is_one_line_and_nothing_is_pulled(spot: RemoteSpot, tmp_path: Path,
                                                         make_lineage) -> None:  # type: ignore[no-untyped-def]
    base, _ = make_lineage(n_tensors=1, elems=1 << 12, children=0)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    r = spot.attach(a)
    push(a, r)
    b = Repo.init(tmp_path / "b")
    for garbage in (b"{not json", b'{"model": "m", "head": "x", "versions": []}'):
        r.store.put("refs/m.json", garbage)
        with pytest.raises(CorruptData, match="damaged") as err:
            pull(b, spot.attach(b))
        assert "\n" not in str(err.value)
        assert b.models() == []
    a.close()
    b.close()


@pytest.mark.parametrize("spot", ["file"], indirect=True)
def test_a_push_refuses_to_move_refs_onto_packs_a_concurrent_gc_removed(spot: RemoteSpot, tmp_path: Path,
                                                                        make_lineage) -> None:  # type: ignore[no-untyped-def]
    """A killed push's packs are no ref's; a push that resumes counts on them, and a gc past
    their grace may remove them meanwhile: the push must not move a ref onto them."""
    base, _ = make_lineage(n_tensors=20, elems=1 << 15, children=0)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")

    def abort() -> None:
        raise Abort()

    _push_until(a, spot.attach(a), 2, abort)
    with pytest.raises(Conflict, match="was removed while it ran .*push again") as err:
        Pusher(a, spot.attach(a), pack_bytes=256 << 10,
               on_total=lambda n: gc_remote(spot.attach(a), grace=0)).run(parse_targets(a, []))
    assert "\n" not in str(err.value)
    assert not any(k.startswith("refs/") for k in spot.sizes())  # no ref onto missing packs
    push(a, spot.attach(a), pack_bytes=256 << 10)
    clone(spot.url, tmp_path / "b", options=spot.options)
    with Repo.open(tmp_path / "b") as b:
        b.export("m", tmp_path / "x")
    assert dir_blake3(tmp_path / "x") == dir_blake3(base)
    a.close()

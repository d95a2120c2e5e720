"""Snapshot-on-write, the synchronous core: heads, staging files, store ops, the commit rule.

All over a real repo on the in-memory store and real staging files in a tmp directory.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from repohelp import commit, names, walk

from modelfs.errors import Conflict
from modelfs.fs.draftsync import StoreOp, apply_op, plan_recovery, stage_closed
from modelfs.fs.heads import Head, HeadError
from modelfs.fs.headwrites import HeadWrites
from modelfs.fs.nodes import GoneKey
from modelfs.fs.settle import Settler
from modelfs.fs.staged import copy_up
from modelfs.fs.staging import StagingArea
from modelfs.fs.tree import ROOT_INO, FsError, Kind, Tree
from modelfs.lineage import FileEntry
from modelfs.repo import Repo
from modelfs.store import MemoryStore

BASE = {"config.json": b'{"a": 1}\n', "model.bin": bytes(range(256)) * 64,
        "sub/x.txt": b"x" * 100}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    r = Repo.init(store=MemoryStore())
    commit(r, tmp_path, "m", BASE)
    yield r
    r.close()


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[StagingArea]:
    s = StagingArea(tmp_path / "staging")
    yield s
    s.close()


@pytest.fixture
def tree(repo: Repo, staging: StagingArea) -> Tree:
    return Tree(repo, staging=staging, refresh_interval=0.0)


@pytest.fixture
def writes(tree: Tree) -> HeadWrites:
    return HeadWrites(tree)




def errno_of(fn: object, *args: object) -> int:
    with pytest.raises((FsError, HeadError)) as e:
        fn(*args)  # type: ignore[operator]
    return e.value.errno  # type: ignore[union-attr]


def entry(tag: int, size: int = 10) -> FileEntry:
    return FileEntry(bytes([tag]) * 32, size, "blob")


# ---- Head: the namespace rules of a local disk ---------------------------------------------

def test_head_namespace_rules() -> None:
    h = Head("m", None, {"a": entry(1), "d/b": entry(2), "d/e/c": entry(3)})
    assert h.listing("") == ["a", "d"] and h.listing("d") == ["b", "e"]
    assert h.kind("d/e") == "dir" and h.kind("a") == "file" and h.kind("zz") is None
    assert errno_of(h.put, "nope/x", entry(4)) == errno.ENOENT
    assert errno_of(h.put, "a/x", entry(4)) == errno.ENOTDIR
    assert errno_of(h.put, "d", entry(4)) == errno.EISDIR
    assert errno_of(h.mkdir, "a") == errno.EEXIST
    assert errno_of(h.rmdir, "d") == errno.ENOTEMPTY
    assert errno_of(h.rmdir, "a") == errno.ENOTDIR
    assert errno_of(h.remove, "d") == errno.EISDIR
    assert errno_of(h.rename, "d", "d/e/x") == errno.EINVAL
    assert errno_of(h.rename, "a", "d") == errno.EISDIR
    assert errno_of(h.rename, "d", "a") == errno.ENOTDIR
    assert errno_of(h.rename, "a", "d/b", True) == errno.EEXIST
    h.mkdir("full")
    h.put("full/f", entry(5))
    assert errno_of(h.rename, "d", "full") == errno.ENOTEMPTY
    h.remove("d/e/c")
    assert h.kind("d/e") == "dir"  # a directory stays when its last file goes
    h.put("d/e/new", entry(7))
    h.mkdir("d/e/dir")
    kept = {d: dict(names) for d, names in h.index().items()}  # updated in place ...
    h._index = None
    assert h.index() == kept  # ... equals one built from scratch


def test_head_renames_move_files_and_directories() -> None:
    h = Head("m", None, {"a": entry(1), "d/b": entry(2), "d/e/c": entry(3)})
    r = h.rename("a", "d/b")
    assert r.replaced == entry(2) and r.files == [("a", "d/b")]
    assert h.files == {"d/b": entry(1), "d/e/c": entry(3)}
    h.mkdir("empty")
    r = h.rename("d", "empty")
    assert r.replaced_dir and sorted(r.files) == [("d/b", "empty/b"), ("d/e/c", "empty/e/c")]
    assert ("d/e", "empty/e") in r.dirs
    assert h.listing("") == ["empty"] and h.listing("empty/e") == ["c"]


def test_reconcile_keeps_staged_files(staging: StagingArea) -> None:
    st = staging.new("m", "new", 0o644)
    h = Head("m", "v1", {"a": entry(1), "b": entry(2), "new": st})
    changed = h.reconcile({"a": entry(1), "b": entry(5), "c": entry(6)}, "v2")
    assert changed == [("b", entry(2)), ("c", None)]
    assert h.files["new"] is st and h.files["c"] == entry(6) and h.version == "v2"


# ---- staging files -----------------------------------------------------------------------------

def test_lazy_copy_up_and_truncate(repo: Repo, staging: StagingArea) -> None:
    e = repo.resolve("m").files["model.bin"]
    st = staging.new("m", "model.bin", 0o644, base=e, size=e.size)
    assert not st.materialized and not st.changed
    st.truncate(0)  # O_TRUNC: the old bytes are never copied
    assert st.materialized and st.size == 0 and st.changed
    st.pwrite(b"abc", 5)
    assert st.pread(100, 0) == bytes(5) + b"abc"

    st2 = staging.new("m", "model.bin", 0o600, base=e, size=e.size)
    st2.truncate(1000)  # before the copy-up: only the size moves ...
    st2.truncate(3000)  # ... and growing again pads with zeros, as on a local disk
    assert not st2.materialized and (st2.keep, st2.size) == (1000, 3000)
    copy_up(st2, repo.iter_file)
    assert st2.materialized
    assert st2.pread(5000, 0) == BASE["model.bin"][:1000] + bytes(2000)
    assert os.stat(st2.file).st_mode & 0o777 == 0o600

    st.freeze()
    st3 = staging.new("m", "model.bin", 0o644, base=st, size=st.size)
    copy_up(st3, repo.iter_file)  # from another staging file (copy_file_range)
    assert st3.pread(100, 0) == bytes(5) + b"abc"


def test_staging_of_dead_mounts_is_swept_live_ones_kept(tmp_path: Path,
                                                        staging: StagingArea) -> None:
    root = staging.root
    running_merge = root / "ops-abc123"  # ops' temporary directory: not a mount's
    (running_merge / "sub").mkdir(parents=True)
    (running_merge / "model.safetensors").write_bytes(b"being merged")
    dead = root / "mount-1-dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "00000001").write_bytes(b"half written")
    (dead / "00000002").write_bytes(b"closed")
    # a live mount: another process holds the lock of its directory
    live = root / "mount-2-live"
    live.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(live / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        (live / "00000001").write_bytes(b"being written")
        assert staging.owned_by_live_mount(live / "00000001")
        assert not staging.owned_by_live_mount(dead / "00000002")
        assert staging.owned_by_live_mount(staging.dir / "x")
        removed = staging.sweep(keep={dead / "00000002"})
        assert removed == [dead / "00000001"]
        assert (live / "00000001").exists() and (dead / "00000002").exists()
        (dead / "00000002").unlink()
        staging.sweep(keep=set())
        assert not dead.exists() and live.exists()
        assert (running_merge / "model.safetensors").exists()
    finally:
        holder.kill()
        holder.wait()


# ---- the draft in the store follows the namespace ---------------------------------------

def test_store_ops_follow_what_the_store_shows(repo: Repo, tmp_path: Path) -> None:
    d = repo.drafts()
    f = tmp_path / "closed"
    f.write_bytes(b"closed file")
    d.record_staged("m", ".tmp1", f)
    apply_op(d, StoreOp("rename", "m", ".tmp1", "config.json"))  # moves the pointer
    assert d.get("m").staged == {"config.json": f}  # type: ignore[union-attr]
    apply_op(d, StoreOp("rename", "m", "not-in-store", "model.bin"))  # a new file over it
    assert "model.bin" not in d.view("m")
    apply_op(d, StoreOp("remove", "m", "never-closed"))  # nothing in the store: nothing to do
    got = stage_closed(d, "m", f)
    assert got is not None and got[0] == "config.json"
    assert not f.exists()  # stored: the staging file goes
    assert d.view("m")["config.json"].size == len(b"closed file")
    g = tmp_path / "gone"
    g.write_bytes(b"x")
    d.record_staged("m", "tmp2", g)
    apply_op(d, StoreOp("remove", "m", "tmp2"))  # a closed, unstored file can be removed
    assert stage_closed(d, "m", g) is None and not g.exists()
    v = d.commit("m")
    assert v is not None and sorted(v.files) == ["config.json", "sub/x.txt"]


def test_recovery_plan(repo: Repo, tmp_path: Path, staging: StagingArea) -> None:
    d = repo.drafts()
    dead = staging.root / "mount-9-dead"
    dead.mkdir()
    f = dead / "00000001"
    f.write_bytes(b"closed before the crash")
    (dead / "00000002").write_bytes(b"half")
    d.record_staged("m", "a.txt", f)
    d.derive("m", "clone")  # a derive with no files yet waits
    plan = plan_recovery(d, staging)
    assert plan.dead == {"m": [f]} and plan.commit == ["m"]
    assert plan.removed == [dead / "00000002"]


# ---- when to commit ----------------------------------------------------------------------------

def test_settler_waits_for_quiet_closed_and_stored() -> None:
    now = [100.0]
    s = Settler(1.0, clock=lambda: now[0])
    s.touch("m", dirty=True)
    assert s.due() == [] and s.next_check() == pytest.approx(1.0)
    now[0] += 1.0
    assert s.due() == ["m"]
    s.of("m").writers = 1
    assert s.due() == [] and s.next_check() is None
    s.of("m").writers = 0
    s.of("m").storing = 1
    assert s.due() == []
    s.of("m").storing = 0
    s.committed("m")
    assert s.due() == []
    s.touch("m", dirty=True)
    for _ in range(11):  # looked at, not changed, more often than the settle time
        now[0] += 0.9
        s.touch("m", change=False)
        assert s.due() == []
    now[0] += 0.9  # ... yet it commits once the last change is `patience` old
    s.touch("m", change=False)
    assert s.patience(s.of("m")) == 10.0 and s.due() == ["m"]
    s.committed("m")
    s.touch("m", dirty=True)
    s.of("m").urgent = True
    assert s.due() == ["m"]
    assert s.failed("m") == 5.0 and s.due() == []
    now[0] += 5.0
    assert s.due() == ["m"]


# ---- the writable tree ---------------------------------------------------------------------------

def test_create_write_and_attributes(tree: Tree, writes: HeadWrites) -> None:
    head = walk(tree, "/m")
    assert tree.is_writable(head) and tree.is_writable(ROOT_INO)
    assert not tree.is_writable(walk(tree, "/m@1"))
    a, st = writes.create(head, "new.txt", 0o640)
    st.pwrite(b"hello", 0)
    assert tree.getattr(a.ino).size == 5 and tree.getattr(a.ino).mode & 0o777 == 0o640
    assert "new.txt" in names(tree, "/m")
    assert tree.content(a.ino) is st
    assert errno_of(writes.create, head, "new.txt", 0o644) == errno.EEXIST
    assert errno_of(writes.create, walk(tree, "/m@1"), "x", 0o644) == errno.EROFS
    assert errno_of(writes.create, ROOT_INO, "x", 0o644) == errno.EPERM
    assert errno_of(writes.open_write, walk(tree, "/m@1/config.json")) == errno.EROFS


def test_open_write_is_a_lazy_copy_shared_by_writers(tree: Tree, writes: HeadWrites) -> None:
    ino = walk(tree, "/m/model.bin")
    st = writes.open_write(ino)
    assert writes.open_write(ino) is st and not st.materialized
    assert tree.getattr(ino).size == len(BASE["model.bin"])
    st.freeze()  # closed: the next writer gets a copy of it
    st2 = writes.open_write(ino)
    assert st2 is not st and st2.base is st and not st.present


def test_rename_moves_the_inode_and_returns_store_ops(tree: Tree, writes: HeadWrites) -> None:
    head = walk(tree, "/m")
    a, st = writes.create(head, ".tmp1", 0o600)
    old_cfg = walk(tree, "/m/config.json")
    ops = writes.rename(head, ".tmp1", head, "config.json")
    assert ops == [StoreOp("rename", "m", ".tmp1", "config.json")]
    assert walk(tree, "/m/config.json") == a.ino and st.path == "config.json"
    assert isinstance(tree.node(old_cfg).key, GoneKey)  # replaced: open handles keep its bytes
    assert tree.getattr(old_cfg).size == len(BASE["config.json"])
    sub = walk(tree, "/m/sub")
    x = walk(tree, "/m/sub/x.txt")
    ops = writes.rename(head, "sub", head, "sub2")
    assert ops == [StoreOp("rename", "m", "sub/x.txt", "sub2/x.txt")]
    assert walk(tree, "/m/sub2") == sub and walk(tree, "/m/sub2/x.txt") == x
    assert tree.node(x).path == "sub2/x.txt"


def test_unlink_mkdir_rmdir_chmod(tree: Tree, writes: HeadWrites) -> None:
    head = walk(tree, "/m")
    x = walk(tree, "/m/sub/x.txt")
    assert writes.unlink(walk(tree, "/m/sub"), "x.txt") == [StoreOp("remove", "m", "sub/x.txt")]
    assert names(tree, "/m/sub") == []  # the directory stays, empty
    assert isinstance(tree.node(x).key, GoneKey)
    writes.rmdir(head, "sub")
    assert "sub" not in names(tree, "/m")
    writes.mkdir(head, "d", 0o700)
    assert tree.getattr(walk(tree, "/m/d")).mode & 0o777 == 0o700
    assert errno_of(writes.unlink, head, "nope") == errno.ENOENT
    ops = writes.chmod(walk(tree, "/m/config.json"), 0o600)
    assert ops[0].kind == "entry" and ops[0].entry is not None and ops[0].entry.mode == 0o600
    assert tree.getattr(walk(tree, "/m/config.json")).mode & 0o777 == 0o600


def test_new_models_at_the_root(tree: Tree, writes: HeadWrites, repo: Repo) -> None:
    a = writes.mkdir(ROOT_INO, "fresh", 0o755)
    assert tree.node(a.ino).kind is Kind.HEAD and "fresh" in names(tree, "/")
    assert names(tree, "/fresh") == []
    assert errno_of(writes.mkdir, ROOT_INO, "bad@name", 0o755) == errno.EINVAL
    assert errno_of(writes.mkdir, ROOT_INO, ".hidden", 0o755) == errno.EINVAL
    assert errno_of(writes.mkdir, ROOT_INO, "m", 0o755) == errno.EEXIST
    assert errno_of(writes.rmdir, ROOT_INO, "m") == errno.EPERM
    writes.rmdir(ROOT_INO, "fresh")  # made here and still empty: it may go again
    assert "fresh" not in names(tree, "/")
    assert errno_of(writes.rename, walk(tree, "/m"), "config.json", walk(tree, "/m@1"),
                    "c") == errno.EROFS
    writes.mkdir(ROOT_INO, "other", 0o755)
    assert errno_of(writes.rename, walk(tree, "/m"), "config.json", walk(tree, "/other"),
                    "c") == errno.EXDEV


def test_a_derived_model_shows_its_parent_at_once(tree: Tree, repo: Repo) -> None:
    repo.drafts().derive("m@1", "clone")
    assert "clone" in names(tree, "/")
    assert names(tree, "/clone") == ["config.json", "model.bin", "sub"]
    assert "user.modelfs.version" not in tree.xattrs(walk(tree, "/clone"))


def test_an_outside_commit_reconciles_but_keeps_staged_files(tree: Tree, writes: HeadWrites, repo: Repo,
                                                             tmp_path: Path) -> None:
    head = walk(tree, "/m")
    _, st = writes.create(head, "mine.txt", 0o644)
    cfg = walk(tree, "/m/config.json")
    tree.take_pending()
    commit(repo, tmp_path, "m", {"config.json": b"changed", "model.bin": BASE["model.bin"]})
    inv = tree.refresh(force=True)
    assert (head, "config.json") in inv.entries and (head, "model.bin") not in inv.entries
    assert walk(tree, "/m/config.json") != cfg
    assert names(tree, "/m") == ["config.json", "mine.txt", "model.bin"]  # sub/x.txt went
    assert tree.content(walk(tree, "/m/mine.txt")) is st


# ---- concurrent use of one draft (issue 8) ------------------------------------------------------

def test_recover_leaves_a_live_mounts_pointers_and_drops_only_its_own_record(
        repo: Repo, tmp_path: Path, staging: StagingArea) -> None:
    d = repo.drafts()
    live = staging.dir / "00000001"  # this mount's: flock'd while it runs
    live.write_bytes(b"being stored by the mount")
    d.record_staged("m", "live.txt", live)
    assert d.recover("m") == []  # a CLI never touches a running mount's files
    assert d.get("m").staged == {"live.txt": live} and live.exists()  # type: ignore[union-attr]
    assert d.recover("m", own=staging.dir) == ["m/live.txt"]  # the mount retries its own
    dead = staging.root / "mount-1-dead"
    dead.mkdir()
    gone = dead / "00000001"
    d.record_staged("m", "b.txt", gone)
    # another process stored b.txt between our snapshot and our look: its record stands
    d.stage_entry("m", "b.txt", d.view("m")["live.txt"])
    with pytest.raises(FileNotFoundError):
        d.stage_file("m", "b.txt", gone, expect_staged=gone)
    d._drop_pointer("m", "b.txt", gone)  # noqa: SLF001 (the step recover takes)
    assert d.view("m")["b.txt"] == d.view("m")["live.txt"]
    d.record_staged("m", "c.txt", gone)  # really gone, and still pointed at: dropped
    assert d.recover("m") == []
    assert "c.txt" not in d.view("m") and "c.txt" not in d.get("m").staged  # type: ignore[union-attr]


def test_a_held_draft_commits_only_when_forced(repo: Repo, tmp_path: Path) -> None:
    d = repo.drafts()
    f = tmp_path / "cfg"
    f.write_bytes(b'{"step": 2}\n')
    d.stage_file("m", "config.json", f)
    d.hold("m", "model.bin", "write failed (No space left on device)")
    assert d.get("m").held == {"model.bin": "write failed (No space left on device)"}  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="a save into it failed.*model.bin.*--force"):
        d.commit("m")
    assert repo.model("m").head == repo.resolve("m@1").id  # nothing committed
    d.release_hold("m", "other")  # not held: nothing changes
    d.hold("m", "x", "y")
    d.release_hold("m", "x")
    assert set(d.get("m").held) == {"model.bin"}  # type: ignore[union-attr]
    v = d.commit("m", force=True)
    assert v is not None and v.ref == "m@2" and d.get("m") is None
    assert b"".join(repo.iter_file(v.files["model.bin"])) == BASE["model.bin"]  # old weights stay


def test_discard_drops_the_draft_and_dead_staging_files(repo: Repo, staging: StagingArea) -> None:
    d = repo.drafts()
    dead = staging.root / "mount-3-dead"
    dead.mkdir()
    f = dead / "00000001"
    f.write_bytes(b"closed")
    d.record_staged("m", "a.txt", f)
    d.hold("m", "b.bin", "failed")
    assert d.discard("m") == ["a.txt", "b.bin"]
    assert d.get("m") is None and not f.exists()
    assert d.discard("m") == []


def test_plan_recovery_stores_but_does_not_commit_a_held_draft(
        repo: Repo, staging: StagingArea) -> None:
    d = repo.drafts()
    dead = staging.root / "mount-4-dead"
    dead.mkdir()
    f = dead / "00000001"
    f.write_bytes(b"closed before the crash")
    d.record_staged("m", "a.txt", f)
    d.hold("m", "model.bin", "write failed")
    plan = plan_recovery(d, staging)
    assert plan.dead == {"m": [f]} and plan.commit == [] and plan.held == {
        "m": {"model.bin": "write failed"}}


def test_settler_never_commits_a_held_model() -> None:
    now = [0.0]
    s = Settler(1.0, clock=lambda: now[0])
    s.touch("m", dirty=True)
    s.of("m").held["model.bin"] = "write failed"
    now[0] += 100.0
    assert s.due() == [] and s.next_check() is None
    s.of("m").held.clear()
    assert s.due() == ["m"]


def test_a_models_own_settle_time_is_read_when_its_burst_starts() -> None:
    now = [0.0]
    asked: list[str] = []
    table = {"slow": 5.0}

    def settle_of(model: str) -> float | None:
        asked.append(model)
        return table.get(model)

    s = Settler(1.0, clock=lambda: now[0], settle_of=settle_of)
    s.touch("slow", dirty=True)
    s.touch("fast", dirty=True)
    s.touch("slow", dirty=True)  # the same burst: not asked again
    assert asked == ["slow", "fast"]
    now[0] += 1.0
    assert s.due() == ["fast"]  # the mount's 1 s
    now[0] += 4.0
    assert s.due() == ["fast", "slow"]  # its own 5 s
    assert s.patience(s.of("slow")) == 50.0
    table["slow"] = 0.1  # changed meanwhile: taken at the next burst
    s.committed("slow")
    s.touch("slow", dirty=True)
    now[0] += 0.1
    assert "slow" in s.due() and asked == ["slow", "fast", "slow"]

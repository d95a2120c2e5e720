"""The mount's synchronous core: handles, what a close does, staged reads, holds (no FUSE)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from repohelp import commit, walk

from modelfs.fs.config import MountConfig
from modelfs.fs.core import BaseRead, CloseAction, MountCore, OpenFile
from modelfs.fs.nodes import FsError
from modelfs.fs.staging import StagingArea
from modelfs.repo import FileEntry, Repo
from modelfs.store import MemoryStore

FILES = {"config.json": b'{"a": 1}\n', "model.bin": bytes(range(256)) * 16}


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MountCore]:
    repo = Repo.init(store=MemoryStore())
    commit(repo, tmp_path, "m", FILES)
    staging = StagingArea(tmp_path / "staging")
    yield MountCore(repo, MountConfig(settle=0.5, refresh_interval=0.0), staging)
    staging.close()
    repo.close()


def test_writer_counts_follow_handles_and_the_last_close_records(core: MountCore) -> None:
    ino = walk(core.tree, "/m/config.json")
    fh1, st = core.open_for_writing(ino)
    fh2, st2 = core.open_for_writing(ino)
    assert st2 is st and st.writers == 2 and core.settler.of("m").writers == 2
    assert core.flush_needs_record(fh1) is None  # another writer still has it open
    assert core.release(fh1) is None
    st.truncate(3)
    assert core.flush_needs_record(fh2) == (st, ino)
    assert core.release(fh2) is st and core.settler.of("m").writers == 0
    assert core.last_close(st) is CloseAction.RECORD
    with pytest.raises(FsError) as e:
        core.handle(fh2)
    assert e.value.errno == errno.EBADF


def test_an_unchanged_or_removed_file_is_not_kept(core: MountCore) -> None:
    ino = walk(core.tree, "/m/config.json")
    fh, st = core.open_for_writing(ino)
    core.release(fh)
    assert core.last_close(st) is CloseAction.NONE and not st.file.exists()
    fh, a = core.create(walk(core.tree, "/m"), "new.txt", 0o644)
    new = core.handle(fh).staged
    assert new is not None
    core.writes.unlink(walk(core.tree, "/m"), "new.txt")
    core.release(fh)
    assert core.last_close(new) is CloseAction.NONE and not new.file.exists()


def test_a_broken_file_is_dropped_and_holds_the_model(core: MountCore) -> None:
    ino = walk(core.tree, "/m/model.bin")
    fh, st = core.open_for_writing(ino)
    st.truncate(0)
    st.broken = errno.ENOSPC
    core.release(fh)
    assert core.last_close(st) is CloseAction.DROP
    core.drop(st, "model.bin: write failed")
    assert core.settler.of("m").held == {"model.bin": "model.bin: write failed"}
    assert isinstance(core.tree.need_head("m").files["model.bin"], FileEntry)  # the old file
    assert core.settler.due() == [] and not core.may_commit("m", force=True)
    fh, st = core.open_for_writing(walk(core.tree, "/m/model.bin"))  # saved whole again
    st.truncate(0)
    st.pwrite(b"new weights", 0)
    core.release(fh)
    assert core.recorded(st, st.gen) is True and core.settler.of("m").held == {}


def test_a_read_before_the_copy_up_comes_from_the_base(core: MountCore) -> None:
    fh, st = core.open_for_writing(walk(core.tree, "/m/model.bin"))
    st.truncate(100)  # keeps 100 bytes of the base, not copied yet
    st.truncate(200)  # ... and 100 zeros after them
    got = core.read_staged(st, 50, 100)
    assert got == BaseRead(st.base, 50, 50, 100)  # type: ignore[arg-type]
    assert core.read_staged(st, 500, 10) == b""
    core.release(fh)


def test_handles_of_generated_files_and_directories(core: MountCore) -> None:
    info = walk(core.tree, "/.lineage/m@1/info.json")
    h = core.open_for_reading(info)
    assert isinstance(h, OpenFile) and b'"ref": "m@1"' in h.data
    assert isinstance(core.open_for_reading(walk(core.tree, "/m@1/config.json")), FileEntry)
    d = core.opendir(walk(core.tree, "/m"))
    assert [n for n, _ in core.listing(d)] == [b"config.json", b"model.bin"]
    assert core.dir_model(d) == "m"
    core.releasedir(d)
    with pytest.raises(FsError):
        core.listing(d)
    with pytest.raises(FsError) as e:
        core.open_for_writing(walk(core.tree, "/m@1/config.json"))
    assert e.value.errno == errno.EROFS

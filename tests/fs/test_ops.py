"""The pyfuse3 adapter's handlers, called directly under trio (no kernel involved).

The repo is real (the in-memory store); staging files are real files in a tmp directory.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
from repohelp import commit

from modelfs.fs.ops import Operations  # noqa: E402
from modelfs.fs.staging import StagingArea  # noqa: E402
from modelfs.fs.tree import ROOT_INO  # noqa: E402
from modelfs.repo import Repo
from modelfs.store import MemoryStore

MiB = 1 << 20
SIZE = 24 * MiB
BIG = os.urandom(SIZE)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MemoryStore]:
    s = MemoryStore()
    with Repo.init(store=s) as r:
        commit(r, tmp_path, "m", {"big.bin": BIG, "small.txt": b"small"})
    yield s


@pytest.fixture
def ops(store: MemoryStore) -> Operations:
    """Read-only (no staging area), with a cold chunk cache."""
    return Operations(Repo(store), window=8 * MiB, trigger=2 * MiB)


@pytest.fixture
def wops(store: MemoryStore, tmp_path: Path) -> Iterator[Operations]:
    """Writable: a staging area and a short settle time."""
    staging = StagingArea(tmp_path / "staging")
    yield Operations(Repo(store), staging=staging, settle=0.3)
    staging.close()


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


async def _lookup(ops: Operations, *names: str) -> int:
    ino = ROOT_INO
    for n in names:
        ino = (await ops.lookup(ino, n.encode(), None)).st_ino
    return ino


async def _errno(call: Awaitable[Any]) -> int:
    with pytest.raises(pyfuse3.FUSEError) as e:
        await call
    return int(e.value.errno)


def test_errors_become_errnos(ops: Operations, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        assert await _errno(ops.lookup(ROOT_INO, b"nope", None)) == errno.ENOENT
        ino = await _lookup(ops, "m@1", "small.txt")
        assert await _errno(ops.open(ino, os.O_WRONLY, None)) == errno.EROFS
        for call in (ops.mkdir(ROOT_INO, b"x", 0o755, None), ops.unlink(ROOT_INO, b"m", None),
                     ops.create(ROOT_INO, b"x", 0o644, os.O_WRONLY, None)):
            assert await _errno(call) == errno.EROFS
        assert await _errno(ops.getxattr(ino, b"user.none", None)) == pyfuse3.ENOATTR

        def broken(*a: object) -> None:
            raise RuntimeError("store damaged")

        ops.tree.getattr = broken  # type: ignore[method-assign]
        assert await _errno(ops.getattr(ino, None)) == errno.EIO

    with caplog.at_level(logging.ERROR, logger="modelfs.fs"):
        run(main)
    assert "store damaged" in caplog.text and "getattr" in caplog.text


def test_reads_decode_in_threads_and_stream_ahead(ops: Operations,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()
    real_get = ops.repo.cache.get

    def get(key: bytes) -> bytes:
        threads.add(threading.current_thread().name)
        return real_get(key)

    monkeypatch.setattr(ops.repo.cache, "get", get)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            ino = await _lookup(ops, "m", "big.bin")
            info = await ops.open(ino, os.O_RDONLY, None)
            assert not info.direct_io
            fh = info.fh
            got = bytearray()
            for off in range(0, SIZE, MiB):
                got += await ops.read(fh, off, MiB)
                await trio.sleep(0.002)  # let prefetches run as a slow reader would
            assert await ops.read(fh, SIZE, MiB) == b""
            await ops.release(fh)
        assert bytes(got) == BIG
        s = ops.stats
        assert s.reads == 24 and s.read_bytes == SIZE
        assert s.prefetches > 0 and s.thread_reads >= 1
        assert s.cached_reads > s.thread_reads  # the stream was served from decoded chunks
        assert threads and threading.main_thread().name not in threads  # never on the loop

    run(main)


def test_generated_files_and_xattrs(ops: Operations) -> None:
    async def main() -> None:
        ino = await _lookup(ops, ".lineage", "m@1", "info.json")
        attr = await ops.getattr(ino, None)
        fh = (await ops.open(ino, os.O_RDONLY, None)).fh
        data = await ops.read(fh, 0, 1 << 16)
        assert len(data) == attr.st_size and data.startswith(b"{")
        names = await ops.listxattr(ROOT_INO, None)
        assert b"user.modelfs.counters" in names
        assert int(await ops.getxattr(ROOT_INO, b"user.modelfs.pid", None)) == os.getpid()

    run(main)


# ---- writes -----------------------------------------------------------------------------------

async def _with_loops(ops: Operations, body: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(ops.commit_loop)
        await body()
        await ops.shutdown()
        nursery.cancel_scope.cancel()


async def _write_file(ops: Operations, parent: int, name: str, data: bytes) -> int:
    info, attr = await ops.create(parent, name.encode(), 0o644, os.O_WRONLY, None)
    for off in range(0, len(data), 128 << 10):
        assert await ops.write(info.fh, off, data[off:off + (128 << 10)]) == min(
            128 << 10, len(data) - off)
    await ops.flush(info.fh)
    await ops.release(info.fh)
    return int(attr.st_ino)


async def _wait_version(ops: Operations, model: str, number: int) -> None:
    """Until the head directory shows version ``number`` (the mount has taken the commit)."""
    head = await _lookup(ops, model)
    with trio.move_on_after(10):
        while (ops.tree.xattrs(head).get("user.modelfs.ref") != f"{model}@{number}".encode()
               or ops.settler.of(model).dirty):
            await trio.sleep(0.01)
    assert ops.tree.xattrs(head).get("user.modelfs.ref") == f"{model}@{number}".encode(), (
        ops.settler.of(model), ops.settler.next_check(), ops.stats)
    assert not ops.settler.of(model).dirty


def test_a_burst_of_writes_becomes_one_version(wops: Operations, store: MemoryStore) -> None:
    async def body() -> None:
        head = await _lookup(wops, "m")
        await _write_file(wops, head, "config.json", b'{"x": 1}\n')
        await _write_file(wops, head, ".tmpA", b"new weights" * 1000)
        await wops.rename(head, b".tmpA", head, b"weights.bin", 0, None)
        await wops.unlink(head, b"small.txt", None)
        await _wait_version(wops, "m", 2)

    run(lambda: _with_loops(wops, body))
    repo = Repo(store)
    v = repo.resolve("m")
    assert v.ref == "m@2" and sorted(v.files) == ["big.bin", "config.json", "weights.bin"]
    assert b"".join(repo.iter_file(v.files["weights.bin"])) == b"new weights" * 1000
    assert repo.drafts().models() == []


def test_overwrite_in_place_and_truncate(wops: Operations, store: MemoryStore) -> None:
    async def body() -> None:
        ino = await _lookup(wops, "m", "big.bin")
        reader = (await wops.open(ino, os.O_RDONLY, None)).fh  # opened before the change
        fh = (await wops.open(ino, os.O_RDWR, None)).fh  # no O_TRUNC: copy-up at first write
        await wops.write(fh, 10, b"XYZ")
        assert await wops.read(fh, 8, 7) == BIG[8:10] + b"XYZ" + BIG[13:15]
        await wops.release(fh)
        assert await wops.read(reader, 8, 7) == BIG[8:15]  # the old handle keeps old bytes
        await wops.release(reader)
        small = await _lookup(wops, "m", "small.txt")
        fh = (await wops.open(small, os.O_WRONLY | os.O_TRUNC, None)).fh
        await wops.write(fh, 0, b"now")
        await wops.release(fh)
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 2
        fields = SimpleNamespace(update_size=True, update_mode=False, update_mtime=False)
        await wops.setattr(small, attr, fields, None, None)  # truncate(2) by path
        await _wait_version(wops, "m", 2)
        assert wops.stats.copy_ups == 2  # big.bin at its write, small.txt (2 bytes) at close

    run(lambda: _with_loops(wops, body))
    repo = Repo(store)
    v = repo.resolve("m")
    assert b"".join(repo.iter_file(v.files["small.txt"])) == b"no"
    big = b"".join(repo.iter_file(v.files["big.bin"]))
    assert big == BIG[:10] + b"XYZ" + BIG[13:]


def test_writes_outside_heads(wops: Operations) -> None:
    async def main() -> None:
        v1 = await _lookup(wops, "m@1")
        assert await _errno(wops.create(v1, b"x", 0o644, os.O_WRONLY, None)) == errno.EROFS
        f = await _lookup(wops, "m@1", "small.txt")
        assert await _errno(wops.open(f, os.O_WRONLY, None)) == errno.EROFS
        assert await _errno(wops.create(ROOT_INO, b"x", 0o644, os.O_WRONLY, None)) == errno.EPERM
        assert await _errno(wops.mkdir(ROOT_INO, b"no@pe", 0o755, None)) == errno.EINVAL
        head = await _lookup(wops, "m")
        assert await _errno(wops.symlink(head, b"l", b"x", None)) == errno.EPERM
        assert await _errno(wops.setxattr(head, b"user.x", b"1", None)) == errno.ENOTSUP

    run(main)

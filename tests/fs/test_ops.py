"""The pyfuse3 adapter's handlers, called directly under trio (no kernel involved)."""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Any

import numpy as np
import pytest
from fakerepo import FakeRepo, entry

pyfuse3 = pytest.importorskip("pyfuse3")
trio = pytest.importorskip("trio")

from modelfs.fs.ops import Operations  # noqa: E402
from modelfs.fs.tree import ROOT_INO  # noqa: E402
from modelfs.lineage import FileEntry  # noqa: E402

MiB = 1 << 20
SIZE = 24 * MiB


class FakeReader:
    """Bytes that are 'decoded' in 2 MiB chunks: read_cached answers only decoded chunks."""

    chunk = 2 * MiB

    def __init__(self, size: int) -> None:
        self.size = size
        self.decoded: set[int] = set()
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def _data(self, offset: int, size: int) -> bytes:
        return (np.arange(offset, offset + size, dtype=np.int64) % 251).astype(np.uint8).tobytes()

    def _chunks(self, offset: int, size: int) -> range:
        return range(offset // self.chunk, (offset + size - 1) // self.chunk + 1)

    def read(self, offset: int, size: int) -> bytes:
        self.threads.add(threading.current_thread().name)
        self.prefetch(offset, size)
        return self._data(offset, size)

    def read_cached(self, offset: int, size: int) -> bytes | None:
        with self.lock:
            if all(c in self.decoded for c in self._chunks(offset, size)):
                return self._data(offset, size)
        return None

    def prefetch(self, offset: int, size: int) -> None:
        with self.lock:
            self.decoded.update(self._chunks(offset, size))


class ReaderRepo(FakeRepo):
    def __init__(self) -> None:
        super().__init__()
        self.readers: dict[bytes, FakeReader] = {}

    def open_file(self, e: FileEntry) -> FakeReader:
        return self.readers.setdefault(e.key, FakeReader(e.size))


@pytest.fixture
def ops() -> Operations:
    repo = ReaderRepo()
    repo.commit("m", {"big.bin": entry("big", SIZE), "small.txt": entry("s", 5)})
    return Operations(repo, window=8 * MiB, trigger=2 * MiB)  # type: ignore[arg-type]


def run(fn: Any, *args: Any) -> Any:
    return trio.run(fn, *args)


async def _lookup(ops: Operations, *names: str) -> int:
    ino = ROOT_INO
    for n in names:
        ino = (await ops.lookup(ino, n.encode(), None)).st_ino
    return ino


def test_errors_become_errnos(ops: Operations, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(ROOT_INO, b"nope", None)
        assert e.value.errno == errno.ENOENT
        ino = await _lookup(ops, "m@1", "small.txt")
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(ino, os.O_WRONLY, None)
        assert e.value.errno == errno.EROFS
        for call in (ops.mkdir(ROOT_INO, b"x", 0o755, None), ops.unlink(ROOT_INO, b"m", None),
                     ops.create(ROOT_INO, b"x", 0o644, os.O_WRONLY, None)):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await call
            assert e.value.errno == errno.EROFS
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getxattr(ino, b"user.none", None)
        assert e.value.errno == pyfuse3.ENOATTR

        def broken(*a: object) -> None:
            raise RuntimeError("store damaged")

        ops.tree.getattr = broken  # type: ignore[method-assign]
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getattr(ino, None)
        assert e.value.errno == errno.EIO

    with caplog.at_level(logging.ERROR, logger="modelfs.fs"):
        run(main)
    assert "store damaged" in caplog.text and "getattr" in caplog.text


def test_reads_decode_in_threads_and_stream_ahead(ops: Operations) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            ino = await _lookup(ops, "m", "big.bin")
            info = await ops.open(ino, os.O_RDONLY, None)
            assert info.keep_cache and not info.direct_io
            fh = info.fh
            got = bytearray()
            for off in range(0, SIZE, MiB):
                got += await ops.read(fh, off, MiB)
                await trio.sleep(0.001)  # let prefetches run as a slow reader would
            assert await ops.read(fh, SIZE, MiB) == b""
            await ops.release(fh)
        assert len(got) == SIZE
        reader = ops.repo.readers[entry("big", SIZE).key]  # type: ignore[attr-defined]
        assert bytes(got) == reader._data(0, SIZE)
        s = ops.stats
        assert s.reads == 24 and s.read_bytes == SIZE
        assert s.prefetches > 0 and s.thread_reads >= 1
        assert s.cached_reads > s.thread_reads  # the stream was served from decoded chunks
        assert threading.main_thread().name not in reader.threads

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

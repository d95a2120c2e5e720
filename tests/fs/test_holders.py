"""Who still holds a file open for writing, read from /proc (a FLUSH is not always a close)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from modelfs.fs.holders import held_for_writing


def _mount_id(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            return int(next(line for line in f if line.startswith("mnt_id:")).split(":")[1])
    finally:
        os.close(fd)


def _holder(path: Path, mode: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; f = open(sys.argv[1], sys.argv[2]); print('open', flush=True); "
        "time.sleep(60)"), str(path), mode], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "open"
    return p


def test_a_writer_elsewhere_is_seen_a_reader_is_not(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    mid, ino = _mount_id(f), f.stat().st_ino
    assert not held_for_writing(str(tmp_path), mid, ino)
    reader = _holder(f, "rb")
    try:
        assert not held_for_writing(str(tmp_path), mid, ino)  # read-only: not a writer
        writer = _holder(f, "r+b")
        try:
            assert held_for_writing(str(tmp_path), mid, ino)
            assert not held_for_writing(str(tmp_path), mid, ino + 1)  # another inode
            assert not held_for_writing(str(tmp_path), mid + 1000, ino)  # another mount
            assert not held_for_writing(str(tmp_path / "elsewhere"), mid, ino)
        finally:
            writer.kill()
            writer.wait()
        assert not held_for_writing(str(tmp_path), mid, ino)  # its descriptor went with it
    finally:
        reader.kill()
        reader.wait()

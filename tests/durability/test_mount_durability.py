"""Closed files that must not disappear, and saves that must not commit half done (issue 8).

Each case goes through a real mount daemon and the real CLI, as a user would hit it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mounthelp import Mounted, draft_state, head_ref, start_mount, wait_for, wait_ref
from safetensors.numpy import save_file

from modelfs.repo import Repo

CONFIG = b'{"step": 1}\n'


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with one small model ``base@1``: a config and real safetensors weights."""
    src = tmp_path / "base"
    src.mkdir()
    (src / "config.json").write_bytes(CONFIG)
    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((256, 256)).astype(np.float32)},
              str(src / "model.safetensors"))
    s = tmp_path / "store"
    with Repo.init(s) as r:
        r.import_dir(src, "base", infer_parent=False)
    return s


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Mounted]]:
    """``mount(store, *daemon_args)``: a daemon of its own, stopped at the end."""
    made: list[Mounted] = []

    def make(store: Path, *extra: str) -> Mounted:
        n = len(made)
        m = start_mount(store, tmp_path / f"mnt{n}", tmp_path / f"d{n}.log", extra=extra)
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.stop()


def files_of(store: Path, ref: str) -> dict[str, bytes]:
    with Repo.open(store) as r:
        v = r.resolve(ref)
        return {p: b"".join(r.iter_file(e)) for p, e in v.files.items()}


def staging_files(store: Path) -> list[Path]:
    return [p for p in (store / "staging").rglob("*") if p.is_file() and p.name != ".lock"]


def test_cli_commit_leaves_the_files_a_live_mount_is_storing(store: Path, mount: Any,
                                                             cli: Any) -> None:
    """The CLI never recovers (or drops) staged pointers of a mount that is running."""
    m = mount(store, "--settle", "0.3", "--stage-delay", "1.5")
    big, small = os.urandom(3 << 20), b"x\n"
    (m.path / "base" / "A_big.bin").write_bytes(big)
    (m.path / "base" / "B_small.txt").write_bytes(small)
    pending = staging_files(store)
    assert len(pending) == 2  # closed and durable, not stored yet (stage delay)
    r = cli("commit", "base", store=store)
    assert r.returncode == 1 and "still being stored" in r.stderr, r
    assert "Traceback" not in r.stderr
    assert all(p.exists() for p in pending)  # the CLI left the mount's staging files alone
    wait_ref(m.path / "base", "base@2")
    files = files_of(store, "base@2")
    assert files["A_big.bin"] == big and files["B_small.txt"] == small
    assert m.stop() == 0
    with Repo.open(store) as repo:
        assert [v.ref for v in repo.versions("base")] == ["base@1", "base@2"]


def test_a_second_writable_mount_is_refused_read_only_is_not(store: Path, mount: Any,
                                                            cli: Any, tmp_path: Path) -> None:
    first = mount(store, "--settle", "0.2")
    (tmp_path / "mnt2").mkdir()
    r = cli("mount", tmp_path / "mnt2", store=store)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "already mounted writable" in line and str(first.path) in line, r.stderr
    ro = mount(store, "--read-only")
    assert os.getxattr(ro.path, "user.modelfs.read_only") == b"1"
    with pytest.raises(OSError) as e:
        (ro.path / "base" / "x.txt").write_bytes(b"no")
    assert e.value.errno == 30  # EROFS
    (first.path / "base" / "both.txt").write_bytes(b"a1")
    wait_ref(first.path / "base", "base@2")
    assert wait_for(lambda: (ro.path / "base@2" / "both.txt").exists(), 10)
    # its head follows the writer's commits (within its refresh interval)
    assert wait_for(lambda: (ro.path / "base" / "both.txt").exists(), 5)
    assert (ro.path / "base" / "both.txt").read_bytes() == b"a1"
    # the lock dies with the daemon: once the first one is killed, a writable mount starts
    first.proc.kill()
    first.proc.wait(5)
    first.stop()
    again = mount(store, "--settle", "0.2")
    assert (again.path / "base" / "both.txt").read_bytes() == b"a1"


def test_a_save_that_fails_on_a_full_disk_is_held_not_committed(
        store: Path, mount: Any, cli: Any, tmpfs: Callable[[str, int], Path]) -> None:
    small = tmpfs("staging-disk", 8)
    (store / "staging").rmdir()
    (store / "staging").symlink_to(small)
    m = mount(store, "--settle", "0.2")
    base = m.path / "base"
    (base / "config.json").write_bytes(b'{"step": 999}\n')
    with pytest.raises(OSError) as e:
        (base / "model.safetensors").write_bytes(os.urandom(20 << 20))
    assert e.value.errno == 28  # ENOSPC
    time.sleep(1.0)  # well past the settle time
    assert head_ref(base) == "base@1"  # nothing committed
    state = draft_state(base)
    assert "model.safetensors" in state["held"], state
    assert (base / "model.safetensors").read_bytes() == files_of(store, "base@1")[
        "model.safetensors"]  # the path shows what it held before
    st = cli("status", "--json", store=store)
    rows = json.loads(st.stdout)
    assert rows[0]["model"] == "base" and "model.safetensors" in rows[0]["held"]
    r = cli("commit", "base", store=store)
    assert r.returncode == 1 and "a save into it failed" in r.stderr and "--force" in r.stderr
    # unmount says what it could not commit, and exits non-zero; the draft stays pending
    u = cli("umount", m.path)
    assert u.returncode == 1 and "not committed: base" in u.stderr, u
    # a new mount does not commit it at recovery either
    m2 = mount(store, "--settle", "0.2")
    time.sleep(1.0)
    assert head_ref(m2.path / "base") == "base@1"
    assert (m2.path / "base" / "config.json").read_bytes() == b'{"step": 999}\n'
    d = cli("discard", "base", store=store)
    assert d.returncode == 0, d
    assert wait_for(lambda: (m2.path / "base" / "config.json").read_bytes() == CONFIG, 10)
    assert draft_state(m2.path / "base")["held"] == {}
    # the second failed burst is committed by hand, with what was closed whole
    (m2.path / "base" / "config.json").write_bytes(b'{"step": 1000}\n')
    with pytest.raises(OSError):
        (m2.path / "base" / "model.safetensors").write_bytes(os.urandom(20 << 20))
    time.sleep(0.8)
    assert head_ref(m2.path / "base") == "base@1"
    f = cli("commit", "base", "--force", store=store)
    assert f.returncode == 0 and "base@2" in f.stdout, f
    wait_ref(m2.path / "base", "base@2")
    files = files_of(store, "base@2")
    assert files["config.json"] == b'{"step": 1000}\n'
    assert files["model.safetensors"] == files_of(store, "base@1")["model.safetensors"]
    assert m2.stop() == 0


def test_a_failed_file_saved_whole_again_releases_the_hold(
        store: Path, mount: Any, tmpfs: Callable[[str, int], Path]) -> None:
    small = tmpfs("staging-disk", 8)
    (store / "staging").rmdir()
    (store / "staging").symlink_to(small)
    m = mount(store, "--settle", "0.2")
    base = m.path / "base"
    (base / "config.json").write_bytes(b'{"step": 2}\n')
    with pytest.raises(OSError):
        (base / "model.safetensors").write_bytes(os.urandom(20 << 20))
    assert wait_for(lambda: "model.safetensors" in draft_state(base)["held"], 5)
    weights = os.urandom(1 << 20)  # the user frees space (a smaller file) and saves again
    (base / "model.safetensors").write_bytes(weights)
    wait_ref(base, "base@2")
    files = files_of(store, "base@2")
    assert files["config.json"] == b'{"step": 2}\n' and files["model.safetensors"] == weights


def test_poison_headers_written_into_the_mount_commit_as_blobs(store: Path, mount: Any) -> None:
    """Headers that once crashed the parser: each is a byte-exact blob, none holds the model."""
    def st(header: bytes) -> bytes:
        return len(header).to_bytes(8, "little") + header

    poison = {
        "deep.safetensors": st(b'{"a":' * 2000 + b"1" + b"}" * 2000),
        "dtype.safetensors": st(b'{"w":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}')
        + b"\0" * 4,
        "bigint.safetensors": st(b'{"w":{"dtype":"F32","shape":[' + b"9" * 5000
                                 + b'],"data_offsets":[0,4]}}') + b"\0" * 4,
    }
    m = mount(store, "--settle", "0.3")
    for name, data in poison.items():
        (m.path / "base" / name).write_bytes(data)
    (m.path / "base" / "after.txt").write_bytes(b"still committed\n")
    wait_ref(m.path / "base", "base@2")
    with Repo.open(store) as r:
        v = r.resolve("base@2")
        assert {p: v.files[p].format for p in poison} == dict.fromkeys(poison, "blob")
    files = files_of(store, "base@2")
    assert all(files[p] == data for p, data in poison.items())
    assert files["after.txt"] == b"still committed\n"


def test_a_closed_file_removed_before_it_is_stored_leaves_no_staging_file(
        store: Path, mount: Any) -> None:
    m = mount(store, "--settle", "0.3", "--stage-delay", "3")
    (m.path / "base" / "big.bin").write_bytes(os.urandom(4 << 20))
    assert len(staging_files(store)) == 1  # closed: durable in staging, not stored yet
    (m.path / "base" / "big.bin").unlink()
    assert staging_files(store) == []  # gone with its pending record, not at the next mount
    (m.path / "base" / "tmp.bin").write_bytes(os.urandom(1 << 20))
    (m.path / "base" / "keep.bin").write_bytes(b"kept")
    os.rename(m.path / "base" / "keep.bin", m.path / "base" / "tmp.bin")  # replaces tmp.bin
    assert len(staging_files(store)) == 1
    wait_ref(m.path / "base", "base@2", timeout=30)
    assert files_of(store, "base@2")["tmp.bin"] == b"kept"
    assert "big.bin" not in files_of(store, "base@2")


def test_a_file_still_open_for_writing_is_never_committed_half_written(
        store: Path, mount: Any, tmp_path: Path) -> None:
    """A FLUSH from another copy of the descriptor (a program the writer ran) is no close.

    Found by the campaign: the kernel flushes on every close(2), so `subprocess.run` in the
    middle of a save made the half-written file durable; a directory fsync then committed
    it, and so did recovery after a SIGKILL.
    """
    m = mount(store, "--settle", "0.2")
    half = b"x" * (3 << 20)
    fd = os.open(m.path / "base" / "big.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, half)
        subprocess.run(["true"], check=True)  # the child's copy closes at exec: a FLUSH
        dfd = os.open(m.path / "base", os.O_RDONLY)
        try:
            os.fsync(dfd)  # commits what is closed now: not big.bin
        finally:
            os.close(dfd)
        assert "big.bin" not in files_of(store, "base@1")
        with Repo.open(store) as r:
            assert all("big.bin" not in v.files for v in r.versions("base"))
            d = r.drafts().get("base")
            assert d is None or "big.bin" not in d.staged  # not recorded as closed
        m.proc.kill()  # and a crash now must not make the half file a version either
        m.proc.wait(5)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    m.stop()
    m2 = mount(store, "--settle", "0.2")
    time.sleep(0.8)
    with Repo.open(store) as r:
        assert all("big.bin" not in v.files for v in r.versions("base"))
    assert staging_files(store) == []  # swept: it was never closed
    whole = os.urandom(5 << 20)  # written and closed whole, with a program run midway
    fd = os.open(m2.path / "base" / "big.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, whole[: 1 << 20])
    subprocess.run(["true"], check=True)
    os.write(fd, whole[1 << 20:])
    os.close(fd)
    ref = head_ref(m2.path / "base")
    assert ref is not None
    n = int(ref.split("@")[1])
    wait_ref(m2.path / "base", f"base@{n + 1}")
    assert files_of(store, f"base@{n + 1}")["big.bin"] == whole

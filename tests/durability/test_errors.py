"""Errors, not tracebacks (issue 8, cases 8 and 9), end to end through the CLI and a real mount.

A full store disk and a read-only store get one clear line and change nothing; names no
local filesystem could hold are ENAMETOOLONG in the mount; a version number too big for
any model is ENOENT; a closed pipe ends `modelfs` quietly.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from durahelp import one_line_error
from mounthelp import FUSE_MISSING, Mounted, start_mount, wait_ref

from modelfs.repo import Repo

pytestmark = [pytest.mark.timeout(180)]

MiB = 1 << 20
Tmpfs = Callable[[str, int], Path]


def checkpoint(d: Path, seed: int) -> Path:
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((256, 256), dtype=np.float32)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"seed": seed}) + "\n")
    return d




def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until about ``leave`` bytes are free (0: until the kernel says ENOSPC)."""
    st = os.statvfs(disk)
    todo = st.f_bavail * st.f_frsize - leave if leave else 1 << 40
    filler = disk / "filler"
    piece = os.urandom(MiB)
    with open(filler, "wb") as f:
        try:
            while todo > 0:
                f.write(piece[:min(todo, MiB)])
                f.flush()
                todo -= MiB
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def state(cli: Callable[..., Any], store: Path, out: Path,
          blake3_of_dir: Callable[[Path], dict[str, str]]) -> dict[str, Any]:
    """What the store shows through the CLI: versions, fsck, and every version's bytes."""
    log = cli("log", "m", "--json", store=store)
    assert log.returncode == 0, log.stderr
    fsck = cli("fsck", store=store)
    assert fsck.returncode == 0 and ": ok" in fsck.stdout, fsck.stdout + fsck.stderr
    files = {}
    for v in json.loads(log.stdout):
        r = cli("export", v["ref"], out / v["ref"], store=store)
        assert r.returncode == 0, r.stderr
        files[v["ref"]] = blake3_of_dir(out / v["ref"])
    return {"versions": [v["id"] for v in json.loads(log.stdout)], "files": files}


# -- a full store disk ---------------------------------------------------------------------------

@pytest.fixture
def on_small_disk(tmpfs: Tmpfs, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(disk, store, staged): m@1 imported, and a closed file a killed mount left pending."""
    disk = tmpfs("disk", 24)
    store = disk / "store"
    with Repo.init(store) as r:
        r.import_dir(checkpoint(tmp_path / "v1", 1), "m", infer_parent=False)
        staged = store / "staging" / "closed-big.bin"
        staged.write_bytes(os.urandom(6 * MiB))
        r.drafts().record_staged("m", "big.bin", staged)
    return disk, store, staged


# leave=0: LMDB's first write fails, ENOSPC; 1 MiB: a write comes up short and LMDB says EIO
@pytest.mark.parametrize("leave", [0, 1 * MiB], ids=["enospc", "short-write-eio"])
def test_import_and_commit_on_a_full_disk_say_so_in_one_line_and_change_nothing(
        on_small_disk: tuple[Path, Path, Path], leave: int, tmp_path: Path,
        cli: Callable[..., Any], blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    disk, store, staged = on_small_disk
    closed = blake3_of_dir(staged.parent)[staged.name]
    before = state(cli, store, tmp_path / "before", blake3_of_dir)
    src = tmp_path / "v2"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(8 * MiB))
    filler = fill(disk, leave)

    one_line_error(cli("import", src, "--model", "m", store=store),
                   f"the disk holding store {store} is full", "nothing was changed")
    one_line_error(cli("commit", "m", store=store),
                   f"the disk holding store {store} is full", "nothing was changed")

    filler.unlink()  # reading back writes nothing, but export needs room for its own files
    assert state(cli, store, tmp_path / "after", blake3_of_dir) == before
    with Repo.open(store) as r:
        d = r.drafts().get("m")
        assert d is not None and d.staged == {"big.bin": staged}  # the closed file is kept
    r2 = cli("commit", "m", store=store)  # with room again, it commits whole
    assert r2.returncode == 0 and "committed m@2" in r2.stdout, r2.stderr
    assert cli("export", "m@2", tmp_path / "m2", store=store).returncode == 0
    assert blake3_of_dir(tmp_path / "m2") == {**before["files"]["m@1"], "big.bin": closed}


# -- a read-only store ----------------------------------------------------------------------------

@pytest.fixture(params=["remount-ro", "ro-bind"])
def read_only_store(request: pytest.FixtureRequest, tmpfs: Tmpfs,
                    tmp_path: Path) -> Iterator[tuple[Path, dict[str, Path]]]:
    """A store with m@1 and m@2 behind a read-only filesystem: a remounted tmpfs or a bind."""
    disk = tmpfs("rw", 32)
    sources = {"m@1": checkpoint(tmp_path / "v1", 1), "m@2": checkpoint(tmp_path / "v2", 2)}
    with Repo.init(disk / "store") as r:
        for src in sources.values():
            r.import_dir(src, "m", infer_parent=False)
    if request.param == "remount-ro":
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        yield disk / "store", sources
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(disk / "store"), str(ro)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
    try:
        yield ro, sources
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_read_only_store_answers_log_show_fsck_export_and_refuses_writes(
        read_only_store: tuple[Path, dict[str, Path]], tmp_path: Path, cli: Callable[..., Any],
        blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    store, sources = read_only_store
    with pytest.raises(OSError) as e:
        (store / "probe").write_bytes(b"")
    assert e.value.errno == errno.EROFS

    log = cli("log", "m", store=store)
    assert log.returncode == 0 and log.stdout.splitlines()[0].startswith("m@2"), log.stderr
    show = cli("show", "m@1", store=store)
    assert show.returncode == 0 and "model.safetensors" in show.stdout, show.stderr
    fsck = cli("fsck", store=store)
    assert fsck.returncode == 0 and "checked 2 versions" in fsck.stdout, fsck.stderr
    for ref, src in sources.items():
        r = cli("export", ref, tmp_path / ref, store=store)
        assert r.returncode == 0, r.stderr
        assert blake3_of_dir(tmp_path / ref) == blake3_of_dir(src)

    new = checkpoint(tmp_path / "v3", 3)
    for args in (("import", new, "--model", "m"), ("commit", "m"), ("derive", "m", "n"),
                 ("gc",)):
        one_line_error(cli(*args, store=store), f"store {store} is read-only")
    assert cli("log", "m", store=store).stdout == log.stdout


# -- names and refs in the mount ------------------------------------------------------------------

@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Mounted, Path]]:
    """(mount, store): base@1 mounted, settling after 0.2 s."""
    if FUSE_MISSING:
        pytest.fail(FUSE_MISSING)
    store = tmp_path / "store"
    with Repo.init(store) as r:
        r.import_dir(checkpoint(tmp_path / "v1", 1), "base", infer_parent=False)
    m = start_mount(store, tmp_path / "mnt", tmp_path / "daemon.log", extra=("--settle", "0.2"))
    try:
        yield m, store
    finally:
        m.stop()


def errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or 0
    return 0


@pytest.mark.mount
def test_names_over_255_bytes_are_enametoolong_as_on_a_local_disk(
        mounted: tuple[Mounted, Path], tmp_path: Path, cli: Callable[..., Any]) -> None:
    m, store = mounted
    d = m.path / "base"
    (d / "ok.txt").write_bytes(b"ok")
    for long in ("x" * 256, "é" * 128, "n" * 1000):  # 256 bytes as UTF-8; FUSE passes up to 1024
        assert errno_of(lambda n=long: (d / n).write_bytes(b"x")) == errno.ENAMETOOLONG
        assert errno_of(lambda n=long: os.mkdir(d / n)) == errno.ENAMETOOLONG
        assert errno_of(lambda n=long: os.rename(d / "ok.txt", d / n)) == errno.ENAMETOOLONG
        assert errno_of(lambda n=long: os.stat(d / n)) == errno.ENAMETOOLONG
        assert errno_of(lambda n=long: os.mkdir(m.path / n)) == errno.ENAMETOOLONG
    (d / ("y" * 255)).write_bytes(b"longest allowed")
    wait_ref(d, "base@2")
    assert sorted(os.listdir(m.path / "base@2")) == ["config.json", "model.safetensors",
                                                     "ok.txt", "y" * 255]
    r = cli("export", "base@2", tmp_path / "out", store=store)  # every name exports
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / ("y" * 255)).read_bytes() == b"longest allowed"


@pytest.mark.mount
def test_a_version_number_beyond_any_is_enoent_not_eio(mounted: tuple[Mounted, Path],
                                                       cli: Callable[..., Any]) -> None:
    m, store = mounted
    for name in ("base@99999999999999999999", "base@18446744073709551616", "base@2"):
        assert errno_of(lambda n=name: os.stat(m.path / n)) == errno.ENOENT
        assert errno_of(lambda n=name: os.stat(m.path / ".lineage" / n)) == errno.ENOENT
    assert errno_of(lambda: os.stat(m.path / ".versions" / "base" /
                                    "99999999999999999999")) == errno.ENOENT
    assert os.stat(m.path / "base@1").st_nlink >= 2  # the mount still answers
    assert "Traceback" not in m.log_text() and "struct.error" not in m.log_text()
    one_line_error(cli("show", "base@99999999999999999999", store=store), "no version")


# -- a closed pipe ---------------------------------------------------------------------------------

def test_a_closed_pipe_ends_quietly(tmp_path: Path, modelfs_cmd: list[str]) -> None:
    """`modelfs log m | head` when head is gone: no message, status 141 as git and ls give."""
    store = tmp_path / "store"
    with Repo.init(store) as r:
        for seed in range(3):
            r.import_dir(checkpoint(tmp_path / f"v{seed}", seed), "m", infer_parent=False)
    env = {k: v for k, v in os.environ.items() if k != "MODELFS_STORE"}
    for args in (("log", "m"), ("lineage",), ("show", "m")):
        p = subprocess.Popen([*modelfs_cmd, "--store", str(store), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()  # the reader went away before the first line
        err = p.stderr.read().decode()
        assert p.wait(60) == 141 and err == "", (args, p.returncode, err)

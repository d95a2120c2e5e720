"""`modelfs mount` / `modelfs umount`, bad mount points, and stopping with readers mid-file."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from mounthelp import PY, FsLineage, reader, start_mount, wait_for

from modelfs.cli.mount_cmds import mount_command, umount_command
from modelfs.fs import control
from modelfs.fs.config import MountConfig

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]


def mount(store: Path, *args: str) -> Result:
    return CliRunner().invoke(mount_command, list(args), obj={"store": store})


def umount(*args: str) -> Result:
    return CliRunner().invoke(umount_command, list(args), obj={})


def one_line_error(r: Result) -> str:
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    msg = r.output.strip()
    assert msg.startswith("Error: ") and "Traceback" not in msg
    return msg


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "mnt"
    d.mkdir()
    yield d
    if control.find_mount(d) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(d)], check=False)


def _pid(r: Result) -> int:
    m = re.search(r"daemon pid (\d+)", r.output)
    assert m, r.output
    return int(m.group(1))


def test_mount_as_daemon_and_umount(fs_lineage: FsLineage, mnt: Path) -> None:
    r = mount(fs_lineage.store, str(mnt), "--settle", "2.5")
    assert r.exit_code == 0, r.output
    pid = _pid(r)
    assert os.path.ismount(mnt)
    assert "minilm" in os.listdir(mnt)
    log = control.log_path(fs_lineage.store, mnt).read_text()
    assert log.count("mounted") >= 1 and "settle 2.5s" in log
    assert "already a modelfs mount" in one_line_error(mount(fs_lineage.store, str(mnt)))
    r = umount(str(mnt))
    assert r.exit_code == 0, r.output
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []
    assert control.wait_exit(pid, 5)
    assert "is not mounted" in one_line_error(umount(str(mnt)))


def test_bad_mount_points_are_clear_errors(fs_lineage: FsLineage, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert "does not exist" in one_line_error(mount(fs_lineage.store, str(missing)))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert "not empty" in one_line_error(mount(fs_lineage.store, str(full)))
    (tmp_path / "file").write_text("x")
    assert "not a directory" in one_line_error(mount(fs_lineage.store, str(tmp_path / "file")))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "store" in one_line_error(mount(tmp_path / "no-store", str(empty)))
    assert "not mounted" in one_line_error(umount(str(empty)))
    assert not os.path.ismount(empty)


def test_a_daemon_that_cannot_start_reports_its_log(fs_lineage: FsLineage, mnt: Path) -> None:
    # a mount point that is fine when checked but gone when the daemon starts
    proc = subprocess.Popen([*control.daemon_command(fs_lineage.store, mnt / "gone", MountConfig(cache_mb=64))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "does not exist" in out and "Traceback" not in out


def test_umount_refuses_a_busy_mount_then_lazy_detaches_and_the_reader_finishes(
        fs_lineage: FsLineage, mnt: Path) -> None:
    r = mount(fs_lineage.store, str(mnt), "--cache-mb", "32")
    assert r.exit_code == 0, r.output
    pid = _pid(r)
    ref = "minilm@2"
    p = reader("pause", str(mnt / ref / "model.safetensors"), str(8 << 20))
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        assert "busy" in one_line_error(umount(str(mnt)))
        assert os.path.ismount(mnt)
        r = umount("--lazy", str(mnt))
        assert r.exit_code == 0, r.output
        assert "detached" in r.output or "unmounted" in r.output
        assert control.find_mount(mnt) is None  # no new opens from here on
        out, _ = p.communicate("go\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0
    assert out.strip() == fs_lineage.versions[ref].files["model.safetensors"].blake3_hex
    assert control.wait_exit(pid, 10), "the daemon should exit once the last file closes"


def test_sigterm_while_a_reader_is_mid_file(fs_lineage: FsLineage, mnt: Path,
                                            tmp_path: Path) -> None:
    m = start_mount(fs_lineage.store, mnt, tmp_path / "d.log", cache_mb=32)
    ref = "sibling@1"
    p = reader("pause", str(mnt / ref / "model.safetensors"), str(4 << 20))
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        m.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: control.find_mount(mnt) is None, 10)
        assert m.proc.poll() is None  # still serving the open file
        out, _ = p.communicate("go\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0
    assert out.strip() == fs_lineage.versions[ref].files["model.safetensors"].blake3_hex
    assert m.proc.wait(10) == 0
    assert "detaching" in m.log_text()


def test_second_signal_stops_at_once(fs_lineage: FsLineage, mnt: Path, tmp_path: Path) -> None:
    m = start_mount(fs_lineage.store, mnt, tmp_path / "d.log", cache_mb=32)
    p = reader("pause", str(mnt / "minilm-part@1" / "model.safetensors"), str(1 << 20))
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        m.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: control.find_mount(mnt) is None, 10)
        m.proc.send_signal(signal.SIGINT)
        assert m.proc.wait(10) == 0
        out, _ = p.communicate("go\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    # the reader gets an error for what was not yet read, never a hang or wrong bytes
    assert p.returncode == 3 and out.startswith("error"), out
    assert control.find_mount(mnt) is None


def test_foreground_mount_stops_on_ctrl_c(fs_lineage: FsLineage, mnt: Path) -> None:
    code = ("import sys; from modelfs.cli.mount_cmds import mount_command; "
            "mount_command.main(sys.argv[2:], obj={'store': sys.argv[1]})")
    proc = subprocess.Popen([PY, "-c", code, str(fs_lineage.store), "--foreground", str(mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        control.wait_mounted(mnt, proc, timeout=60)  # type: ignore[arg-type]
        assert "minilm" in os.listdir(mnt)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert control.find_mount(mnt) is None


def test_a_killed_daemon_leaves_a_dead_mount_that_umount_clears(
        fs_lineage: FsLineage, mnt: Path, tmp_path: Path) -> None:
    m = start_mount(fs_lineage.store, mnt, tmp_path / "d.log", cache_mb=32)
    m.proc.kill()
    m.proc.wait(10)
    with pytest.raises(OSError) as e:
        os.listdir(mnt)
    assert e.value.errno == errno.ENOTCONN
    assert "already a modelfs mount" in one_line_error(mount(fs_lineage.store, str(mnt)))
    r = umount(str(mnt))
    assert r.exit_code == 0, r.output
    assert control.find_mount(mnt) is None and os.listdir(mnt) == []

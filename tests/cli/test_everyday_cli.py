"""The everyday verbs through the real `modelfs` and through a real mount: tag, checkout,
rm, mv, prune, annotate, reparent, log --grep/--since/-n, find, status, commit --wait."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from checkhelp import seeded

from modelfs.fs.config import MountConfig
from modelfs.fs.handle import MountHandle
from modelfs.repo import Repo

FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    s = tmp_path / "store"
    with Repo.init(s) as repo:
        for i in range(1, 4):
            repo.import_dir(seeded(tmp_path / f"m{i}", i), "m", infer_parent=False, message=f"epoch {i}")
        repo.import_dir(seeded(tmp_path / "kid", 9), "kid", parents=["m@2"], how="finetune")
        repo.import_dir(seeded(tmp_path / "solo", 7), "solo", infer_parent=False)
    return s


def one_line(r: Any, *words: str) -> None:
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_the_verbs_through_the_cli(store: Path, cli: Callable[..., Any]) -> None:
    from click.testing import CliRunner

    from modelfs.cli.main import cli as group

    def ok(*args: str) -> str:
        """A happy path, in-process (a subprocess adds only start-up time); errors below run
        the real program, since what they print to stderr is the point."""
        r = CliRunner().invoke(group, ["--store", str(store), *args], catch_exceptions=False)
        assert r.exit_code == 0, (args, r.output)
        return str(r.stdout)

    one_line(cli("show", "m@0", store=store), "start at 1")
    assert "tagged m@2 as m:best" in ok("tag", "m@2", "best")
    assert "m:best" in ok("tag", "-l") and ok("show", "m:best").startswith("version  m@2")
    one_line(cli("tag", "m@3", "best", store=store), "already names m@2", "-f")
    assert "tagged m@3 as m:old (moved from" not in ok("tag", "m@3", "old")
    assert "deleted tag m:old (was m@3)" in ok("tag", "-d", "m:old")
    one_line(cli("tag", "-d", "m:old", store=store), "no tag 'old'")
    one_line(cli("tag", "-d", "m@3", store=store), "MODEL:TAG")
    one_line(cli("tag", "m@3", "7", store=store), "bad tag name")
    one_line(cli("show", "m:nope", store=store), "no tag 'nope'")
    assert "checked out m@2 as m@4" in ok("checkout", "m:best")
    assert "checked out m@3 as m@5" in ok("revert", "m@3")  # revert: the same verb, git's other name
    log = ok("log", "m", "-n", "2")
    assert log.splitlines()[0].startswith("m@5") and len(log.splitlines()) == 2 and "checkout" in log
    assert [ln.split()[0] for ln in ok("log", "m", "--grep", "EPOCH 2").splitlines()] == ["m@2"]
    assert ok("log", "m", "--since", "2000-01-01").count("\n") == 5 and ok("log", "m", "--since", "0s") == ""
    one_line(cli("log", "m", "--since", "yesterday-ish", store=store), "--since")
    ok("annotate", "solo", "--how", "finetune", "-m", "really a fine-tune", "--set", "lr=0.001", "--set", "data=wiki")
    ok("reparent", "solo", "--parent", "m@3")
    show = json.loads(ok("show", "solo", "--json"))
    m3 = json.loads(ok("show", "m@3", "--json"))
    assert show["derived_from"] == [m3["id"]] and show["how"] == "finetune" and show["provenance"]["lr"] == 0.001
    assert show["id"] in m3["children"]
    assert [ln.split()[0] for ln in ok("find", "--how", "finetune", "--where", "data=wiki").splitlines()] == ["solo@1"]
    assert [ln.split()[0] for ln in ok("find", "--how", "finetune").splitlines()] == ["kid@1", "solo@1"]
    one_line(cli("reparent", "m@1", "--parent", "solo", store=store), "loop")
    one_line(cli("rm", "m", store=store), "would orphan m@2", "kid@1", "--force")
    one_line(cli("prune", "m", "--keep-last", "1", store=store), "orphan m@2")
    assert "would remove 1 versions (m@1)" in ok("prune", "m", "--keep-last", "2", "--keep-tagged", "--force", "--dry-run")
    out = ok("prune", "m", "--keep-last", "1", "--force")
    assert "kept m@2 as lineage history" in out and "tags dropped: m:best" in out
    assert "renamed kid to kid2" in ok("mv", "kid", "kid2")
    one_line(cli("mv", "kid2", "m", store=store), "already exists")
    one_line(cli("rm", "nope", store=store), "unknown model")
    assert "removed 1 versions (solo@1)" in ok("rm", "solo")
    assert ": ok" in ok("fsck")
    gc = json.loads(ok("gc", "--json"))
    assert gc["bytes_freed"] > 0
    assert ": ok" in ok("fsck") and "no version or draft reaches" not in ok("fsck")
    assert "head m" in ok("status") and "no writable mount" in ok("status")


@pytest.mark.skipif(not FUSE, reason="FUSE is not usable here")
def test_tags_checkout_and_rm_are_seen_by_a_running_mount(store: Path, tmp_path: Path,
                                                          cli: Callable[..., Any]) -> None:
    # a long settle time: the mount never commits on its own here, so commit --wait must
    with MountHandle.start(store, tmp_path / "mnt", tmp_path / "mount.log", MountConfig(settle=120)) as m:
        mnt = m.path
        assert (mnt / "solo").is_dir() and (mnt / "m@2").is_dir()
        assert not os.path.exists(mnt / "m@0")
        assert cli("tag", "m@2", "best", store=store).returncode == 0
        assert os.readlink(mnt / "m:best") == "m@2"
        assert (mnt / "m:best" / "config.json").read_text() == '{"seed": 2}'
        assert "best" in os.listdir(mnt / ".versions" / "m")
        assert os.readlink(mnt / ".versions" / "m" / "best") == "../../m@2"
        r = cli("status", store=store)
        assert f"mounted writable at {mnt}" in r.stdout, r.stdout
        assert cli("checkout", "m:best", store=store).returncode == 0
        deadline = time.monotonic() + 10
        while (mnt / "m" / "config.json").read_text() != '{"seed": 2}' and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (mnt / "m" / "config.json").read_text() == '{"seed": 2}'  # the head shows m@2's files
        assert (mnt / "m@3" / "config.json").read_text() == '{"seed": 3}'  # nothing lost
        assert (mnt / "m@4").is_dir()
        assert cli("rm", "solo", store=store).returncode == 0
        deadline = time.monotonic() + 10
        while "solo" in os.listdir(mnt) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "solo" not in os.listdir(mnt) and not os.path.exists(mnt / "solo@1")
        assert (mnt / "m@1").is_dir()
        assert cli("prune", "m", "--keep-last", "2", "--force", store=store).returncode == 0
        deadline = time.monotonic() + 10
        while os.path.exists(mnt / "m@1") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(mnt / "m@1") and (mnt / "m@4").is_dir()
        assert cli("mv", "kid", "kid2", store=store).returncode == 0
        deadline = time.monotonic() + 10
        while "kid" in os.listdir(mnt) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "kid" not in os.listdir(mnt) and (mnt / "kid2@1" / "config.json").read_text() == '{"seed": 9}'
        # a save into the mount, then commit --wait returns the version it became
        (mnt / "m" / "notes.txt").write_text("hello\n")
        r = cli("commit", "m", "--wait", "-m", "notes", store=store)
        assert r.returncode == 0 and "committed m@5" in r.stdout, (r.stdout, r.stderr)
        assert "notes.txt" in cli("show", "m@5", store=store).stdout
        assert "Traceback" not in m.log_text()

"""`modelfs test ...` and `modelfs bisect` as users run them, on a real store through a real mount.

Happy paths run the CLI in-process (click's runner: a subprocess adds only time) beside one
mount of the module's store, which the commands find and reuse; bad input runs the real
program in a subprocess, to see the one line a user sees. One test starts with no mount
running, so the command mounts the store privately and leaves nothing mounted behind.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from checkhelp import FUSE_MISSING, norm_cmd, runs, tiny, write_script

from modelfs.fs import control
from modelfs.fs.config import MountConfig
from modelfs.fs.handle import MountHandle
from modelfs.repo import Repo

pytestmark = [pytest.mark.mount, pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)]


@dataclass
class Site:
    root: Path
    store: Path
    script: Path
    log: Path
    mount: MountHandle

    def cmd(self, limit: float = 3.0) -> str:
        return norm_cmd(self.script, self.log, limit)


def build(root: Path) -> Path:
    """base@1 -> base@2 -> ft@1 [finetune]; big@1 [cast] fails; chain@1..5 fails from chain@4."""
    store = root / "store"
    src = root / "src"
    with Repo.init(store) as repo:
        repo.import_dir(tiny(src / "b1", 1.0), "base", infer_parent=False)
        repo.import_dir(tiny(src / "b2", 1.1), "base", message="second")
        repo.import_dir(tiny(src / "f1", 1.2), "ft", parents=["base@2"], how="finetune")
        repo.import_dir(tiny(src / "g1", 8.0), "big", parents=["base@2"], how="cast")
        for i in range(5):
            repo.import_dir(tiny(src / f"c{i}", (6.0 if i >= 3 else 1.0) + i / 100, seed=i), "chain",
                            infer_parent=i > 0, message=f"step {i}")
    return store


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("test-cmds")
    store = build(root)
    with MountHandle.start(store, root / "mnt", root / "mount.log", MountConfig(read_only=True)) as m:
        yield Site(root, store, write_script(root), root / "norm.log", m)


@dataclass(frozen=True)
class Out:
    returncode: int
    stdout: str
    stderr: str


def invoke(site: Site, *args: str) -> Out:
    from click.testing import CliRunner

    from modelfs.cli.main import cli as group

    r = CliRunner().invoke(group, ["--store", str(site.store), *args], catch_exceptions=False)
    return Out(r.exit_code, r.stdout, r.stderr)


def snapshot(store: Path) -> dict[str, Any]:
    """Versions, tests and results: what "changed nothing" compares."""
    with Repo.open(store) as repo:
        return {"versions": [v.id for v in repo.all_versions()],
                **{t: repo.table(t).items() for t in ("tests", "results")}}


def one_error_line(r: Any, match: str) -> None:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_add_list_rm(site: Site) -> None:
    r = invoke(site, "test", "add", "probe", "--cmd", "true {path}", "--models", "ft*", "--how", "finetune")
    assert r.returncode == 0 and "test probe (" in r.stdout and "on models ft* and how finetune" in r.stdout
    listed = json.loads(invoke(site, "test", "list", "--json").stdout)
    assert [(t["name"], t["models"], t["how"], t["timeout"]) for t in listed] == [("probe", "ft*", "finetune", 600.0)]
    assert len(listed[0]["hash"]) == 64
    table = invoke(site, "test", "list").stdout.splitlines()
    assert table[0].split() == ["test", "applies", "to", "timeout", "command"] and "true {path}" in table[1]
    assert invoke(site, "test", "rm", "probe").stdout.strip() == "removed test probe and 0 results"
    assert "(no tests" in invoke(site, "test", "list").stdout


def test_bad_input_is_one_line_and_changes_nothing(site: Site, cli: Callable[..., Any]) -> None:
    assert invoke(site, "test", "add", "norm-b", "--cmd", site.cmd(), "--models", "base").returncode == 0
    before = snapshot(site.store)
    cases = [
        (["test", "add", "x", "--cmd", "check {path} {oops}"], "unknown placeholder {oops}"),
        (["test", "add", "x", "--cmd", "check {path"], "bad command"),
        (["test", "add", "norm-b", "--cmd", "true"], "already exists"),
        (["test", "add", "bad/name", "--cmd", "true"], "test name 'bad/name' is not allowed"),
        (["test", "rm", "nope"], "unknown test 'nope'"),
        (["test", "run", "nope"], "unknown test 'nope'"),
        (["test", "run", "norm-b", "--under", "ft"], "no version matches test(s) norm-b"),
        (["test", "run", "--under", "ft", "--version", "ft@1"], "not both"),
        (["test", "run", "--version", "ghost@1"], "unknown model 'ghost'"),
        (["test", "run", "--jobs", "0"], "--jobs must be at least 1"),
        (["test", "run", "--executor", "nope"], "nope"),
        (["bisect", "nope", "chain"], "unknown test 'nope'"),
        (["bisect", "norm-b", "chain", "--good", "base@1"], "not on chain@5's first-parent ancestry"),
        (["bisect", "norm-b", "chain", "--path", "base@1"], "base@1 is not an ancestor of chain@5"),
    ]
    for i, (args, match) in enumerate(cases):
        # a few through the real program (what a user's terminal shows), the rest in-process
        one_error_line(cli(*args, store=site.store) if i % 5 == 0 else invoke(site, *args), match)
    assert snapshot(site.store) == before
    assert runs(site.log) == []  # nothing ran
    invoke(site, "test", "rm", "norm-b")


def test_run_prints_a_table_stores_results_and_reruns_nothing_known(site: Site) -> None:
    assert invoke(site, "test", "add", "norm", "--cmd", site.cmd()).returncode == 0
    start = len(runs(site.log))
    r = invoke(site, "test", "run", "--jobs", "2")
    assert r.returncode == 1  # big@1 and chain@4.. fail
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if "@" in ln.split()[0]}
    assert set(rows) == {"base@1", "base@2", "ft@1", "big@1", *(f"chain@{i}" for i in range(1, 6))}
    assert "FAIL norm=8" in rows["big@1"] and "pass norm=1.1" in rows["base@2"] and "s" in rows["ft@1"]
    assert "6 passed, 3 failed (9 run, 0 known, not run again)" in r.stdout
    assert "--- norm on big@1: exit 1" in r.stdout
    assert len(runs(site.log)) == start + 9
    # known results are not run again, whatever the selection
    again = invoke(site, "test", "run", "norm", "--under", "base")
    assert again.returncode == 1 and again.stdout.count("(known)") == 4 and len(runs(site.log)) == start + 9
    assert "0 run, 4 known" in again.stdout
    ok = invoke(site, "test", "run", "--version", "ft@1", "--force", "--json")
    assert ok.returncode == 0 and runs(site.log)[-1] == "ft@1"
    (doc,) = json.loads(ok.stdout)
    assert doc["ref"] == "ft@1" and doc["passed"] and not doc["cached"] and doc["metrics"] == {"norm": 1.2}
    # versions x tests
    table = invoke(site, "test", "results").stdout.splitlines()
    assert table[0].split() == ["version", "norm"]
    cells = {ln.split()[0]: " ".join(ln.split()[1:]) for ln in table[1:]}
    assert cells["big@1"] == "FAIL norm=8" and cells["chain@3"] == "pass norm=1.02"
    res = json.loads(invoke(site, "test", "results", "--json").stdout)
    by_ref = {v["ref"]: v["results"]["norm"] for v in res["versions"]}
    assert res["tests"] == ["norm"] and not by_ref["chain@4"]["passed"] and by_ref["base@1"]["passed"]


def test_lineage_tree_svg_and_json_show_test_status(site: Site) -> None:
    if not runs(site.log):
        invoke(site, "test", "add", "norm", "--cmd", site.cmd())
        invoke(site, "test", "run")
    tree = invoke(site, "lineage", "--versions").stdout
    line = {ln.strip("│├└─ ").split()[0]: ln for ln in tree.splitlines()}
    assert line["base@2"].endswith("[tests ✓1]") and line["big@1"].endswith("[tests ✓0 ✗1]")
    models = {ln.strip("│├└─ ").split()[0]: ln for ln in invoke(site, "lineage").stdout.splitlines()}
    assert "[tests @2 ✓1]" in models["base"] and "[tests @1 ✓0 ✗1]" in models["big"]
    dot = invoke(site, "lineage", "--dot").stdout  # the picture: red fill where a test fails
    assert re.search(r'bgcolor="#fde8e8" color="#b22222">@1<br/>✓0 ✗1</td>', dot) and "✓1" in dot
    svg = site.root / "lineage.svg"
    assert invoke(site, "lineage", "--svg", str(svg)).returncode == 0
    text = svg.read_text()
    assert "✓0 ✗1" in text and "#fde8e8" in text and "a test fails" in text
    doc = {v["ref"]: v for v in json.loads(invoke(site, "lineage", "--json").stdout)}
    assert doc["big@1"]["tests"] == {"passed": 0, "failed": 1} and doc["ft@1"]["tests"]["passed"] == 1


def test_bisect_names_the_step_that_brought_the_failure_in(site: Site) -> None:
    invoke(site, "test", "add", "bis", "--cmd", site.cmd(limit=3.0) + " # bisect's own")
    before = len(runs(site.log))
    r = invoke(site, "bisect", "bis", "chain")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "bisect bis over 5 versions: chain@1 .. chain@5" in out
    assert "first failing version: chain@4 (" in out and "its parent on the path, passing: chain@3 (" in out
    assert "the step that brought the failure in: a new version of chain: step 3" in out
    ran = len(runs(site.log)) - before
    assert f"{ran} runs, 0 known results reused" in out and ran <= 4
    doc = json.loads(invoke(site, "bisect", "bis", "chain", "--json").stdout)
    assert doc["verdict"] == "found" and doc["first_bad"]["ref"] == "chain@4" and doc["runs"] == 0
    assert len(runs(site.log)) == before + ran  # every probe reused
    root = invoke(site, "bisect", "bis", "big").stdout  # path base@1 base@2 big@1: big brings it in
    assert "first failing version: big@1" in root and "derived from base@2 by cast" in root
    never = invoke(site, "bisect", "bis", "ft").stdout
    assert "bis passes at ft@1: it never fails on this path, nothing to find" in never
    invoke(site, "test", "add", "strict", "--cmd", site.cmd(limit=0.5))
    fails = invoke(site, "bisect", "strict", "chain@2").stdout
    assert "strict fails already at the root of the path, chain@1" in fails
    good = invoke(site, "bisect", "bis", "chain", "--good", "chain@3").stdout
    assert "over 3 versions: chain@3 .. chain@5" in good and "first failing version: chain@4" in good


def test_a_hanging_test_is_killed_at_its_timeout(site: Site) -> None:
    invoke(site, "test", "add", "hangs", "--cmd", "sleep 60 # {path}", "--models", "ft", "--timeout", "1")
    t = time.monotonic()
    r = invoke(site, "test", "run", "hangs")
    assert time.monotonic() - t < 20
    assert r.returncode == 1 and "TIMEOUT" in r.stdout and "--- hangs on ft@1: timed out after 1s" in r.stdout
    r = invoke(site, "test", "run", "hangs", "--force", "--timeout", "0.3")
    assert "timed out after 0.3s" in r.stdout
    invoke(site, "test", "rm", "hangs")


def test_without_a_running_mount_a_private_one_is_started_and_removed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with Repo.init(store) as repo:
        repo.import_dir(tiny(tmp_path / "a", 1.0), "solo", infer_parent=False)
    log = tmp_path / "runs.log"
    site = Site(tmp_path, store, write_script(tmp_path), log, None)  # type: ignore[arg-type]

    def mounts_of_store() -> list[str]:
        out = []
        for m in control.mounts():
            if m.fstype == control.FSTYPE:
                try:
                    if os.fsdecode(os.getxattr(m.mountpoint, control.STORE_XATTR)) == str(store):
                        out.append(m.mountpoint)
                except OSError:
                    pass
        return out

    assert invoke(site, "test", "add", "n", "--cmd", site.cmd()).returncode == 0
    r = invoke(site, "test", "run")
    assert r.returncode == 0 and "1 passed, 0 failed (1 run" in r.stdout
    (line,) = log.read_text().splitlines()
    ref, path, wrote = line.split()
    assert ref == "solo@1" and path.endswith("/mnt/solo@1") and "modelfs-versions-" in path and wrote == "refused"
    assert mounts_of_store() == [] and not Path(path).exists()
    # all known: nothing is mounted at all
    assert "(known)" in invoke(site, "test", "run").stdout

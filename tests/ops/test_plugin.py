"""The example plug-in package, really installed with pip, is found through entry points and
used: its format parses .npy files, its update type and codec store a scaled tensor, its merge
strategy merges, and its own tests pass modelfs's conformance suites (modelfs.testing) on its
format and codec. It runs in subprocesses, so this test process's registries stay as they are."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PLUGIN_SRC = Path(__file__).resolve().parent.parent / "plugin_example"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-installs the plug-in into a scratch directory (a copy, so no build files land in tests/)."""
    root = tmp_path_factory.mktemp("plugin")
    src = shutil.copytree(PLUGIN_SRC, root / "src")
    target = root / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(src)], capture_output=True, text=True)
    if p.returncode:
        pytest.fail(f"pip could not install the example plug-in: {p.stderr[-2000:]}")
    assert (target / "modelfs_example_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


def run(args: list[str], plugin: Path, store: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MODELFS_STORE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin), env.get("PYTHONPATH", "")]))
    exe = Path(sys.executable).parent / "modelfs"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-c", "from modelfs.cli import main; main()"]
    cmd = argv + (["--store", str(store)] if store else []) + args
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_registries_find_the_plugin_through_entry_points(plugin_path: Path) -> None:
    r = run(["plugins", "--json"], plugin_path)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert "npy" in found["formats"] and "safetensors" in found["formats"]
    assert "example-scale" in found["codecs"] and "lowrank" in found["codecs"]
    assert "example-scale" in found["updates"] and "sparse" in found["updates"]
    assert "example-maximum" in found["merges"] and "ties" in found["merges"]
    without = run(["plugins", "--json"], Path("/nonexistent"))
    assert "npy" not in json.loads(without.stdout)["formats"]


def test_plugin_format_update_and_merge_end_to_end(plugin_path: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((512, 512)).astype(np.float32)
    dirs = {n: tmp_path / n for n in ("a", "scaled", "other")}
    for d in dirs.values():
        d.mkdir()
    np.save(dirs["a"] / "w.npy", base)
    np.save(dirs["scaled"] / "w.npy", base * np.float32(0.5))
    other = rng.standard_normal((512, 512)).astype(np.float32)
    np.save(dirs["other"] / "w.npy", other)
    store = tmp_path / "store"
    assert run(["init"], plugin_path, store).returncode == 0
    r = run(["import", str(dirs["a"]), "--model", "a"], plugin_path, store)
    assert r.returncode == 0, r.stderr
    r = run(["import", str(dirs["scaled"]), "--model", "half", "--parent", "a", "--updates", "example-scale",
             "--json"], plugin_path, store)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["updates"] == {"w.npy:array": {"type": "example-scale", "factor": 0.5}}
    assert run(["import", str(dirs["other"]), "--model", "other", "--parent", "a"], plugin_path,
               store).returncode == 0
    r = run(["merge", "half", "other", "-s", "example-maximum", "--into", "maxed"], plugin_path, store)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert run(["export", "maxed", str(out)], plugin_path, store).returncode == 0
    assert np.array_equal(np.load(out / "w.npy"), np.maximum(base * np.float32(0.5), other))
    r = run(["show", "half", "--json"], plugin_path, store)
    assert json.loads(r.stdout)["files"]["w.npy"]["format"] == "npy"
    r = run(["fsck"], plugin_path, store)
    assert r.returncode == 0, r.stdout + r.stderr
    # the plug-in codec stored the scaled tensor as a factor and nothing else
    r = run(["du", "--json"], plugin_path, store)
    assert json.loads(r.stdout)["models"]["half"]["stored"] < base.nbytes / 100


def test_store_written_with_a_plugin_codec_needs_the_plugin(plugin_path: Path, tmp_path: Path) -> None:
    """A chunk names its codec; without the plug-in installed, reading it is a clear error."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((256, 256)).astype(np.float32)
    for n, arr in (("a", base), ("b", base * np.float32(3.0))):
        (tmp_path / n).mkdir()
        np.save(tmp_path / n / "w.npy", arr)
    store = tmp_path / "store"
    run(["init"], plugin_path, store)
    run(["import", str(tmp_path / "a"), "--model", "a"], plugin_path, store)
    r = run(["import", str(tmp_path / "b"), "--model", "b", "--parent", "a", "--updates", "example-scale"],
            plugin_path, store)
    assert r.returncode == 0, r.stderr
    r = run(["export", "b", str(tmp_path / "out")], Path("/nonexistent"), store)
    assert r.returncode != 0 and "example-scale" in r.stderr and "plug-in" in r.stderr


def test_the_plugin_passes_the_conformance_suites(plugin_path: Path) -> None:
    """The plug-in's tests/ subclass FormatTests and CodecTests; run them where it is installed."""
    tests = plugin_path.parent / "src" / "tests"
    env = {k: v for k, v in os.environ.items() if k != "MODELFS_STORE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_path), env.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider",
                        str(tests)], cwd=tests.parent, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= 10, r.stdout[-2000:]
    assert "skipped" not in r.stdout

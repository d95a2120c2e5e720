"""A `modelfs import` killed with SIGKILL part way leaves the store as it was.

The import runs as a real subprocess on a real LMDB store; it is killed once the store file
has grown (chunks are being written), at two different points. After each kill: fsck is
clean, no half version is visible, gc removes the orphaned chunks; finally the same
import succeeds and exports byte-exact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelfs.store import LmdbStore

pytestmark = pytest.mark.slow


def _big_dir(root: Path, minilm_dir: Path) -> Path:
    """The MiniLM checkpoint plus ~300 MB of random fp32 weights (incompressible: slow to store)."""
    from safetensors.numpy import save_file

    d = root / "big"
    shutil.copytree(minilm_dir, d)
    rng = np.random.default_rng(0)
    save_file({f"block.{i}.weight": np.frombuffer(rng.bytes(25 << 20), dtype=np.float32).reshape(-1, 1024)
               for i in range(12)}, str(d / "extra.safetensors"))
    return d


def _kill_when(argv: list[str], ready: Callable[[], bool], timeout: float = 120) -> int:
    """Start the import, SIGKILL it as soon as `ready()` holds; return its exit status."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _file_grew(path: Path, by: int) -> Callable[[], bool]:
    """Pages are being written (the commit of a chunk batch may or may not have completed)."""
    start = path.stat().st_size
    return lambda: path.stat().st_size >= start + by


def _chunks_committed(store: LmdbStore, more_than: int) -> Callable[[], bool]:
    """At least one batch of the import's chunks is committed: orphans exist if it dies now."""
    with store.read() as txn:
        start = sum(1 for _ in txn.keys("chunks"))

    def ready() -> bool:
        with store.read() as txn:
            return sum(1 for _ in txn.keys("chunks")) > start + more_than
    return ready


def test_sigkill_during_import_leaves_no_half_version(
        tmp_path: Path, minilm_dir: Path, cli: Callable[..., object], modelfs_cmd: list[str],
        blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    store = tmp_path / "store"
    big = _big_dir(tmp_path, minilm_dir)
    assert cli("init", store=store).returncode == 0  # type: ignore[attr-defined]
    r = cli("import", minilm_dir, "--model", "base", store=store)
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    before = json.loads(cli("lineage", "--json", store=store).stdout)  # type: ignore[attr-defined]
    data_mdb = store / "data.mdb"
    argv = modelfs_cmd + ["--store", str(store), "import", str(big), "--model", "big", "--parent", "base"]

    for point in ("pages written", "chunks committed"):
        if point == "pages written":  # early: the first batch of chunks is being written
            rc = _kill_when(argv, _file_grew(data_mdb, 16 << 20))
        else:  # later: some batches committed, the version not yet
            reader = LmdbStore(store, readonly=True)
            try:
                rc = _kill_when(argv, _chunks_committed(reader, more_than=40))
            finally:
                reader.close()
        assert rc == -signal.SIGKILL, f"the import was not killed part way ({point}, exit {rc})"

        fsck = cli("fsck", "--json", store=store)
        assert fsck.returncode == 0, fsck.stderr  # type: ignore[attr-defined]
        report = json.loads(fsck.stdout)  # type: ignore[attr-defined]
        assert report["ok"] and report["errors"] == []
        if point == "chunks committed":
            assert report["unreferenced_chunks"] > 40  # the killed import did write chunks ...
        assert json.loads(cli("lineage", "--json", store=store).stdout) == before  # type: ignore[attr-defined]
        log = cli("log", "big", store=store)  # ... but no version of them is visible
        assert log.returncode != 0 and "unknown model" in log.stderr  # type: ignore[attr-defined]
        show = cli("show", "base", "--json", store=store)
        assert json.loads(show.stdout)["children"] == []  # type: ignore[attr-defined]

        gc = cli("gc", "--json", store=store)
        assert gc.returncode == 0, gc.stderr  # type: ignore[attr-defined]
        removed = json.loads(gc.stdout)  # type: ignore[attr-defined]
        assert removed["chunks_removed"] == report["unreferenced_chunks"]
        after = json.loads(cli("fsck", "--json", store=store).stdout)  # type: ignore[attr-defined]
        assert after["ok"] and after["unreferenced_chunks"] == 0 and after["unreferenced_files"] == 0

    r = cli("import", big, "--model", "big", "--parent", "base", "--json", store=store)
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    assert json.loads(r.stdout)["ref"] == "big@1"  # type: ignore[attr-defined]
    assert cli("export", "big", tmp_path / "out", store=store).returncode == 0  # type: ignore[attr-defined]
    assert blake3_of_dir(tmp_path / "out") == blake3_of_dir(big)
    final = json.loads(cli("fsck", "--json", store=store).stdout)  # type: ignore[attr-defined]
    assert final["ok"] and final["unreferenced_chunks"] == 0

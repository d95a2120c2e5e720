"""Architecture rules of the mount, as tests (dulwich's test_source.py style)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import modelfs

PKG = Path(modelfs.__file__).parent
ADAPTERS = {"fs/ops.py", "fs/boundary.py", "fs/daemon.py"}  # the only modules that may import pyfuse3 / trio


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_pyfuse3_and_trio_only_in_the_fs_adapter() -> None:
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        if rel not in ADAPTERS:
            assert not _imports(path) & {"pyfuse3", "trio"}, rel


def test_the_fs_core_never_reads_the_environment() -> None:
    for path in (PKG / "fs").rglob("*.py"):
        assert "os.environ" not in path.read_text() and "getenv" not in path.read_text(), path


def test_the_cli_does_not_load_pyfuse3_until_it_mounts() -> None:
    code = ("import sys, modelfs.cli.mount_cmds, modelfs.fs.control, modelfs.fs.tree; "
            "print(sorted(m for m in ('pyfuse3', 'trio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

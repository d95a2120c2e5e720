"""The durability suite (issue 8): faults reproduced end to end, through a real mount and the CLI.

Mounts are spawned as in tests/fs (its ``mounthelp``); small or read-only disks are real
tmpfs mounts, so these tests run as root.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fs"))  # mounthelp, repohelp


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """``tmpfs(name, mib)``: a fresh tmpfs of that size under tmp_path, unmounted at the end."""
    made: list[Path] = []

    def make(name: str, mib: int) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs",
                            str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here (root needed): {r.stderr.strip()}")
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in reversed(made):
            subprocess.run(["umount", "-l", str(d)], check=False)

"""The durability suite (issue 8): faults reproduced end to end, through a real mount and the CLI.

Mounts are spawned as in tests/fs (its ``mounthelp``); small or read-only disks are real
tmpfs mounts (the ``tmpfs`` fixture of tests/conftest.py), so these tests run as root.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fs"))  # mounthelp, repohelp

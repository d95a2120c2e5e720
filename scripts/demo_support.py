"""What every demo step shares: the `modelfs` it runs, shown as a user would type it."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent / "modelfs"


def run(*args: str, env: dict[str, str], ok: tuple[int, ...] = (0,), quiet: bool = False,
        merged: bool = False) -> str:
    """One modelfs command, shown as typed, then its output; exits the demo if it failed.

    ``merged`` keeps stdout and stderr in the order written (commands that print progress
    lines on stderr between their report lines) and returns both.
    """
    print(f"\n$ modelfs {' '.join(shlex.quote(a) for a in args)}", flush=True)
    out = subprocess.run([str(BIN), *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT if merged else subprocess.PIPE, text=True)
    if not quiet:
        sys.stdout.write(out.stdout)
        sys.stdout.flush()
    if out.stderr:
        sys.stderr.write(out.stderr)
    if out.returncode not in ok:
        last = (out.stderr or out.stdout or "").strip().splitlines()[-1:] or [""]
        raise SystemExit(f"modelfs {args[0]} exited {out.returncode}: {last[0]}")
    return out.stdout


def demo_env(store: Path) -> dict[str, str]:
    """The environment every step runs `modelfs` in: this store, and no hub to reach."""
    return {**os.environ, "MODELFS_STORE": str(store), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def standalone(doc: str | None, prefix: str) -> tuple[Path, dict[str, str]]:
    """A step run on its own: ``--workdir`` (default a new temp dir) and its store's env."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--workdir", type=Path, help="where to build (default: a new temp dir)")
    work = ap.parse_args().workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work, demo_env(work / "store")

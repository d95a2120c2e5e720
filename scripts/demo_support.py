"""What every demo step shares: the `modelfs` it runs, shown as a user would type it."""

from __future__ import annotations

import shlex
import subprocess
import sys
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

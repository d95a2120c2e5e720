"""Tiny real checkpoints and a real test command for the tests-over-the-lineage tests.

The command is a small Python script given ``{path}`` (a directory of a mount of the store):
it reads tensor ``w`` of ``model.safetensors`` there, prints its L2 norm as a JSON metrics
line, appends one line to a log (so tests count real runs) and passes when the norm is
below a threshold. ``--lib`` reads with the safetensors library (mmap through the mount);
without it, the header and data are parsed with the standard library (faster to start,
for the bisect tests that run it many times).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

FUSE_MISSING = ("FUSE is not usable here"
                if not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")) else "")

SCRIPT = r'''
import json, math, os, struct, sys
path, ref, log, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
lib = "--lib" in sys.argv[5:]
f = os.path.join(path, "model.safetensors")
if lib:
    from safetensors import safe_open
    with safe_open(f, framework="numpy") as st:
        w = st.get_tensor("w").astype("float64").ravel().tolist()
else:
    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        head = json.loads(fh.read(n))
        a, b = head["w"]["data_offsets"]
        fh.seek(8 + n + a)
        raw = fh.read(b - a)
    w = struct.unpack(f"<{len(raw) // 4}f", raw)
norm = math.sqrt(sum(x * x for x in w))
try:  # {path} must be read-only: a write into it is refused
    open(os.path.join(path, "written-by-test"), "w").close()
    wrote = "written"
except OSError as e:
    wrote = "refused"
with open(log, "a") as out:
    out.write(f"{ref} {path} {wrote}\n")
print("checked", ref)
print(json.dumps({"norm": round(norm, 6)}))
sys.exit(0 if norm < limit else 1)
'''


def write_script(d: Path) -> Path:
    p = d / "norm_check.py"
    p.write_text(SCRIPT)
    return p


def norm_cmd(script: Path, log: Path, limit: float, lib: bool = False) -> str:
    """The test's --cmd: placeholders left for modelfs to fill (it quotes them for the shell)."""
    q = shlex.quote
    return (f"{q(sys.executable)} {q(str(script))} {{path}} {{ref}} {q(str(log))} {limit:g}"
            + (" --lib" if lib else ""))


def tiny(d: Path, norm: float, seed: int = 0) -> Path:
    """A checkpoint dir whose tensor ``w`` (16 x 16 fp32) has L2 norm ``norm`` (plus a config)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 16)).astype(np.float64)
    w = (w * (norm / np.linalg.norm(w))).astype(np.float32)
    from safetensors.numpy import save_file

    d.mkdir(parents=True, exist_ok=True)
    save_file({"w": w, "b": np.zeros(16, dtype=np.float32)}, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"hidden": 16}\n')
    return d


def seeded(d: Path, seed: int) -> Path:
    """A checkpoint dir of one random 64 x 32 fp32 tensor ``w`` and a config naming the seed."""
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((64, 32)).astype(np.float32)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(f'{{"seed": {seed}}}')
    return d


def runs(log: Path) -> list[str]:
    """The refs the script ran on, in order (one log line per real run)."""
    return [ln.split()[0] for ln in log.read_text().splitlines()] if log.exists() else []

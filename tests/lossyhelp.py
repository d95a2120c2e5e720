"""A small real model for the lossy-mode tests: an MLP trained by Adam in numpy, and a held-out loss.

Real training (a few Adam steps on a fixed regression task), real safetensors files, and a real
test command: ``heldout.py {path}`` prints the mean squared error on held-out data as a JSON
metrics line (numpy and safetensors only, so it starts in a fraction of a second).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

DIMS = (256, 512, 32)

HELDOUT = r'''
import json, sys
import numpy as np
from safetensors.numpy import load_file
t = load_file(sys.argv[1] + "/model.safetensors")
rng = np.random.default_rng(7)
x = rng.standard_normal((512, IN)).astype(np.float32)
y = np.tanh(x @ np.linspace(-1, 1, IN * OUT, dtype=np.float32).reshape(IN, OUT) / 16)
h = np.maximum(x @ t["l1.weight"].astype(np.float32).T + t["l1.bias"].astype(np.float32), 0)
p = h @ t["l2.weight"].astype(np.float32).T + t["l2.bias"].astype(np.float32)
print(json.dumps({"loss": float(np.mean((p - y) ** 2))}))
'''.replace("IN", str(DIMS[0])).replace("OUT", str(DIMS[2]))


def heldout_cmd(d: Path) -> str:
    """The test command (`modelfs test add NAME --cmd ...`) computing the held-out loss."""
    script = d / "heldout.py"
    script.write_text(HELDOUT)
    return f"{sys.executable} {script} {{path}}"


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, DIMS[0])).astype(np.float32)
    w = np.linspace(-1, 1, DIMS[0] * DIMS[2], dtype=np.float32).reshape(DIMS[0], DIMS[2])
    return x, np.tanh(x @ w / 16)


def init_mlp(out: Path, seed: int = 0, dtype: str = "float32") -> Path:
    rng = np.random.default_rng(seed)
    t = {"l1.weight": rng.standard_normal((DIMS[1], DIMS[0])) / np.sqrt(DIMS[0]),
         "l1.bias": np.zeros(DIMS[1]),
         "l2.weight": rng.standard_normal((DIMS[2], DIMS[1])) / np.sqrt(DIMS[1]),
         "l2.bias": np.zeros(DIMS[2])}
    return _save(out, {k: v.astype(dtype) for k, v in t.items()}, step=0)


def _save(out: Path, t: dict[str, np.ndarray], step: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_file({**t, "step": np.array([step], dtype=np.int64)}, str(out / "model.safetensors"))
    (out / "config.json").write_text(f'{{"dims": {list(DIMS)}}}\n')
    return out


def train_mlp(parent: Path, out: Path, steps: int = 3, seed: int = 1, lr: float = 1e-3) -> Path:
    """`steps` Adam steps of the MLP in `parent` on minibatches drawn with `seed`."""
    src = load_file(str(parent / "model.safetensors"))
    dt = src["l1.weight"].dtype
    t = {k: v.astype(np.float32) for k, v in src.items() if k != "step"}
    m = {k: np.zeros_like(v) for k, v in t.items()}
    s = {k: np.zeros_like(v) for k, v in t.items()}
    x_all, y_all = _data(seed)
    rng = np.random.default_rng(seed)
    for i in range(1, steps + 1):
        idx = rng.choice(len(x_all), 64, replace=False)
        x, y = x_all[idx], y_all[idx]
        a = x @ t["l1.weight"].T + t["l1.bias"]
        h = np.maximum(a, 0)
        p = h @ t["l2.weight"].T + t["l2.bias"]
        gp = 2 * (p - y) / p.size
        g = {"l2.weight": gp.T @ h, "l2.bias": gp.sum(0)}
        gh = (gp @ t["l2.weight"]) * (a > 0)
        g["l1.weight"], g["l1.bias"] = gh.T @ x, gh.sum(0)
        for k in t:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            s[k] = 0.999 * s[k] + 0.001 * g[k] ** 2
            t[k] = t[k] - lr * (m[k] / (1 - 0.9 ** i)) / (np.sqrt(s[k] / (1 - 0.999 ** i)) + 1e-8)
    return _save(out, {k: v.astype(dt) for k, v in t.items()}, step=int(src["step"][0]) + steps)

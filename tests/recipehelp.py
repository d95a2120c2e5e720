"""Real recipes for recipe and cascade tests: a tiny MLP trained by AdamW, and a merge.

`train.py` loads ``{parent}/model.safetensors``, runs two AdamW steps (forward, backward,
update: a real training step, written in numpy so a run takes ~0.2 s on 2 cores where
importing torch alone takes 2 s) on data from a fixed seed or an ``--data`` file, and saves
the result into ``{out}``. `merge.py` averages its parents. Both append the model's name to a
count file when they finish, so a test knows how many times each node ran.
"""

from __future__ import annotations

import contextlib
import io
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from modelfs.repo import Repo

TRAIN = r'''
import argparse, json, sys, time
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file, save_file

ap = argparse.ArgumentParser()
ap.add_argument("parent"); ap.add_argument("out")
ap.add_argument("--count", required=True); ap.add_argument("--name", required=True)
ap.add_argument("--seed", type=int, default=0); ap.add_argument("--data")
ap.add_argument("--sleep", type=float, default=0.0)
ap.add_argument("--fail", action="store_true"); ap.add_argument("--nothing", action="store_true")
a = ap.parse_args()
if a.sleep:
    time.sleep(a.sleep)
if a.fail:
    print(f"training {a.name}: loss is nan at step 1", file=sys.stderr)
    sys.exit(3)
p = {k: v.astype(np.float32) for k, v in load_file(f"{a.parent}/model.safetensors").items()}
rng = np.random.default_rng(a.seed)
if a.data:
    X = np.load(a.data).astype(np.float32)
else:
    X = rng.standard_normal((64, p["fc1.weight"].shape[1])).astype(np.float32)
Y = np.sin(X[:, : p["fc2.weight"].shape[0]])
m = {k: np.zeros_like(v) for k, v in p.items()}
s = {k: np.zeros_like(v) for k, v in p.items()}
lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 1e-2
for t in (1, 2):
    h = X @ p["fc1.weight"].T + p["fc1.bias"]
    act = np.maximum(h, 0)
    yhat = act @ p["fc2.weight"].T + p["fc2.bias"]
    loss = float(((yhat - Y) ** 2).mean())
    d = 2 * (yhat - Y) / Y.size
    dh = (d @ p["fc2.weight"]) * (h > 0)
    g = {"fc2.weight": d.T @ act, "fc2.bias": d.sum(0), "fc1.weight": dh.T @ X, "fc1.bias": dh.sum(0)}
    for k in p:
        p[k] *= 1 - lr * wd
        m[k] = b1 * m[k] + (1 - b1) * g[k]
        s[k] = b2 * s[k] + (1 - b2) * g[k] ** 2
        p[k] -= lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(s[k] / (1 - b2 ** t)) + eps)
if not a.nothing:
    save_file({k: v.astype(np.float32) for k, v in p.items()}, f"{a.out}/model.safetensors",
              metadata={"format": "pt"})
    Path(a.out, "config.json").write_text(json.dumps({"trained_from": a.parent, "seed": a.seed}) + "\n")
with open(a.count, "a") as f:
    f.write(a.name + "\n")
print(json.dumps({"loss": loss}))
'''

MERGE = r'''
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
out, count, name, *parents = sys.argv[1:]
ws = [load_file(f"{p}/model.safetensors") for p in parents]
save_file({k: (sum(w[k] for w in ws) / len(ws)).astype(np.float32) for k in ws[0]},
          f"{out}/model.safetensors", metadata={"format": "pt"})
with open(count, "a") as f:
    f.write(name + "\n")
'''

# A real check on a version: the held-out loss of the MLP in {path} below a threshold.
LOSS_CHECK = r'''
import json, sys
import numpy as np
from safetensors.numpy import load_file
p = load_file(f"{sys.argv[1]}/model.safetensors")
X = np.random.default_rng(99).standard_normal((256, p["fc1.weight"].shape[1])).astype(np.float32)
Y = np.sin(X[:, : p["fc2.weight"].shape[0]])
yhat = np.maximum(X @ p["fc1.weight"].T + p["fc1.bias"], 0) @ p["fc2.weight"].T + p["fc2.bias"]
loss = float(((yhat - Y) ** 2).mean())
print(json.dumps({"loss": loss}))
sys.exit(0 if loss < float(sys.argv[2]) else 1)
'''


@dataclass
class Scripts:
    dir: Path
    count: Path  # one line per finished recipe run: the model's name

    @property
    def train(self) -> Path:
        return self.dir / "train.py"

    def train_cmd(self, *extra: str) -> str:
        """A recipe command training {parent} into {out}."""
        return " ".join([sys.executable, str(self.train), "{parent}", "{out}", "--count", str(self.count),
                         "--name", "{model}", *extra])

    def merge_cmd(self) -> str:
        return f"{sys.executable} {self.dir / 'merge.py'} {{out}} {self.count} {{model}} {{parents}}"

    def check_cmd(self, threshold: float) -> str:
        return f"{sys.executable} {self.dir / 'check.py'} {{path}} {threshold}"

    def runs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.count.exists():
            for line in self.count.read_text().split():
                out[line] = out.get(line, 0) + 1
        return out

    def run(self, cmd: str, parents: list[Path], out: Path, model: str) -> Path:
        """Run a recipe command on plain directories (to build a starting lineage, or to compare).

        A script run by this Python runs in this process (runpy): the same code, without
        paying an interpreter start per model on a busy 2-core machine."""
        out.mkdir(parents=True)
        line = cmd.replace("{parents}", " ".join(map(str, parents))).replace(
            "{parent}", str(parents[0])).replace("{out}", str(out)).replace("{model}", model)
        argv = shlex.split(line)
        if argv[0] == sys.executable and argv[1].endswith(".py"):
            saved = sys.argv
            sys.argv = argv[1:]
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    runpy.run_path(argv[1], run_name="__main__")
            finally:
                sys.argv = saved
        else:
            subprocess.run(line, shell=True, check=True, capture_output=True)
        return out


def scripts(tmp: Path) -> Scripts:
    d = tmp / "recipes"
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.py").write_text(TRAIN)
    (d / "merge.py").write_text(MERGE)
    (d / "check.py").write_text(LOSS_CHECK)
    return Scripts(d, tmp / "runs.txt")


def tiny_mlp(out: Path, seed: int, d_in: int = 16, hidden: int = 32, d_out: int = 4) -> Path:
    """A freshly initialised MLP (what a base model's first version is here)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    save_file({"fc1.weight": (rng.standard_normal((hidden, d_in)) / np.sqrt(d_in)).astype(np.float32),
               "fc1.bias": np.zeros(hidden, np.float32),
               "fc2.weight": (rng.standard_normal((d_out, hidden)) / np.sqrt(hidden)).astype(np.float32),
               "fc2.bias": np.zeros(d_out, np.float32)}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


@dataclass
class Lineage:
    repo: Repo
    store: Path
    s: Scripts
    tmp: Path


def build_lineage(tmp: Path, models: dict[str, tuple[list[str], str | None]],
                  recipes: bool = True) -> Lineage:
    """A store with `base@1` (a fresh MLP) and each model of `models` (name -> (parent models,
    recipe command or None)), made by running its recipe on its parents' plain directories,
    imported with those parents and, when `recipes`, given that recipe. In order given."""
    from modelfs.ops.recipes import Recipes

    s = scripts(tmp)
    store = tmp / "store"
    repo = Repo.init(store)
    dirs = {"base": tiny_mlp(tmp / "src" / "base", 0)}
    repo.import_dir(dirs["base"], "base")
    for name, (parents, cmd) in models.items():
        dirs[name] = s.run(cmd or s.train_cmd(), [dirs[p] for p in parents], tmp / "src" / name, name)
        repo.import_dir(dirs[name], name, parents=parents, how="merge" if len(parents) > 1 else "finetune",
                        infer_parent=False)
        if recipes and cmd is not None:
            Recipes(repo).set(name, cmd)
    s.count.unlink(missing_ok=True)  # count only what the test runs
    return Lineage(repo, store, s, tmp)


def new_base(lin: Lineage, seed: int = 7) -> None:
    """base@2: a new version of the root (what starts a cascade)."""
    lin.repo.import_dir(tiny_mlp(lin.tmp / "src" / f"base-{seed}", seed), "base")

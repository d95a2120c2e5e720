"""Benchmark for the lineage at work (docs/benchmarks-lineage-ops.md), in parts.

- ``cascade``: a cascading update over a lineage of 12 descendants of one base (fine-tunes,
  their children, merges of merges), every recipe a real CPU training step (two AdamW steps
  on an MLP, numpy) or a real merge, run with the ``local`` executor and then with ``ray``
  (a private local instance on loopback). Reported: wall time, the time modelfs itself
  spent (planning, committing the new versions, recording the cascade, waiting for the mount
  to show a new version) and the time in the recipes, per executor.

Other parts (parent inference at 10 / 100 / 1,000 models) add a function to ``PARTS``.
Each part writes OUT/<part>.json and its own block of the markdown section, between
``<!-- part:NAME -->`` markers, so running one part leaves the others' numbers alone.

    .venv/bin/python scripts/bench_lineage_ops.py --out bench-out/lineage-ops [--parts cascade]
    .venv/bin/python scripts/bench_doc.py      # joins the sections into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})  # local Ray on loopback only

from benchlib.common import ROOT, loadavg, log, machine_info  # noqa: E402

DOC = ROOT / "docs" / "benchmarks-lineage-ops.md"
TITLE = "## The lineage at work: cascades and parent inference (`scripts/bench_lineage_ops.py`)"

TRAIN = r'''
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
parent, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = {k: v.astype(np.float32) for k, v in load_file(f"{parent}/model.safetensors").items()}
rng = np.random.default_rng(seed)
X = rng.standard_normal((128, p["fc1.weight"].shape[1])).astype(np.float32)
Y = np.tanh(X[:, : p["fc2.weight"].shape[0]])
m = {k: np.zeros_like(v) for k, v in p.items()}
s = {k: np.zeros_like(v) for k, v in p.items()}
lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 1e-2
for t in (1, 2):
    h = X @ p["fc1.weight"].T + p["fc1.bias"]
    a = np.maximum(h, 0)
    d = 2 * (a @ p["fc2.weight"].T + p["fc2.bias"] - Y) / Y.size
    dh = (d @ p["fc2.weight"]) * (h > 0)
    g = {"fc2.weight": d.T @ a, "fc2.bias": d.sum(0), "fc1.weight": dh.T @ X, "fc1.bias": dh.sum(0)}
    for k in p:
        p[k] *= 1 - lr * wd
        m[k] = b1 * m[k] + (1 - b1) * g[k]
        s[k] = b2 * s[k] + (1 - b2) * g[k] ** 2
        p[k] -= lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(s[k] / (1 - b2 ** t)) + eps)
save_file(p, f"{out}/model.safetensors", metadata={"format": "pt"})
'''

MERGE = r'''
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
out, *parents = sys.argv[1:]
ws = [load_file(f"{q}/model.safetensors") for q in parents]
save_file({k: (sum(w[k] for w in ws) / len(ws)).astype(np.float32) for k in ws[0]},
          f"{out}/model.safetensors", metadata={"format": "pt"})
'''

# name -> (parents, kind): 12 descendants of base, three levels of fine-tunes and merges
LINEAGE: dict[str, tuple[list[str], str]] = {
    "ft-a": (["base"], "train"), "ft-b": (["base"], "train"), "ft-c": (["base"], "train"),
    "ft-d": (["base"], "train"), "ft-a2": (["ft-a"], "train"), "ft-b2": (["ft-b"], "train"),
    "ft-c2": (["ft-c"], "train"), "ft-d2": (["ft-d"], "train"), "avg-ab": (["ft-a2", "ft-b2"], "merge"),
    "avg-cd": (["ft-c2", "ft-d2"], "merge"), "avg-all": (["avg-ab", "avg-cd"], "merge"),
    "ft-all": (["avg-all"], "train"),
}


def _mlp(out: Path, seed: int, d_in: int, hidden: int, d_out: int) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    save_file({"fc1.weight": (rng.standard_normal((hidden, d_in)) / np.sqrt(d_in)).astype(np.float32),
               "fc1.bias": np.zeros(hidden, np.float32),
               "fc2.weight": (rng.standard_normal((d_out, hidden)) / np.sqrt(hidden)).astype(np.float32),
               "fc2.bias": np.zeros(d_out, np.float32)}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def bench_cascade(out: Path, jobs: int = 2, hidden: int = 2048, executors: tuple[str, ...] = ("local", "ray"),
                  ) -> tuple[dict[str, Any], str]:
    """A 12-node cascade, once per executor, on one store (a new base version before each)."""
    from modelfs.cli.version_dirs import MountedVersions
    from modelfs.ops.cascade import make_plan
    from modelfs.ops.cascade_run import run_cascade
    from modelfs.ops.executors import get_executor
    from modelfs.ops.recipes import Recipe, Recipes, make_version
    from modelfs.repo import Repo

    work = Path(tempfile.mkdtemp(prefix="cascade-", dir=out))
    (work / "train.py").write_text(TRAIN)
    (work / "merge.py").write_text(MERGE)
    cmds = {"train": f"{sys.executable} {work / 'train.py'} {{parent}} {{out}} {{version}}",
            "merge": f"{sys.executable} {work / 'merge.py'} {{out}} {{parents}}"}
    repo = Repo.init(work / "store")
    d_in, d_out = 1024, 64
    repo.import_dir(_mlp(work / "src" / "base1", 0, d_in, hidden, d_out), "base")
    size = repo.resolve("base").logical_size
    log(f"cascade: building the lineage (12 descendants of a {size / 1e6:.1f} MB MLP)")
    t0 = time.perf_counter()
    ex = get_executor("local", 1)
    try:
        with MountedVersions(work / "store") as dirs:
            for name, (parents, kind) in LINEAGE.items():
                r = Recipe(name, cmds[kind], how="merge" if kind == "merge" else "finetune")
                make_version(repo, r, [repo.resolve(p) for p in parents], dirs, ex)
                Recipes(repo).set(name, cmds[kind], how=r.how)
    finally:
        ex.close()
    build = time.perf_counter() - t0
    runs: dict[str, Any] = {}
    for i, name in enumerate(executors):
        repo.import_dir(_mlp(work / "src" / f"base{i + 2}", i + 2, d_in, hidden, d_out), "base")
        plan = make_plan(repo, "base")
        assert len(plan.nodes) == len(LINEAGE), plan.nodes
        t0 = time.perf_counter()
        ex = get_executor(name, jobs)
        started = time.perf_counter() - t0
        log(f"cascade: {name} executor ({jobs} slots) started in {started:.1f} s")
        try:
            with MountedVersions(work / "store") as dirs:
                rep = run_cascade(repo, plan, dirs, ex, executor_name=name, run_tests=False)
        finally:
            ex.close()
        assert not rep.failed, rep.failed
        runs[name] = {"executor_start_s": round(started, 2), "wall_s": round(rep.wall, 2),
                      "modelfs_s": round(rep.modelfs_seconds, 2), "recipes_s": round(rep.recipe_seconds, 2),
                      "nodes": rep.runs, "modelfs_per_node_s": round(rep.modelfs_seconds / rep.runs, 3)}
        log(f"cascade: {name}: {runs[name]}")
    repo.close()
    shutil.rmtree(work, ignore_errors=True)
    result = {"descendants": len(LINEAGE), "model_bytes": size, "jobs": jobs, "build_s": round(build, 2),
              "runs": runs}
    return result, _cascade_md(result)


def _cascade_md(r: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| `{name}` | {x['executor_start_s']:.1f} s | **{x['wall_s']:.1f} s** | {x['modelfs_s']:.1f} s "
        f"({x['modelfs_per_node_s'] * 1000:.0f} ms a node) | {x['recipes_s']:.1f} s |"
        for name, x in r["runs"].items())
    return f"""### Cascading update over {r['descendants']} descendants

The lineage: one base (an MLP, {r['model_bytes'] / 1e6:.1f} MB of fp32 safetensors) with four
fine-tunes, a fine-tune of each, two weight-average merges of those, a merge of the merges
and a fine-tune of that ({r['descendants']} descendants, three merges waiting for two parents
each). Every recipe is real CPU work in a fresh Python: two AdamW steps on a batch of 128
(numpy), or an average of its parents. A new base version, then `run_cascade` (what
`modelfs update base -j {r['jobs']}` runs) with each executor, {r['jobs']} slots, parents read
through a private read-only mount of the store. (Building the lineage one recipe at a time
took {r['build_s']:.1f} s.)

| executor | start | wall | in modelfs | in recipes (summed over slots) |
|---|---:|---:|---:|---:|
{rows}

"In modelfs" is the cascade's own work on the driver: planning, hashing inputs, waiting for
a version committed a moment ago to appear in the mount (its refresh interval is 0.5 s),
committing each new version (diffed against its previous version) and recording each node
in the store. The rest of the wall time is the recipes running, {r['jobs']} at a time, where
the plan allows (a merge waits for both parents). Ray's start is a private local instance
(`ray.init`, loopback); each recipe is one Ray task that runs the same `bash -c` job.
"""


def bench_inference(out: Path) -> tuple[dict[str, Any], str]:
    """Parent inference at 10, 100 and 1,000 models (scripts/benchlib/inference.py)."""
    from benchlib.inference import bench_inference as run

    return run(out)


PARTS: dict[str, Callable[[Path], tuple[dict[str, Any], str]]] = {"cascade": bench_cascade,
                                                                   "inference": bench_inference}


def _write_doc(blocks: dict[str, tuple[str, list[float], list[float]]], info: dict[str, Any]) -> None:
    """Replace the run parts' blocks in the section, keeping the others' as they were."""
    text = DOC.read_text() if DOC.exists() else f"{TITLE}\n"
    for name, (md, load, load_end) in blocks.items():
        block = f"<!-- part:{name} -->\n{md.strip()}\n\nMeasured {info['date']} on {info['cpu']}, " \
                f"{info['cores']} cores, Python {info['python']}, 1-minute load average {load[0]} at start, " \
                f"{load_end[0]} at end (2 cores: above 2, other work shared the CPUs and the times move " \
                f"with it).\n<!-- /part:{name} -->"
        pat = re.compile(rf"<!-- part:{name} -->.*?<!-- /part:{name} -->", re.S)
        text = pat.sub(lambda _m, b=block: b, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "lineage-ops")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--no-doc", action="store_true", help="Do not touch docs/benchmarks-lineage-ops.md.")
    a = ap.parse_args()
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"bench_lineage_ops: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}",
              file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    blocks: dict[str, tuple[str, list[float], list[float]]] = {}
    for name in parts:
        load = loadavg()
        result, md = PARTS[name](a.out)
        load_end = loadavg()
        (a.out / f"{name}.json").write_text(json.dumps(
            {"machine": info, "load": load, "load_end": load_end, name: result}, indent=1) + "\n")
        blocks[name] = (md, load, load_end)
        log(f"{name}: wrote {a.out / f'{name}.json'}")
    if not a.no_doc:
        _write_doc(blocks, info)
        log(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

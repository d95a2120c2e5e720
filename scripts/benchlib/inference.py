"""Parent inference at 10, 100 and 1,000 models: time per import's inference, and accuracy.

The lineage is synthetic and has a known answer: a few bases of one architecture (the hard
case: every version shares every tensor shape, so the signature index narrows nothing),
then models made one at a time from a random existing one: fine-tunes (every element moved
by about 1 % of the weights' scale), fp16 casts, and weight averages of two siblings. Each is
imported with no parent, as a user would; the inferred parents are compared with the truth.
At each checkpoint (the store holding N models) 20 new models are put to `infer_parents`
alone, timed, and not imported. Part ``inference`` of scripts/bench_lineage_ops.py.
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib.common import log

SHAPES = {"layers.0.attn.weight": (128, 128), "layers.0.mlp.weight": (256, 128),
          "layers.0.norm.weight": (128,), "head.weight": (16, 128)}
STEP = 5e-4  # a fine-tune's change per element (weights have scale 0.05)
PROBES = 20


class Lineage:
    """Synthetic models with their true parents, written as safetensors directories."""

    def __init__(self, root: Path, bases: int, seed: int = 0) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.pick = random.Random(seed)
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        self.truth: dict[str, list[str]] = {}
        self.children: dict[str, list[str]] = {}
        self.bases = bases
        self.kinds: dict[str, int] = {"base": 0, "finetune": 0, "cast": 0, "merge": 0}
        self.merged: set[tuple[str, str]] = set()
        self.cast: set[str] = set()

    def _tune(self, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: (v.astype(np.float32) + self.rng.standard_normal(v.shape).astype(np.float32) * STEP
                    ).astype(v.dtype) for k, v in w.items()}

    def make(self, name: str) -> tuple[Path, list[str], str]:
        """The next model: its directory and its true parents (by model name)."""
        fp32 = [m for m in self.weights if self.weights[m]["head.weight"].dtype == np.float32]
        roll = self.pick.random()
        if len(self.weights) < self.bases:
            w = {k: (self.rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in SHAPES.items()}
            parents, kind = [], "base"
        elif roll < 0.06 and (uncast := [m for m in fp32 if m not in self.cast]):
            p = self.pick.choice(uncast)  # a second cast of one model would be its first, byte for byte
            self.cast.add(p)
            w, parents, kind = {k: v.astype(np.float16) for k, v in self.weights[p].items()}, [p], "cast"
        elif roll < 0.12 and (pairs := [c for c in self.children.values()
                                        if sum(1 for m in c if m in fp32) >= 2]):
            a, b = sorted(self.pick.sample([m for m in self.pick.choice(pairs) if m in fp32], 2))
            if (a, b) in self.merged:  # the same average twice would be two identical models
                return self.make(name)
            self.merged.add((a, b))
            w = {k: ((self.weights[a][k] + self.weights[b][k]) / 2).astype(np.float32) for k in SHAPES}
            parents, kind = [a, b], "merge"
        else:
            p = self.pick.choice(list(self.weights))
            w, parents, kind = self._tune(self.weights[p]), [p], "finetune"
        return self._save(name, w), parents, kind

    def _save(self, name: str, w: dict[str, np.ndarray]) -> Path:
        from safetensors.numpy import save_file

        d = self.root / name
        d.mkdir(parents=True)
        save_file(w, str(d / "model.safetensors"))
        self._pending = (name, w)
        return d

    def keep(self, name: str, parents: list[str], kind: str) -> None:
        self.weights[name] = self._pending[1]
        self.truth[name] = parents
        self.kinds[kind] += 1
        for p in parents[:1]:
            self.children.setdefault(p, []).append(name)


def bench_inference(out: Path, sizes: tuple[int, ...] = (10, 100, 1000), bases: int = 4,
                    ) -> tuple[dict[str, Any], str]:
    from modelfs.repo import Repo

    work = Path(tempfile.mkdtemp(prefix="inference-", dir=out))
    lin = Lineage(work / "src", bases)
    repo = Repo.init(work / "store")
    made = right = 0
    wrong: list[str] = []
    checkpoints: list[dict[str, Any]] = []
    import_s: list[float] = []
    try:
        for n in sizes:
            while made < n:
                name = f"m{made:04d}"
                src, parents, kind = lin.make(name)
                t0 = time.perf_counter()
                v = repo.import_dir(src, name)
                import_s.append(time.perf_counter() - t0)
                got = sorted(repo.version(p).model for p in v.derived_from)
                right += got == sorted(parents)
                if got != sorted(parents) and len(wrong) < 10:
                    wrong.append(f"{name} ({kind}): true {parents}, inferred {got}")
                lin.keep(name, parents, kind)
                made += 1
            times, cpu, ok = [], [], 0
            for i in range(PROBES):
                probe = f"probe{n}-{i}"
                src, parents, _ = lin.make(probe)
                files = {"model.safetensors": src / "model.safetensors"}
                t0, c0 = time.perf_counter(), time.process_time()
                found = repo.infer_parents(files)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                got = sorted(p.model for p in found.parents) if found else []
                ok += got == sorted(parents)
                shutil.rmtree(src)
            times.sort()
            checkpoints.append({"models": n, "median_ms": round(1000 * statistics.median(times), 2),
                                "cpu_median_ms": round(1000 * statistics.median(cpu), 2),
                                "p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 2),
                                "max_ms": round(1000 * times[-1], 2), "probe_correct": ok, "probes": PROBES})
            log(f"inference: {n} models: {checkpoints[-1]}")
        total = repo.maintenance().du()["total"]
        with repo.read_txn() as txn:
            sketch_bytes = sum(len(k) + len(v) for k, v in txn.items("sketch"))
    finally:
        repo.close()
        shutil.rmtree(work, ignore_errors=True)
    result = {"shapes": {k: list(s) for k, s in SHAPES.items()}, "bases": bases, "step": STEP,
              "kinds": lin.kinds, "imports": made, "imports_correct": right, "wrong": wrong,
              "import_median_ms": round(1000 * statistics.median(import_s), 1),
              "logical_bytes": total["logical"], "stored_bytes": total["stored"], "sketch_bytes": sketch_bytes,
              "checkpoints": checkpoints}
    return result, _markdown(result)


def _markdown(r: dict[str, Any]) -> str:
    rows = "\n".join(f"| {c['models']:,} | **{c['median_ms']:.1f} ms** | {c['cpu_median_ms']:.1f} ms | "
                     f"{c['p95_ms']:.1f} ms | {c['max_ms']:.1f} ms | {c['probe_correct']} / {c['probes']} |"
                     for c in r["checkpoints"])
    k = r["kinds"]
    first, last = r["checkpoints"][0], r["checkpoints"][-1]
    growth = last["median_ms"] / first["median_ms"] if first["median_ms"] else float("nan")
    wrong = "".join(f"\n- {w}" for w in r["wrong"]) or " none."
    return f"""### Parent inference at 10, 100 and 1,000 models

A synthetic lineage with a known answer: {r['bases']} bases of one architecture (four fp32
tensors, 0.2 MB; every version shares every tensor shape, so the index's narrowing by shape
leaves every version of that architecture a candidate: the hard case), then models made one
at a time from a random existing one: {k['finetune']} fine-tunes (every element moved by
{r['step']:g}, about 1 % of the weights' scale), {k['cast']} fp16 casts and {k['merge']}
weight averages of two siblings. Each is imported with no parent (`modelfs import` without
`--parent`). At each size, {r['checkpoints'][0]['probes']} further new models are put to
inference alone (`Repo.infer_parents`: sketch the new file, the index, the digests, the full
sketches of the short list, the merge fit), timed:

| models in the store | inference, median | CPU, median | p95 | max | right parents (probes) |
|---:|---:|---:|---:|---:|---:|
{rows}

Of all {r['imports']:,} imports, **{r['imports_correct']:,}** got exactly their true parents
(both, for a merge). Inference at {last['models']:,} models takes {growth:.1f}x its time at
{first['models']:,}: the fixed work (parsing and sampling the new file, reading 16 full
sketches, fitting merges) dominates; what grows with the store is one cursor pass over the
digests of the versions whose layout matches (128 floats each here), a few microseconds
per version. The sketches take {r['sketch_bytes'] / 1e6:.1f} MB beside {r['stored_bytes'] / 1e6:.0f} MB
of stored chunks ({r['logical_bytes'] / 1e6:.0f} MB as full copies); on MiniLM a version's sketch
is about 110 KB, 0.1 % of its 91 MB. MGit's anchor for the same job: 7.5 s per inserted model at
23 models, 38.5 s at 736. A median import (storing the model too) took
{r['import_median_ms']:.0f} ms.

Wrong inferences:{wrong}
"""

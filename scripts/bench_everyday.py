"""What the everyday verbs cost (docs/everyday.md): the annotation overlay every read of a
version goes through, tag resolution, and prune on a long history.

A synthetic store of MODELS models x VERSIONS versions (small real safetensors files, so
every index the repo keeps is written as for a real import). Measured in the same run:

- reading every version (`all_versions`, what `lineage` and `find` do) with no annotations,
  then with every version annotated: the overlay's cost as a ratio to the plain read;
- resolving `M@N` against `M:TAG` (the grammar of lineage/refs.py, repo/naming.py);
- `prune --keep-last 10` of one model's history, then `gc`.

Writes bench-out/everyday.json and docs/benchmarks-everyday.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from modelfs.repo import Repo

ROOT = Path(__file__).resolve().parent.parent


def _best(fn: object, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--versions", type=int, default=100)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-everyday-"))
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"models": args.models, "versions_per_model": args.versions,
                              "load": os.getloadavg()[0], "cpus": os.cpu_count()}
    with Repo.init(work / "store") as repo:
        t = time.perf_counter()
        for m in range(args.models):
            for n in range(args.versions):
                d = work / "src"
                d.mkdir(exist_ok=True)
                save_file({"w": rng.standard_normal((16, 16)).astype(np.float32)}, str(d / "model.safetensors"))
                repo.commit_files(f"m{m}", {"model.safetensors": d / "model.safetensors"},
                                  message=f"step {n}", infer_parent=False)
        out["build_s"] = time.perf_counter() - t
        total = args.models * args.versions
        plain = _best(lambda: repo.all_versions())
        h = repo.history()
        for v in repo.all_versions():
            h.annotate(v, {"set": {"lr": 1e-4}, "note": "bench"})
        annotated = _best(lambda: repo.all_versions())
        out["all_versions_plain_ms"] = plain * 1e3
        out["all_versions_annotated_ms"] = annotated * 1e3
        out["overlay_ratio"] = annotated / plain
        h.tag(repo.resolve("m0@50"), "best")
        n = 2000
        by_number = _best(lambda: [repo.resolve("m0@50") for _ in range(n)], 3) / n
        by_tag = _best(lambda: [repo.resolve("m0:best") for _ in range(n)], 3) / n
        out["resolve_number_us"] = by_number * 1e6
        out["resolve_tag_us"] = by_tag * 1e6
        t = time.perf_counter()
        r = h.prune("m1", keep_last=10)
        out["prune_s"] = time.perf_counter() - t
        out["pruned_versions"] = len(r.removed)
        t = time.perf_counter()
        gc = repo.maintenance().gc()
        out["gc_s"] = time.perf_counter() - t
        out["gc_bytes_freed"] = gc["bytes_freed"]
        out["fsck_ok"] = repo.maintenance().fsck().ok
        out["total_versions"] = total
    (ROOT / "bench-out").mkdir(exist_ok=True)
    (ROOT / "bench-out" / "everyday.json").write_text(json.dumps(out, indent=1))
    md = f"""## Everyday verbs (issue 14)

`scripts/bench_everyday.py`: {args.models} models x {args.versions} versions of a small real
safetensors file ({out['total_versions']} versions), one run on {out['cpus']} CPUs, load
{out['load']:.1f} (other work shared the machine).

| what | measured |
|---|---|
| read every version (`all_versions`), no annotations | {out['all_versions_plain_ms']:.1f} ms |
| the same with every version annotated (the overlay) | {out['all_versions_annotated_ms']:.1f} ms ({out['overlay_ratio']:.2f}x) |
| resolve `M@N` | {out['resolve_number_us']:.0f} us |
| resolve `M:TAG` | {out['resolve_tag_us']:.0f} us |
| `prune --keep-last 10` of one model ({out['pruned_versions']} versions removed) | {out['prune_s']:.2f} s |
| `gc` after it | {out['gc_s']:.2f} s, {out['gc_bytes_freed']} bytes freed; fsck {'ok' if out['fsck_ok'] else 'FAILED'} |

The overlay is one extra LMDB read per version (a scan of the annotations table for
`all_versions`); a store without annotations pays the empty read only.
"""
    (ROOT / "docs" / "benchmarks-everyday.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

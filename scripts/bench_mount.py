#!/usr/bin/env python3
"""Mount benchmark (issues 3 and 4): reads through the FUSE mount against local disk, and
``save_pretrained`` into the mount against local disk, on a >= 1 GB checkpoint, in ONE run.

    .venv/bin/python scripts/bench_mount.py [--out bench-out] [--size-gb 1.1] [--quick]

1. Builds a GPT-2 style model from a ``transformers`` config sized to ``--size-gb`` of fp32
   (random init, seed 0) and a lineage of real derived versions: each child is the previous
   one after ONE real AdamW step (lr 5e-5, weight decay 0.01) on a tiny random-token batch
   (2 x 32 tokens, causal-LM loss), so every element moves as in a full fine-tune. Each is
   saved with ``save_pretrained`` (one safetensors file) and imported with
   ``Repo.import_dir`` as the next version of model ``gpt``: gpt@1 (base), gpt@2 (depth 1)
   ... gpt@7 (depth 6). The chunk delta depth actually reached is read from the chunk records.
2. Mounts the store (the mount daemon, ``modelfs mount``'s default settings) and measures, with
   ``sync; echo 3 > /proc/sys/vm/drop_caches`` before every cold run and the mount restarted
   (umount + mount, so the daemon's chunk cache is cold too): cold sequential read (1 MiB
   ``readinto`` loop) of the depth-1 and depth-6 file through the mount; the same file from
   local disk cold and warm; a warm re-read through the mount (page cache kept); one
   mid-size tensor with ``safe_open(...).get_tensor`` (mount cold vs local cold); and
   ``AutoModel.from_pretrained`` of the depth-6 directory (mount vs local, cold and warm).
   Each case runs ``--repeat`` times; the median is reported.
3. Issue 4: one more AdamW step gives a fine-tuned child; ``save_pretrained`` of it into
   ``<mnt>/gpt/`` (the head) against the same to local disk; stored bytes added
   (``du()`` before/after) against ``modelfs import`` of the same files into a copy of the
   store; time from ``save_pretrained`` returning (the last close) to the committed version.
   If the mount refuses writes (EROFS, before snapshot-on-write lands), that is recorded.
4. A py-spy profile (``py-spy record`` of the daemon, installed on first use into
   ``<out>/venv-pyspy``) of a cold depth-6 read, and of the mount write when it works,
   with the daemon's counters (xattr ``user.modelfs.counters``) and CPU time.

Results: ``<out>/bench_mount.json`` and ``docs/benchmarks-mount.md``. The lineage comes from
``modelfs.demo.gpt``, the mount is a ``modelfs.fs.handle.MountHandle`` (the tests' mount handle,
started with ``modelfs mount``'s default settings), the cases and the report live in
``scripts/benchlib/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.common import ROOT, loadavg, log, machine_info, read_file
from benchlib.mount import Mount
from benchlib.mount_cases import (
    MODEL,
    bench_export,
    bench_fuse_baseline,
    bench_reads,
    bench_write,
    build_lineage,
    cold_mount,
)
from benchlib.mount_report import TARGETS, TARGETS_READ, ratios, render
from benchlib.pyspy import make_profiler, pyspy

from modelfs.demo.gpt import WEIGHTS
from modelfs.fs.handle import force_unmount

# set before transformers is first imported (lazily, by the lineage builder)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no progress bars or notices in the log
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench-out"))
    ap.add_argument("--size-gb", type=float, default=1.1)
    ap.add_argument("--depth", type=int, default=6, help="lineage depth of the deepest version")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="~0.2 GB smoke run, 2 repeats")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the store and checkpoints under <out>/mount")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks-mount.md"))
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: rewrite --doc from <out>/bench_mount.json")
    args = ap.parse_args()
    if args.quick:
        args.size_gb, args.repeat = 0.2, 2
    if not args.render_only and os.geteuid() != 0:
        ap.error("needs root: it drops the page cache (/proc/sys/vm/drop_caches)")
    return args


def measure(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Build the lineage, then the read cases, a profile, the write case: the raw results."""
    work = out_dir / "mount"
    work.mkdir(parents=True, exist_ok=True)
    targets = {**TARGETS, **{f"read_{k}": v for k, v in TARGETS_READ.items()}}
    res: dict[str, Any] = {"args": vars(args), "machine": machine_info(), "load_start": loadavg(),
                           "targets": targets, "notes": [], "load_phases": {}}
    t_start = time.perf_counter()
    log(f"load average {res['load_start']}")
    exe = None if args.no_profile else pyspy(out_dir)
    profile = make_profiler(exe, out_dir)
    if not args.no_profile and exe is None:
        res["notes"].append("py-spy could not be installed: no profile")

    mnt = work / "mnt"
    if mnt.is_mount():
        force_unmount(mnt)
    tr = build_lineage(work, args.size_gb, args.depth, res)
    m = Mount(work / "store", mnt, work / "mount.log")
    try:
        m.start()
        res["load_phases"]["reads"] = loadavg()
        log(f"reads (load {res['load_phases']['reads']})")
        bench_reads(m, work, args.depth, args.repeat, res)
        log("export against cp")
        bench_export(work, args.depth, args.repeat, res)
        log("warm re-read through a trivial pyfuse3 file system")
        bench_fuse_baseline(work, args.repeat, res)
        res["profiles"] = []
        if profile is not None:
            log("profile: cold read of the deepest version under py-spy")
            deep = m.mnt / f"{MODEL}@{args.depth + 1}" / WEIGHTS
            res["profiles"].append(profile(m, lambda: read_file(deep), f"cold read depth {args.depth}",
                                           prepare=lambda: cold_mount(m)))
        res["load_phases"]["writes"] = loadavg()
        log(f"writes (load {res['load_phases']['writes']})")
        bench_write(m, tr, work, res, profile, args.repeat)
        if res["write"].get("profile"):
            res["profiles"].append(res["write"].pop("profile"))
    finally:
        m.stop()
        tr.close()
        if not args.keep:
            for d in (work / "store", work / "store-copy", work / "ckpt"):
                shutil.rmtree(d, ignore_errors=True)
    res["load_end"] = loadavg()
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["ratios"] = ratios(res, args.depth)
    return res


def main() -> int:
    args = parse_args()
    out_dir = Path(args.out).resolve()
    if args.render_only:
        res = json.loads((out_dir / "bench_mount.json").read_text())
    else:
        res = measure(args, out_dir)
        (out_dir / "bench_mount.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        log(f"done in {res['wall_s'] / 60:.1f} min; load {res['load_end']}; ratios {res['ratios']}")
    Path(args.doc).write_text(render(res, res["args"]["depth"]))
    log(f"wrote {args.doc}" + ("" if args.render_only else f" and {out_dir / 'bench_mount.json'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Lossy benchmark (issue 13): a real 12-version MiniLM lineage stored lossily behind the gate,
beside MGit's quantised-delta scheme and the lossless store, in one run.

- modelfs lossy: every version after the base imported with ``import_lossy`` and the gate's
  test ``heldout`` (scripts/benchlib/lossy_eval.py run as a real command on the original and the
  reconstruction, tolerance 0.5%); the base is exact by design.
- MGit's scheme as its paper and code describe it: the delta against the parent's
  reconstruction quantised with the fixed step 2 ln(1 + 1e-4), int64 codes, LZMA; kept when
  the held-out metric worsens by at most 2%, else the model is stored whole.
- the lossless store: plain ``import_dir`` of the same lineage.

Every version of both lossy schemes is then checked against the issue's bar: held-out metric
change < 0.5%, sentence-embedding cosine with the original > 0.9999, every changed tensor's
error < 10% of its change from its parent (relative L2). Also timed: a cold read (fresh repo,
empty chunk cache; store pages in the OS cache) of a lossy version against the same version
in the lossless store. Writes bench-out/lossy.json and docs/benchmarks-lossy.md.

    .venv/bin/python scripts/bench_lossy.py [--out bench-out]
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_storage import build_or_load_lineage, inventory, log
from benchlib.storage_report import machine

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6
MGIT_STEP = 2 * math.log(1 + 1e-4)
MGIT_ACCEPT = 0.02  # MGit keeps a delta when every test's metric worsens by at most 2%
TOLERANCE = 0.005
COSINE_MIN = 0.9999
CHANGE_LIMIT = 0.10


# ---------------------------------------------------------------- evaluation
class Evaluator:
    """The held-out metric and embeddings of a checkpoint directory, in this process."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        from benchlib import lossy_eval

        self.m = lossy_eval

    def __call__(self, path: Path) -> tuple[float, Any]:
        model, tok = self.m.load(path)
        emb = self.m.embeddings(model, tok)
        return self.m.heldout_loss(emb), emb


def cosine_min(a: Any, b: Any) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a, b, dim=-1).min())


def tensors_of(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def change_check(orig: dict[str, Any], recon: dict[str, Any], parent: dict[str, Any] | None) -> dict[str, Any]:
    """Check 2 on a whole version: each changed float tensor's ||recon - orig|| / ||orig - parent||,
    `parent` the parent's original tensors (the true change of the derivation)."""
    worst, failing, checked = 0.0, [], 0
    if parent is None:
        return {"max_error_ratio": 0.0, "failing_tensors": 0, "checked": 0}
    for name, t in orig.items():
        p = parent.get(name)
        if p is None or p.shape != t.shape or not t.is_floating_point():
            continue
        chg = float((t.double() - p.double()).norm())
        if chg == 0:
            continue
        checked += 1
        ratio = float((recon[name].double() - t.double()).norm()) / chg
        worst = max(worst, ratio)
        if ratio >= CHANGE_LIMIT:
            failing.append(name)
    return {"max_error_ratio": worst, "failing_tensors": len(failing), "checked": checked,
            "failing_examples": failing[:3]}


# ---------------------------------------------------------------- modelfs lossy and lossless
def bench_modelfs_lossy(versions: list[dict[str, Any]], out: Path, ev: Evaluator,
                        originals: dict[str, tuple[float, Any]]) -> dict[str, Any]:
    from modelfs.ops.checks import Checks
    from modelfs.ops.lossy import GateOptions, import_lossy
    from modelfs.repo import Repo

    store = out / "lossy-store"
    shutil.rmtree(store, ignore_errors=True)
    repo = Repo.init(store)
    eval_cmd = f"{sys.executable} {ROOT / 'scripts' / 'benchlib' / 'lossy_eval.py'} {{path}}"
    Checks(repo).add("heldout", eval_cmd)
    per: dict[str, Any] = {}
    recon_t: dict[str, dict[str, Any]] = {}
    dirs = {v["ref"]: v["dir"] for v in versions}
    t_all = time.perf_counter()
    try:
        for v in versions:
            t0 = time.perf_counter()
            before = repo.maintenance().du()["total"]["stored"] if v["parents"] else 0
            if not v["parents"]:
                got = repo.import_dir(Path(v["dir"]), v["model"], how=v["how"])
                rec: dict[str, Any] = {"decision": "exact (the base)"}
                lossy = False
            else:
                res = import_lossy(repo, Path(v["dir"]), v["model"], v["parents"],
                                   GateOptions(("heldout",), TOLERANCE), how=v["how"])
                got, lossy = res.version, res.decision.lossy
                rec = res.decision.record
            secs = time.perf_counter() - t0
            stored = repo.maintenance().du()["total"]["stored"] - before
            dest = out / "lossy-export" / v["ref"]
            shutil.rmtree(dest, ignore_errors=True)
            repo.export(got.id, dest)  # checked against the reconstruction's blake3
            loss, emb = ev(dest)
            recon_t[v["ref"]] = tensors_of(dest)
            # check 2 against the true change: from the parent's original, not its reconstruction
            parent = tensors_of(Path(dirs[v["parents"][0]])) if v["parents"] else None
            orig_loss, orig_emb = originals[v["ref"]]
            per[v["ref"]] = {
                "how": v["how"], "lossy": lossy, "decision": rec.get("decision"),
                "stored": stored, "import_s": round(secs, 2),
                "attempts": len(rec.get("attempts", [])),
                "metric_original": orig_loss, "metric_reconstruction": loss,
                "metric_change": abs(loss - orig_loss) / abs(orig_loss),
                "cosine_min": cosine_min(emb, orig_emb),
                "check2": change_check(tensors_of(Path(v["dir"])), recon_t[v["ref"]], parent),
                "steps": [rec.get("step_min"), rec.get("step_max")],
            }
            p = per[v["ref"]]
            log(f"lossy {v['ref']:<18} {'lossy' if lossy else 'exact'} {stored / MB:7.2f} MB  "
                f"metric {p['metric_change'] * 100:.3f}%  cos {p['cosine_min']:.6f}  "
                f"err/chg {p['check2']['max_error_ratio']:.3f}  {secs:.1f} s")
        total = repo.maintenance().du()["total"]["stored"]
        fsck = repo.maintenance().fsck()
    finally:
        repo.close()
    shutil.rmtree(out / "lossy-export", ignore_errors=True)
    return {"stored": total, "per_version": per, "fsck_ok": fsck.ok, "fsck_errors": fsck.errors[:3],
            "seconds": time.perf_counter() - t_all, "store": str(store)}


def bench_lossless(versions: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    from modelfs.repo import Repo

    store = out / "lossless-store"
    shutil.rmtree(store, ignore_errors=True)
    repo = Repo.init(store)
    try:
        for v in versions:
            repo.import_dir(Path(v["dir"]), v["model"], parents=v["parents"], how=v["how"])
        return {"stored": repo.maintenance().du()["total"]["stored"], "store": str(store)}
    finally:
        repo.close()


def cold_read(store: str, ref: str, runs: int = 3) -> dict[str, Any]:
    """Seconds to read every file of `ref` from a freshly opened repo (empty chunk cache)."""
    from modelfs.repo import Repo

    best = math.inf
    nbytes = 0
    for _ in range(runs):
        repo = Repo.open(store)
        try:
            v = repo.resolve(ref)
            t0 = time.perf_counter()
            nbytes = 0
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                for entry in v.files.values():
                    for piece in repo.iter_file(entry, pool):
                        nbytes += len(piece)
            best = min(best, time.perf_counter() - t0)
            codecs: dict[str, int] = {}
            for e in v.files.values():
                for t in repo.file_record(e).tensors():
                    for k in t.chunks:
                        c = repo.chunk_record(k).codec
                        codecs[c] = codecs.get(c, 0) + 1
        finally:
            repo.close()
    return {"seconds": best, "MBps": nbytes / MB / best, "bytes": nbytes, "codecs": codecs}


def mount_read(store: str, ref: str, work: Path, runs: int = 3) -> dict[str, Any]:
    """Seconds to read `ref`'s model.safetensors through a freshly started read-only mount
    (its chunk cache and the kernel's page cache for the mount both empty), 1 MiB reads."""
    from modelfs.fs.config import MountConfig
    from modelfs.fs.handle import MountHandle

    best, nbytes = math.inf, 0
    for i in range(runs):
        mnt = work / f"mnt-{i}"
        with MountHandle.start(Path(store), mnt, work / "mount.log", MountConfig(read_only=True)):
            t0 = time.perf_counter()
            nbytes = 0
            with open(mnt / ref / "model.safetensors", "rb", buffering=0) as f:
                while piece := f.read(1 << 20):
                    nbytes += len(piece)
            best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "MBps": nbytes / MB / best, "bytes": nbytes}


def decode_report(res: dict[str, Any], out: Path, ref: str = "minilm-ft@3") -> dict[str, Any]:
    """Cold reads of `ref` from the lossy and the lossless store, through the repo and the mount."""
    work = out / "lossy-mounts"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    d: dict[str, Any] = {"ref": ref, "lossy": cold_read(res["modelfs_lossy"]["store"], ref),
                         "lossless": cold_read(res["lossless"]["store"], ref)}
    try:
        d["mount_lossy"] = mount_read(res["modelfs_lossy"]["store"], ref, work)
        d["mount_lossless"] = mount_read(res["lossless"]["store"], ref, work)
    except Exception as e:  # noqa: BLE001 - no FUSE here is a result to report, not a crash
        d["mount_error"] = str(e).splitlines()[-1]
    shutil.rmtree(work, ignore_errors=True)
    return d


# ---------------------------------------------------------------- MGit's scheme
def bench_mgit(versions: list[dict[str, Any]], out: Path, ev: Evaluator,
               originals: dict[str, tuple[float, Any]]) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    recon: dict[str, dict[str, Any]] = {}
    dirs = {v["ref"]: v["dir"] for v in versions}
    seen_other: set[bytes] = set()
    per: dict[str, Any] = {}
    total = 0
    t_all = time.perf_counter()
    work = out / "mgit-work"
    for v in versions:
        src = Path(v["dir"])
        orig = tensors_of(src)
        other = 0
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name != "model.safetensors":
                data = f.read_bytes()
                if data not in seen_other:  # content addressed, as generous to MGit as to modelfs
                    seen_other.add(data)
                    other += len(lzma.compress(data))
        full = (src / "model.safetensors").stat().st_size
        parent = recon.get(v["parents"][0]) if v["parents"] else None
        if parent is None:
            recon[v["ref"]] = orig
            per[v["ref"]] = {"how": v["how"], "kept_delta": False, "stored": full + other}
            total += full + other
            continue
        t0 = time.perf_counter()
        rec: dict[str, Any] = {}
        delta_bytes = 0
        for name, t in orig.items():
            p = parent.get(name)
            if p is None or p.shape != t.shape or not t.is_floating_point():
                rec[name] = t
                delta_bytes += len(lzma.compress(t.numpy().tobytes() if t.dtype != torch.bfloat16
                                                 else t.view(torch.int16).numpy().tobytes()))
                continue
            codes = torch.round((t.double() - p.double()) / MGIT_STEP).to(torch.int64)
            rec[name] = (p.double() + codes.double() * MGIT_STEP).to(t.dtype)
            delta_bytes += len(lzma.compress(codes.numpy().tobytes(), preset=1))
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        save_file({k: x.contiguous() for k, x in rec.items()}, str(work / "model.safetensors"))
        loss, emb = ev(work)
        orig_loss, orig_emb = originals[v["ref"]]
        worsened = (loss - orig_loss) / abs(orig_loss)
        kept = worsened <= MGIT_ACCEPT
        stored = (delta_bytes if kept else full) + other
        total += stored
        recon[v["ref"]] = rec if kept else orig
        per[v["ref"]] = {
            "how": v["how"], "kept_delta": kept, "stored": stored,
            "metric_change": abs(loss - orig_loss) / abs(orig_loss), "metric_worsened": worsened,
            "cosine_min": cosine_min(emb, orig_emb) if kept else 1.0,
            "check2": (change_check(orig, rec, tensors_of(Path(dirs[v["parents"][0]]))) if kept
                       else {"max_error_ratio": 0.0, "failing_tensors": 0, "checked": 0}),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        p = per[v["ref"]]
        log(f"mgit  {v['ref']:<18} {'delta' if kept else 'full '} {stored / MB:7.2f} MB  "
            f"metric {p['metric_change'] * 100:.3f}%  cos {p['cosine_min']:.6f}  "
            f"err/chg {p['check2']['max_error_ratio']:.3f}")
    shutil.rmtree(work, ignore_errors=True)
    return {"stored": total, "per_version": per, "step": MGIT_STEP, "seconds": time.perf_counter() - t_all}


def passes(p: dict[str, Any]) -> dict[str, bool]:
    """The issue's bar for one version: metric < 0.5%, cosine > 0.9999, every error < 10% of its change."""
    return {"metric": p.get("metric_change", 0.0) < TOLERANCE,
            "cosine": p.get("cosine_min", 1.0) > COSINE_MIN,
            "change": p["check2"]["max_error_ratio"] < CHANGE_LIMIT if "check2" in p else True}


# ---------------------------------------------------------------- report
def write_markdown(res: dict[str, Any], doc: Path) -> None:
    full = res["full_copies"]
    m = res["machine"]
    lossy, mgit, exact = res["modelfs_lossy"], res["mgit"], res["lossless"]
    ratio = {k: full / res[k]["stored"] for k in ("modelfs_lossy", "mgit", "lossless")}
    lines = [
        "## Lossy storage behind an accuracy gate (issue 13)", "",
        f"Measured {res['when']} by `scripts/bench_lossy.py` on {m.get('cpu', '?')}, {m.get('cores', '?')} cores; "
        f"1-minute load average {m.get('load_average_1min_at_start', '?')} at start, {res['load_end']} at end "
        "(other work shared the machine; stored bytes do not move with load, times do).", "",
        f"Lineage: the real 12-version all-MiniLM-L6-v2 lineage of scripts/bench_storage.py (same builder "
        f"and cache), {full / MB:.1f} MB as full copies. Gate test: a held-out contrastive loss on "
        f"{len(res['heldout_pairs'])} sentence pairs never trained on (scripts/benchlib/lossy_eval.py, run "
        "as the gate's real command on the original and the reconstruction).", "",
        "| scheme | stored MB | ratio vs full copies | every version passes the bar | notes |",
        "| --- | ---: | ---: | --- | --- |",
        f"| full copies | {full / MB:.1f} | 1.00x | - | |",
        f"| modelfs lossless | {exact['stored'] / MB:.1f} | {ratio['lossless']:.2f}x | yes (bit-exact) | same run |",
        f"| MGit's scheme (step 2 ln(1+1e-4), int64 codes, LZMA, kept when the metric worsens <= 2%) | "
        f"{mgit['stored'] / MB:.1f} | {ratio['mgit']:.2f}x | {res['mgit_all_pass']} | "
        f"check 2 fails on {res['mgit_check2_fail']} of {res['mgit_deltas']} versions stored as deltas |",
        f"| **modelfs lossy** (qdelta, gate: metric within 0.5%, error < 10% of each tensor's change) | "
        f"{lossy['stored'] / MB:.1f} | **{ratio['modelfs_lossy']:.2f}x** | {res['lossy_all_pass']} | "
        f"fsck {'ok' if lossy['fsck_ok'] else 'FAILED'}; target >= 12x: {'met' if ratio['modelfs_lossy'] >= 12 else 'missed'} |",
        "", "Per version (metric change = |held-out loss of the reconstruction - the original's| / the original's; "
        "cosine = the smallest cosine between a held-out sentence's embedding from the reconstruction and from "
        "the original; err/chg = the largest reconstruction error of a changed tensor over its change from the "
        "parent's original, relative L2):", "",
        "| version | how | modelfs lossy | MB | metric | cosine | err/chg | MGit | MB | metric | cosine | err/chg | tensors >= 10% |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for ref, p in lossy["per_version"].items():
        g = mgit["per_version"].get(ref, {})
        c2 = g.get("check2", {})
        lines.append(
            f"| {ref} | {p['how']} | {'lossy' if p['lossy'] else 'exact'} | {p['stored'] / MB:.2f} | "
            f"{p['metric_change'] * 100:.3f}% | {p['cosine_min']:.6f} | {p['check2']['max_error_ratio']:.3f} | "
            f"{'delta' if g.get('kept_delta') else 'full'} | {g.get('stored', 0) / MB:.2f} | "
            f"{g.get('metric_change', 0) * 100:.3f}% | {g.get('cosine_min', 1):.6f} | "
            f"{c2.get('max_error_ratio', 0):.3f} | {c2.get('failing_tensors', 0)}/{c2.get('checked', 0)} |")
    d = res["decode"]
    lines += [
        "", f"Decode, a cold read of every file of {d['ref']} from a freshly opened repo (empty chunk cache; "
        "the store's pages in the OS cache, so this is decode cost, best of 3): "
        f"lossy store {d['lossy']['MBps']:.0f} MB/s ({d['lossy']['seconds']:.2f} s, chunks {d['lossy']['codecs']}), "
        f"lossless store {d['lossless']['MBps']:.0f} MB/s ({d['lossless']['seconds']:.2f} s, chunks "
        f"{d['lossless']['codecs']}): {d['lossy']['MBps'] / d['lossless']['MBps']:.2f}x. "
        + (f"Through a freshly started read-only mount (1 MiB reads of model.safetensors, best of 3): lossy "
           f"{d['mount_lossy']['MBps']:.0f} MB/s, lossless {d['mount_lossless']['MBps']:.0f} MB/s: "
           f"{d['mount_lossy']['MBps'] / d['mount_lossless']['MBps']:.2f}x." if "mount_lossy" in d
           else f"Through the mount: not measured ({d.get('mount_error', 'no mount')}).") + _decode_range(res), "",
        f"Time: the lossy import of the 11 derived versions took {lossy['seconds']:.0f} s in all, most of it the "
        "gate's test run twice per version (a fresh Python loading torch and transformers each time).", "",
        what_it_means(res), "",
    ]
    doc.write_text("\n".join(lines) + "\n")


def _ratios(d: dict[str, Any]) -> dict[str, float]:
    """lossy / lossless read speed, through the repo and through the mount."""
    out = {"repo": round(d["lossy"]["MBps"] / d["lossless"]["MBps"], 2)}
    if "mount_lossy" in d:
        out["mount"] = round(d["mount_lossy"]["MBps"] / d["mount_lossless"]["MBps"], 2)
    return out


def _decode_range(res: dict[str, Any]) -> str:
    runs = [*res.get("decode_history", []), _ratios(res["decode"])]
    if len(runs) < 2:
        return ""
    parts = [f"{k} {min(r[k] for r in runs if k in r):.2f}-{max(r[k] for r in runs if k in r):.2f}x"
             for k in ("repo", "mount")]
    return (f" Over {len(runs)} measurements on this shared machine (`--decode-only` repeats them): "
            f"{', '.join(parts)}.")


def what_it_means(res: dict[str, Any]) -> str:
    """The miss or the hit, in numbers from this run."""
    full = res["full_copies"]
    per = res["modelfs_lossy"]["per_version"]
    base = next(p["stored"] for p in per.values() if not p["decision"] or "base" in str(p["decision"]))
    budget = full / 12 - base
    fts = [p["stored"] for p in per.values() if p["how"] in ("finetune", "seed") and p["lossy"]]
    ratio = full / res["modelfs_lossy"]["stored"]
    return (f"What it means: the base ({base / MB:.1f} MB) is stored exactly by design, so 12x "
            f"({full / 12 / MB:.1f} MB for the lineage) leaves {budget / MB:.1f} MB for the 11 derived "
            f"versions. Each of the {len(fts)} full fine-tunes costs {min(fts) / MB:.1f}-{max(fts) / MB:.1f} MB "
            "even at an error of ~9.5% of its change (about 2 bits per changed weight; at that error a "
            "Gaussian change needs 3.4 bits by rate-distortion, these changes are sparser), so with check 2's "
            f"bar the lineage reaches {ratio:.2f}x, not 12x: the target is missed. MGit's fixed step costs "
            "less per fine-tune because it rounds nearly the whole low-learning-rate change away (its "
            "err/chg column: ~1.0, the fine-tune erased), which check 2 refuses; where its own 2% gate "
            "refused a delta it stores the whole model.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks-lossy.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite the doc from <out>/lossy.json")
    parser.add_argument("--decode-only", action="store_true",
                        help="re-measure the decode reads on the stores an earlier run left, then the doc")
    args = parser.parse_args(argv)
    if args.report_only or args.decode_only:
        saved = json.loads((args.out / "lossy.json").read_text())
        if args.decode_only:  # the earlier measurement goes into the history (reads are noisy here)
            saved.setdefault("decode_history", []).append(_ratios(saved["decode"]))
            saved["decode"] = decode_report(saved, args.out.resolve())
            (args.out / "lossy.json").write_text(json.dumps(saved, indent=1, default=str) + "\n")
        write_markdown(saved, args.doc)
        return 0
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    versions = build_or_load_lineage(out, 3, 0, reuse=True)
    inventory(versions)
    full = sum(v["bytes"] for v in versions)
    res: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "full_copies": full, "versions": [v["ref"] for v in versions]}
    ev = Evaluator()
    res["heldout_pairs"] = list(ev.m.PAIRS)
    originals = {v["ref"]: ev(Path(v["dir"])) for v in versions}
    log("originals evaluated")
    res["lossless"] = bench_lossless(versions, out)
    log(f"lossless: {full / res['lossless']['stored']:.2f}x")
    res["mgit"] = bench_mgit(versions, out, ev, originals)
    log(f"mgit: {full / res['mgit']['stored']:.2f}x")
    res["modelfs_lossy"] = bench_modelfs_lossy(versions, out, ev, originals)
    log(f"modelfs lossy: {full / res['modelfs_lossy']['stored']:.2f}x")
    lp = [passes(p) for p in res["modelfs_lossy"]["per_version"].values()]
    mp = [passes(p) for p in res["mgit"]["per_version"].values() if p.get("kept_delta")]
    res["lossy_all_pass"] = "yes" if all(all(x.values()) for x in lp) else \
        f"no: {sum(not all(x.values()) for x in lp)} versions fail"
    res["mgit_deltas"] = len(mp)
    res["mgit_check2_fail"] = sum(not x["change"] for x in mp)
    res["mgit_all_pass"] = "yes" if all(all(x.values()) for x in mp) else \
        f"no: {sum(not all(x.values()) for x in mp)} of {len(mp)} deltas fail"
    res["decode"] = decode_report(res, out)
    res["load_end"] = round(os.getloadavg()[0], 2)
    (out / "lossy.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    write_markdown(res, args.doc)
    log(f"wrote {out / 'lossy.json'} and {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

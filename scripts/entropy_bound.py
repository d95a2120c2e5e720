"""How far the lossless codecs are from the entropy of what they code (issue 12's first step).

For every fp32 tensor of the real lineage that scripts/bench_storage.py builds (reused from
bench-out/lineage), this takes the residual the store codes (the zigzagged integer difference
against the parent's tensor, as the `sub` codec does; the raw bit patterns for the base),
splits it into byte planes, and compares three numbers per plane:

- what the store's plane coder keeps (zstd level 1, or raw when that is smaller);
- the order-0 empirical entropy of the plane (an ideal per-plane Huffman/ANS coder);
- the empirical entropy conditioned on a context: the parent's exponent byte (plane 3 of the
  parent's bits), or the residual's next higher plane at the same element.

Empirical entropies are lower bounds for coders of that model (they ignore the cost of the
model itself: at most 256 x 256 counts per plane, small beside the MB planes measured here).

    .venv/bin/python scripts/entropy_bound.py [--out bench-out] [--doc docs/entropy-bound.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from modelfs.codecs.builtin import zigzag_diff
from modelfs.codecs.planes import split_planes, zstd_compress

ROOT = Path(__file__).resolve().parent.parent


def h0_bytes(plane: np.ndarray) -> float:
    """Order-0 entropy of a byte array, in bytes."""
    counts = np.bincount(plane, minlength=256).astype(np.float64)
    p = counts[counts > 0] / len(plane)
    return float(-(p * np.log2(p)).sum() * len(plane) / 8)


def h_cond_bytes(plane: np.ndarray, context: np.ndarray) -> float:
    """Entropy of ``plane`` given a byte ``context`` per element, in bytes."""
    joint = np.bincount(context.astype(np.int64) * 256 + plane, minlength=65536).reshape(256, 256)
    per_ctx = joint.sum(axis=1)
    total = 0.0
    for c in np.nonzero(per_ctx)[0]:
        row = joint[c][joint[c] > 0] / per_ctx[c]
        total += -(row * np.log2(row)).sum() * per_ctx[c]
    return total / 8


def stored_bytes(plane: np.ndarray) -> int:
    if not plane.any():
        return 0
    return min(len(zstd_compress(plane)), len(plane))


def analyse_pair(child: np.ndarray, parent: np.ndarray | None) -> dict[str, list[float]]:
    data = child.tobytes()
    if parent is None:
        resid = np.frombuffer(data, dtype=np.uint8)
        ctx_parent = None
    else:
        resid = zigzag_diff(data, parent.tobytes(), 4).view(np.uint8)
        ctx_parent = split_planes(parent.tobytes(), 4)[0][3]
    planes, _ = split_planes(resid, 4)
    out: dict[str, list[float]] = {"raw": [], "stored": [], "h0": [], "h_parent_exp": [], "h_higher": []}
    for k, p in enumerate(planes):
        out["raw"].append(len(p))
        out["stored"].append(stored_bytes(p))
        out["h0"].append(h0_bytes(p))
        out["h_parent_exp"].append(h_cond_bytes(p, ctx_parent) if ctx_parent is not None else h0_bytes(p))
        out["h_higher"].append(h_cond_bytes(p, planes[k + 1]) if k < 3 else h0_bytes(p))
    return out


def analyse(lineage: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_ref = {v["ref"]: v for v in lineage}
    rows = []
    for v in lineage:
        if v.get("adapter_dir") or v["how"] in ("cast", "merge", "prune", "lora"):
            continue  # those codecs predict otherwise (cast, avg, prune, low-rank): not this bound
        mine = load_file(str(Path(v["dir"]) / "model.safetensors"))
        parent = (load_file(str(Path(by_ref[v["parents"][0]]["dir"]) / "model.safetensors"))
                  if v["parents"] else {})
        sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(4))
        unchanged = 0
        for name, t in mine.items():
            if t.dtype != np.float32:
                continue
            p = parent.get(name)
            if p is not None and (p.shape != t.shape or p.dtype != t.dtype):
                p = None
            if p is not None and np.array_equal(p.view(np.uint32), t.view(np.uint32)):
                unchanged += t.nbytes  # stored once, shared with the parent: costs nothing
                continue
            for key, vals in analyse_pair(t, p).items():
                sums[key] += np.array(vals)
        row = {"ref": v["ref"], "how": v["how"], "unchanged_bytes": unchanged,
               **{k: [round(float(x)) for x in s] for k, s in sums.items()}}
        gp_ref = by_ref[v["parents"][0]]["parents"][:1] if v["parents"] else []
        if gp_ref and v["how"] == "finetune":  # a continued fine-tune (of any model's version)
            row["extrapolated"] = extrapolation(mine, parent, load_file(
                str(Path(by_ref[gp_ref[0]]["dir"]) / "model.safetensors")))
        rows.append(row)
    return rows


def extrapolation(mine: dict[str, np.ndarray], parent: dict[str, np.ndarray],
                  grand: dict[str, np.ndarray]) -> dict[str, int]:
    """Bytes the plane coder keeps for residuals against the parent and against the linear
    extrapolation parent + (parent - grandparent), over the tensors all three share."""
    against = {"parent": 0, "extrapolation": 0}
    for name, t in mine.items():
        p, g = parent.get(name), grand.get(name)
        if t.dtype != np.float32 or p is None or g is None or not (t.shape == p.shape == g.shape):
            continue
        pred = (p + (p - g)).astype(np.float32)
        for key, base in (("parent", p), ("extrapolation", pred)):
            planes, _ = split_planes(zigzag_diff(t.tobytes(), base.tobytes(), 4), 4)
            against[key] += sum(stored_bytes(x) for x in planes)
    return against


def table(rows: list[dict[str, Any]]) -> str:
    def mb(x: float) -> str:
        return f"{x / 1e6:.2f}"

    lines = ["| version | how | coded MB | store keeps | order-0 bound | given parent exponent | "
             "given higher plane | best bound / kept |", "|---|---|---|---|---|---|---|---|"]
    tot = defaultdict(float)
    for r in rows:
        vals = {k: sum(r[k]) for k in ("raw", "stored", "h0", "h_parent_exp", "h_higher")}
        best = min(vals["h0"], vals["h_parent_exp"], vals["h_higher"])
        for k, x in vals.items():
            tot[k] += x
        tot["best"] += best
        lines.append(f"| {r['ref']} | {r['how']} | {mb(vals['raw'])} | {mb(vals['stored'])} | {mb(vals['h0'])} | "
                     f"{mb(vals['h_parent_exp'])} | {mb(vals['h_higher'])} | {best / max(vals['stored'], 1):.3f} |")
    lines.append(f"| **total** | | {mb(tot['raw'])} | {mb(tot['stored'])} | {mb(tot['h0'])} | "
                 f"{mb(tot['h_parent_exp'])} | {mb(tot['h_higher'])} | {tot['best'] / max(tot['stored'], 1):.3f} |")
    planes = ["| plane (byte of the residual) | store keeps MB | order-0 MB | given parent exponent MB |"
              " given higher plane MB |", "|---|---|---|---|---|"]
    for k in range(4):
        planes.append(f"| {k} ({'low mantissa' if k == 0 else 'sign+exponent' if k == 3 else 'mantissa'}) | "
                      + " | ".join(mb(sum(r[key][k] for r in rows))
                                   for key in ("stored", "h0", "h_parent_exp", "h_higher")) + " |")
    extra = ["| continued fine-tune | against the parent MB | against parent + (parent - grandparent) MB |",
             "|---|---|---|"]
    extra += [f"| {r['ref']} | {mb(r['extrapolated']['parent'])} | {mb(r['extrapolated']['extrapolation'])} |"
              for r in rows if "extrapolated" in r]
    return ("\n".join(lines) + "\n\nBy plane, over the same versions:\n\n" + "\n".join(planes)
            + "\n\nPrediction from the grandparent (what the plane coder keeps):\n\n" + "\n".join(extra) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "entropy-bound.md")
    args = ap.parse_args(argv)
    manifest = args.out / "lineage.json"
    if not manifest.exists():
        print(f"entropy_bound: {manifest} is missing: run scripts/bench_storage.py first", file=sys.stderr)
        return 1
    rows = analyse(json.loads(manifest.read_text())["versions"])
    (args.out / "entropy.json").write_text(json.dumps(rows, indent=1))
    args.doc.write_text("## The entropy bound of the lossless codecs\n\nGenerated by "
                        "`scripts/entropy_bound.py` on the real lineage of `scripts/bench_storage.py` "
                        "(fp32 tensors that changed; unchanged ones are shared and cost nothing).\n\n"
                        + table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark for diff, merge and update types (docs/benchmarks-ops.md).

1. Diff time and peak memory on a >= 1 GB checkpoint pair (BERT-large shape, random init,
   then one real AdamW step), `modelfs diff` against Git-Theta's diff driver on the same pair.
2. Stored size of a LoRA-derived version and of an average merge on real MiniLM weights.

    .venv/bin/python scripts/bench_ops.py --out bench-out/ops [--skip-theta] [--skip-big]

Git-Theta runs from a separate venv (`--theta-venv`, default bench-out/venv-peers) with HOME
pointed into the output directory, so its `git theta install` never touches the user's git
configuration. Results are printed and written to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def sh(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stdout + p.stderr).strip()[-2000:]}")
    return p


def _tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _rss(pids: list[int]) -> tuple[int, int]:
    """(anonymous, file-backed) resident KiB summed over the processes."""
    anon = file = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
                elif line.startswith(("RssFile:", "RssShmem:")):
                    file += int(line.split()[1])
        except OSError:
            continue
    return anon, file


def timed(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall seconds; peak RSS of the largest process (GNU time) and peak anonymous / file-backed
    memory of the whole process tree, sampled every 20 ms (LMDB's and mmap'd checkpoints' pages are
    file-backed: page cache the kernel can drop, not memory the command holds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    peak_anon = peak_file = 0
    import threading

    out: dict[str, str] = {}

    def drain() -> None:
        out["stdout"], out["stderr"] = p.communicate()

    th = threading.Thread(target=drain)
    th.start()
    while th.is_alive():
        anon, file = _rss(_tree(p.pid))
        peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)
        th.join(0.02)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out["stderr"])
    return {"cmd": " ".join(cmd), "rc": p.returncode, "wall_s": round(wall, 2),
            "peak_rss_mb": round(int(m.group(1)) / 1024, 1) if m else None,
            "peak_anon_mb": round(peak_anon / 1024, 1), "peak_file_mb": round(peak_file / 1024, 1),
            "stdout_tail": out["stdout"][-1500:], "stderr_tail": out["stderr"][-800:] if p.returncode else ""}


def build_pair(out: Path) -> tuple[Path, Path]:
    """A BERT-large-shaped model (1.34 GB fp32), random init; the child is one AdamW step later."""
    a, b = out / "big-v1", out / "big-v2"
    if (b / "model.safetensors").exists():
        return a, b
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096)
    model = BertModel(cfg)
    model.save_pretrained(str(a))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 2000, (2, 32))
    model.train()
    loss = model(input_ids=ids).last_hidden_state.pow(2).mean()
    loss.backward()
    opt.step()
    model.eval()
    model.save_pretrained(str(b))
    return a, b


def modelfs(*args: str | Path, store: Path) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "modelfs"), "--store", str(store), *map(str, args)]


def bench_big(out: Path, results: dict[str, Any], theta: bool, theta_venv: Path) -> None:
    t0 = time.perf_counter()
    a, b = build_pair(out)
    results["pair"] = {"build_s": round(time.perf_counter() - t0, 1),
                       "bytes": (a / "model.safetensors").stat().st_size}
    store = out / "store"
    shutil.rmtree(store, ignore_errors=True)
    sh(modelfs("init", store=store))
    results["modelfs_import_v1"] = timed(modelfs("import", a, "--model", "big", store=store))
    results["modelfs_import_v2"] = timed(modelfs("import", b, "--model", "big", store=store))
    results["modelfs_diff_stat"] = timed(modelfs("diff", "big@1", "big@2", "--stat", store=store))
    results["modelfs_diff_json"] = timed(modelfs("diff", "big@1", "big@2", "--json", store=store))
    results["modelfs_diff_names_only"] = timed(modelfs("diff", "big@1", "big@2", "--names-only", "--stat",
                                                       store=store))
    results["modelfs_diff_json"]["stdout_tail"] = ""
    if theta:
        bench_theta(out, a, b, results, theta_venv)


def bench_theta(out: Path, a: Path, b: Path, results: dict[str, Any], venv: Path) -> None:
    """Git-Theta 0.2 on the same pair: track, commit both, then time its diff driver."""
    home = out / "theta-home"
    repo = out / "theta-repo"
    if (repo / ".git").is_dir() and "--reuse-theta" in sys.argv:
        env = dict(os.environ, HOME=str(home), PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
                   PYTHONPATH=str(out / "theta-extra"), GIT_THETA_CHECKPOINT_TYPE="safetensors",
                   TMPDIR=str(home))
        results["theta_diff"] = timed(["git", "diff", "HEAD~1", "HEAD", "--", "model.safetensors"],
                                      cwd=repo, env=env)
        return
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)
    home.mkdir(parents=True)
    repo.mkdir()
    extra = out / "theta-extra"  # git-theta-diff imports colorama, which git-theta 0.2.0 does not require
    if not (extra / "colorama").is_dir():
        sh([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--target", str(extra), "colorama"])
    env = dict(os.environ, HOME=str(home), PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
               PYTHONPATH=str(extra),
               GIT_TERMINAL_PROMPT="0", GIT_THETA_CHECKPOINT_TYPE="safetensors",
               TMPDIR=str(home))  # git-theta-filter logs to $TMPDIR/git-theta.log
    sh(["git", "config", "--global", "user.name", "bench"], env=env)
    sh(["git", "config", "--global", "user.email", "bench@example.invalid"], env=env)
    sh(["git", "init", "-q"], cwd=repo, env=env)
    sh(["git", "lfs", "install"], cwd=repo, env=env)
    sh(["git", "theta", "install"], cwd=repo, env=env)
    sh(["git", "theta", "track", "model.safetensors"], cwd=repo, env=env)
    shutil.copyfile(a / "model.safetensors", repo / "model.safetensors")
    results["theta_add_v1"] = timed(["git", "add", "model.safetensors", ".gitattributes"], cwd=repo, env=env)
    if results["theta_add_v1"]["rc"]:
        raise RuntimeError(f"git-theta clean filter failed: {results['theta_add_v1']['stderr_tail']}")
    sh(["git", "commit", "-qm", "v1"], cwd=repo, env=env)
    shutil.copyfile(b / "model.safetensors", repo / "model.safetensors")
    results["theta_add_v2"] = timed(["git", "add", "model.safetensors"], cwd=repo, env=env)
    if results["theta_add_v2"]["rc"]:
        raise RuntimeError(f"git-theta clean filter failed: {results['theta_add_v2']['stderr_tail']}")
    sh(["git", "commit", "-qm", "v2"], cwd=repo, env=env)
    results["theta_diff"] = timed(["git", "diff", "HEAD~1", "HEAD", "--", "model.safetensors"], cwd=repo, env=env)


def stored(repo: Any, v: Any, others: list[Any]) -> int:
    new = repo.chunk_keys(v) - repo.chunk_keys(*others)
    return int(repo.stored_size_of(new))


def bench_updates(out: Path, results: dict[str, Any]) -> None:
    """A LoRA-derived version and an average merge, as stored on real MiniLM weights."""
    from modelfs.demo.lineage import build_lineage
    from modelfs.ops.lora import import_lora
    from modelfs.ops.merge import merge
    from modelfs.ops.updates import detect_updates
    from modelfs.repo import Repo

    lin = out / "minilm-lineage"
    if not (lin / "minilm-avg@1").exists():
        shutil.rmtree(lin, ignore_errors=True)
        build_lineage(lin, steps=2, kinds={"lora", "minilm-avg"})
    r: dict[str, Any] = {}

    def fresh(name: str) -> tuple[Repo, Any, Any, Any]:
        """A new store holding base, ft and seed2, so no measurement reuses another's chunks."""
        store = out / f"store-{name}"
        shutil.rmtree(store, ignore_errors=True)
        repo = Repo.init(store)
        base = repo.import_dir(lin / "minilm@1", "minilm")
        ft = repo.import_dir(lin / "minilm-ft@1", "ft", parents=["minilm"])
        sib = repo.import_dir(lin / "minilm-seed2@1", "seed2", parents=["minilm"])
        return repo, base, ft, sib

    repo, base, ft, sib = fresh("lora-plain")
    v = repo.import_dir(lin / "minilm-lora@1", "lora", parents=["minilm"])
    r["lora_plain_import"] = {"logical": v.logical_size, "stored": stored(repo, v, [base])}
    repo.close()
    repo, base, ft, sib = fresh("lora-src")
    v = import_lora(repo, lin / "minilm-lora@1.adapter", "minilm", "lora", src=lin / "minilm-lora@1")
    r["lora_adapter_with_src"] = {"logical": v.logical_size, "stored": stored(repo, v, [base])}
    repo.close()
    repo, base, ft, sib = fresh("lora-detected")
    src = lin / "minilm-lora@1"
    files = {p.relative_to(src).as_posix(): p for p in sorted(src.rglob("*")) if p.is_file()}
    t0 = time.perf_counter()
    plan = detect_updates(repo, files, base)
    v = repo.commit_files("lora", files, hints=plan.hint, parents=[base.id], how="lora", infer_parent=False)
    r["lora_detected"] = {"logical": v.logical_size, "stored": stored(repo, v, [base]),
                          "s": round(time.perf_counter() - t0, 2),
                          "found": sorted({d["type"] for d in plan.report().values()}),
                          "tensors": len(plan.report())}
    repo.close()
    repo, base, ft, sib = fresh("lora-rebuilt")
    t0 = time.perf_counter()
    v = import_lora(repo, lin / "minilm-lora@1.adapter", "minilm", "lora")
    r["lora_adapter_rebuilt"] = {"logical": v.logical_size, "stored": stored(repo, v, [base]),
                                 "s": round(time.perf_counter() - t0, 2)}
    repo.close()
    for strategy, params in (("weighted-average", {"alpha": 0.5}), ("weighted-average", {"alpha": 0.3}),
                             ("average-3", {}), ("task-arithmetic", {}), ("ties", {})):
        repo, base, ft, sib = fresh("merge")
        t0 = time.perf_counter()
        m = merge(repo, ft, sib, strategy=strategy, params=params, into="merged")
        key = f"merge_{strategy}" + (f"_{params['alpha']}" if params else "")
        r[key] = {"logical": m.logical_size, "stored": stored(repo, m, [base, ft, sib]),
                  "s": round(time.perf_counter() - t0, 2)}
        repo.close()
    results["updates"] = r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "ops")
    ap.add_argument("--skip-theta", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-updates", action="store_true")
    ap.add_argument("--theta-venv", type=Path, default=ROOT / "bench-out" / "venv-peers")
    ap.add_argument("--reuse-theta", action="store_true", help="Time only the diff of an existing git-theta repo.")
    args = ap.parse_args()
    args.out = args.out.resolve()  # HOME for git-theta must be absolute
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    if not args.skip_updates:
        bench_updates(args.out, results)
        print(json.dumps(results["updates"], indent=1), flush=True)
    if not args.skip_big:
        bench_big(args.out, results, not args.skip_theta, args.theta_venv)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())

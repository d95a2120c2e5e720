"""What the mount benchmark measures: building the lineage, the reads, the write into the mount.

Each case appends its raw measurements to the result dict; `benchlib.mount_report` turns them
into ratios, findings and markdown.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
from benchlib.common import MB, MiB, b3_file, drop_caches, log, median, read_file, run, self_cpu
from benchlib.mount import Mount, counter_delta, daemon_watch

from modelfs.demo import gpt
from modelfs.demo.gpt import STEPS, WEIGHTS, GptTrainer, gpt_lineage

MODEL = "gpt"
MODELFS = str(Path(sys.executable).parent / "modelfs")  # the CLI next to this Python


# ---------------------------------------------------------------- building the lineage


def chunk_depths(repo: Any, ref: str) -> dict[str, Any]:
    """Histogram of the stored delta depth of the weight file's chunks."""
    v = repo.resolve(ref)
    rec = repo.file_record(v.files[WEIGHTS])
    hist: Counter[int] = Counter()
    codecs: Counter[str] = Counter()
    for t in rec.tensors():
        for k in t.chunks:
            cr = repo.chunk_record(k)
            hist[cr.depth] += 1
            codecs[cr.codec] += 1
    n = sum(hist.values())
    return {"max": max(hist), "mean": round(sum(d * c for d, c in hist.items()) / n, 2),
            "hist": dict(sorted(hist.items())), "codecs": dict(codecs), "chunks": n}


def build_lineage(work: Path, size_gb: float, depth: int, res: dict[str, Any]) -> GptTrainer:
    """gpt@1 (random init) .. gpt@<depth + 1>, each imported as the next version of `MODEL`."""
    from modelfs.repo import Repo, StoreSettings

    store = work / "store"
    if store.exists():
        shutil.rmtree(store)
    log(f"building a ~{size_gb} GB GPT-2 model (seed {gpt.SEED})")
    tr = GptTrainer(size_gb)
    lin: dict[str, Any] = {"model": tr.describe(), "params": tr.n_params, "dtype": "float32",
                           "derivation": tr.derivation(), "max_chain": StoreSettings().max_chain, "versions": []}
    repo = Repo.init(store, settings=StoreSettings())
    try:
        for gv in gpt_lineage(tr, work / "ckpt", depth):
            i, d = gv.index, gv.dir
            if i:
                log(f"  {STEPS} AdamW steps for v{i}: loss {gv.loss:.3f}, {sum(tr.step_s[-STEPS:]):.1f} s")
            size = gv.weights.stat().st_size
            t0 = time.perf_counter()
            v = repo.import_dir(d, MODEL, how="finetune" if i else "init",
                                message=f"v{i}" + (f" ({STEPS} AdamW steps)" if i else " (random init)"))
            imp_s = time.perf_counter() - t0
            du = repo.maintenance().du()
            row = {"ref": v.ref, "name": f"v{i}", "file_bytes": size, "save_s": round(gv.save_s, 2),
                   "import_s": round(imp_s, 2), "import_MBps": round(size / MB / imp_s, 1),
                   "store_stored_bytes": du["total"]["stored"],
                   "train_steps_s": [round(x, 2) for x in tr.step_s[-STEPS:]] if i else None,
                   "blake3": v.files[WEIGHTS].blake3_hex}
            row["depth"] = chunk_depths(repo, v.ref)
            lin["versions"].append(row)
            log(f"  {v.ref}: {size / MB:.0f} MB saved in {gv.save_s:.1f} s, imported in {imp_s:.1f} s "
                f"({row['import_MBps']} MB/s), chunk depth max {row['depth']['max']} "
                f"mean {row['depth']['mean']}, store {du['total']['stored'] / MB:.0f} MB")
            if 1 < i < depth:  # keep v0 (for the config), v1 (depth 1) and the deepest as local copies
                shutil.rmtree(d)
        prev = 0
        for row in lin["versions"]:
            row["stored_added_bytes"] = row["store_stored_bytes"] - prev
            prev = row["store_stored_bytes"]
    finally:
        repo.close()
    res["lineage"] = lin
    return tr


# ---------------------------------------------------------------- read benchmarks


def cold_mount(m: Mount) -> None:
    m.restart()
    drop_caches()


def bench_reads(m: Mount, work: Path, depth: int, repeat: int, res: dict[str, Any]) -> None:
    from safetensors import safe_open

    refs = {"depth1": (f"{MODEL}@2", work / "ckpt" / "v1"),
            f"depth{depth}": (f"{MODEL}@{depth + 1}", work / "ckpt" / f"v{depth}")}
    deep = f"depth{depth}"
    out: dict[str, Any] = {"repeat": repeat, "files": {}}
    res["reads"] = out

    for key, (ref, local) in refs.items():
        mf, lf = m.mnt / ref / WEIGHTS, local / WEIGHTS
        size = lf.stat().st_size
        out["files"][key] = {"ref": ref, "bytes": size}
        if not m.up:
            m.start()
        xb3 = os.getxattr(mf, "user.modelfs.blake3").decode()
        assert xb3 == b3_file(lf), f"{ref}: mount blake3 xattr differs from the local file"

    # cold and warm sequential reads; mount and local alternate so load drifts hit both alike
    for key, (ref, local) in refs.items():
        mf, lf = m.mnt / ref / WEIGHTS, local / WEIGHTS
        row = out["files"][key]
        cold_m, warm_m, cold_l, warm_l, runs = [], [], [], [], []
        for r in range(repeat):
            cold_mount(m)
            info: dict[str, Any] = {}
            c0 = self_cpu()
            with daemon_watch(m, info):
                n, s = read_file(mf)
            info["reader_cpu_s"] = round(self_cpu() - c0, 3)
            info["s"] = round(s, 3)
            assert n == row["bytes"]
            cold_m.append(s)
            winfo: dict[str, Any] = {}
            with daemon_watch(m, winfo):
                warm_m.append(read_file(mf)[1])
            info["warm"] = winfo
            if r == 0:  # bytes check, from the page cache
                h = blake3.blake3(max_threads=blake3.blake3.AUTO)
                with open(mf, "rb") as f:
                    while b := f.read(8 * MiB):
                        h.update(b)
                assert h.hexdigest() == b3_file(lf), f"{ref}: bytes read through the mount differ"
            m.restart()  # daemon cold again, but the store's pages stay in the page cache
            sw_info: dict[str, Any] = {}
            with daemon_watch(m, sw_info):
                sw_info["s"] = round(read_file(mf)[1], 3)
            info["store_warm"] = sw_info
            runs.append(info)
            drop_caches()
            cold_l.append(read_file(lf)[1])
            warm_l.append(read_file(lf)[1])
            log(f"  {key} read: mount cold {n / MB / s:.0f} MB/s (daemon cpu {info['daemon_cpu_s']} s), "
                f"store-warm {n / MB / sw_info['s']:.0f} MB/s, "
                f"warm {n / MB / warm_m[-1]:.0f} MB/s; local cold {n / MB / cold_l[-1]:.0f} MB/s, "
                f"warm {n / MB / warm_l[-1]:.0f} MB/s")
        b = row["bytes"] / MB
        sw = median([x["store_warm"]["s"] for x in runs])
        row.update({
            "mount_daemon_cold_store_warm_MBps": round(b / sw, 1),
            "mount_cold_s": [round(x, 3) for x in cold_m], "mount_warm_s": [round(x, 3) for x in warm_m],
            "local_cold_s": [round(x, 3) for x in cold_l], "local_warm_s": [round(x, 3) for x in warm_l],
            "mount_cold_MBps": round(b / median(cold_m), 1), "mount_warm_MBps": round(b / median(warm_m), 1),
            "local_cold_MBps": round(b / median(cold_l), 1), "local_warm_MBps": round(b / median(warm_l), 1),
            "mount_cold_runs": runs,
        })

    # one mid-size tensor
    ref, local = refs[deep]
    with safe_open(str(local / WEIGHTS), "pt") as f:
        names = list(f.keys())
        sizes = {n: f.get_slice(n).get_shape() for n in names}
    cfg = json.loads((local / "config.json").read_text())
    mid = cfg["n_layer"] // 2
    name = next((n for n in names if n.endswith(f"h.{mid}.attn.c_attn.weight")), names[len(names) // 2])
    numel = 1
    for x in sizes[name]:
        numel *= x
    t_m, t_l, tinfo = [], [], []

    def one(path: Path, info: dict[str, Any]) -> float:
        """safe_open + get_tensor; `info` gets the split: stat (lookups), open (header), get."""
        t0 = time.perf_counter()
        os.stat(path)
        t1 = time.perf_counter()
        with safe_open(str(path), "pt") as f:
            t2 = time.perf_counter()
            t = f.get_tensor(name)
        s = time.perf_counter() - t0
        info.update(stat_ms=round((t1 - t0) * 1e3, 1), open_ms=round((t2 - t1) * 1e3, 1),
                    get_ms=round((time.perf_counter() - t2) * 1e3, 1))
        assert t.numel() == numel
        return s

    lsplit: list[dict[str, Any]] = []
    for _ in range(repeat):
        cold_mount(m)
        info = {}
        with daemon_watch(m, info):
            t_m.append(one(m.mnt / ref / WEIGHTS, info))
        tinfo.append(info)
        drop_caches()
        lsplit.append({})
        t_l.append(one(local / WEIGHTS, lsplit[-1]))
    out["one_tensor"] = {"ref": ref, "tensor": name, "shape": list(sizes[name]), "bytes": numel * 4,
                         "mount_cold_s": [round(x, 4) for x in t_m], "local_cold_s": [round(x, 4) for x in t_l],
                         "mount_cold_med_s": round(median(t_m), 4), "local_cold_med_s": round(median(t_l), 4),
                         "mount_runs": tinfo, "local_runs": lsplit}
    log(f"  one tensor {name} ({numel * 4 / MB:.1f} MB): mount {median(t_m) * 1e3:.0f} ms, "
        f"local {median(t_l) * 1e3:.0f} ms, decoded {tinfo[-1]['counters'].get('bytes_decoded', 0) / MB:.1f} MB")

    # from_pretrained. transformers 5 leaves the weights in a private mmap of the safetensors file, so
    # from_pretrained alone reads only what it touches; "+ touch" also reads one float per 4 KiB page of
    # every parameter, which faults the whole file in (what a first forward pass would do).
    import torch
    from transformers import AutoModel

    def load(path: Path) -> tuple[float, float]:
        t0 = time.perf_counter()
        mdl = AutoModel.from_pretrained(str(path))
        s = time.perf_counter() - t0
        with torch.no_grad():
            for prm in mdl.parameters():
                float(prm.detach().reshape(-1)[::1024].sum())
        total = time.perf_counter() - t0
        del mdl
        gc.collect()
        return s, total

    load(refs["depth1"][1])  # one-time import and lazy-module costs, outside the timings
    keys = ("mount_cold", "mount_warm", "local_cold", "local_warm")
    fp: dict[str, list[float]] = {k: [] for k in keys}
    ft: dict[str, list[float]] = {k: [] for k in keys}

    def timed(key: str, path: Path) -> None:
        s, total = load(path)
        fp[key].append(s)
        ft[key].append(total)

    finfo = []
    for _ in range(repeat):
        cold_mount(m)
        info: dict[str, Any] = {}
        with daemon_watch(m, info):
            timed("mount_cold", m.mnt / ref)
        finfo.append(info)
        timed("mount_warm", m.mnt / ref)
        drop_caches()
        timed("local_cold", local)
        timed("local_warm", local)
        log("  from_pretrained (+ touch): " + ", ".join(f"{k} {fp[k][-1]:.2f} s ({ft[k][-1]:.2f} s)" for k in keys))
    out["from_pretrained"] = {"ref": ref, "class": "AutoModel (GPT2Model)",
                              **{f"{k}_s": [round(x, 3) for x in v] for k, v in fp.items()},
                              **{f"{k}_med_s": round(median(v), 3) for k, v in fp.items()},
                              **{f"{k}_touch_s": [round(x, 3) for x in v] for k, v in ft.items()},
                              **{f"{k}_touch_med_s": round(median(v), 3) for k, v in ft.items()},
                              "mount_runs": finfo}
    out["mount_start_s"] = [round(x, 2) for x in m.start_s]


def bench_export(work: Path, depth: int, repeat: int, res: dict[str, Any]) -> None:
    """`modelfs export` of the depth-1 and the deepest version against `cp -r` of the same
    checkpoint directory, each from a cold page cache into a fresh directory on the same disk."""
    starts = []
    for _ in range(3):  # the CLI's start-up (Python, torch-free imports), paid by every export
        t0 = time.perf_counter()
        run([MODELFS, "--help"])
        starts.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"cli_start_s": round(median(starts), 3)}
    res["export"] = out
    dest = work / "export-out"
    for key, ref, local in (("depth1", f"{MODEL}@2", work / "ckpt" / "v1"),
                            (f"depth{depth}", f"{MODEL}@{depth + 1}", work / "ckpt" / f"v{depth}")):
        size = sum(p.stat().st_size for p in local.iterdir() if p.is_file())
        ex, cp = [], []
        for _ in range(repeat):
            for runs, argv in ((ex, [MODELFS, "--store", str(work / "store"), "export", ref, str(dest)]),
                               (cp, ["cp", "-r", str(local), str(dest)])):
                shutil.rmtree(dest, ignore_errors=True)
                drop_caches()
                t0 = time.perf_counter()
                run(argv)
                runs.append(time.perf_counter() - t0)
                assert b3_file(dest / WEIGHTS) == b3_file(local / WEIGHTS), f"{ref}: export differs"
        shutil.rmtree(dest, ignore_errors=True)
        out[key] = {"ref": ref, "bytes": size, "export_s": [round(x, 3) for x in ex],
                    "cp_s": [round(x, 3) for x in cp], "export_MBps": round(size / MB / median(ex), 1),
                    "cp_MBps": round(size / MB / median(cp), 1),
                    "vs_cp": round(median(cp) / median(ex), 3)}
        log(f"  export {ref}: {out[key]['export_MBps']:.0f} MB/s, cp {out[key]['cp_MBps']:.0f} MB/s "
            f"({out[key]['vs_cp']:.2f}x)")


def bench_fuse_baseline(work: Path, repeat: int, res: dict[str, Any]) -> None:
    """Warm re-read through the smallest pyfuse3 file system (benchlib/passfs.py) over the local
    depth-1 file, against the same file from the local page cache: the kernel's share of the gap."""
    src, mnt = work / "ckpt" / "v1" / WEIGHTS, work / "passfs-mnt"
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("passfs.py")), str(src), str(mnt)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the trivial pyfuse3 file system did not mount")
            time.sleep(0.1)
        data = mnt / "data"
        read_file(data)  # fills the FUSE file's page cache
        read_file(src)
        fuse, local = [], []
        for _ in range(repeat):
            fuse.append(read_file(data)[1])
            local.append(read_file(src)[1])
        size = src.stat().st_size / MB
        res["fuse_baseline"] = {"fuse_warm_s": [round(x, 3) for x in fuse], "local_warm_s": [round(x, 3) for x in local],
                                "fuse_warm_MBps": round(size / median(fuse), 1),
                                "local_warm_MBps": round(size / median(local), 1),
                                "vs_local": round(median(local) / median(fuse), 3)}
        log(f"  trivial pyfuse3 FS warm re-read {size / median(fuse):.0f} MB/s, local {size / median(local):.0f} MB/s")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------- write benchmark (issue 4)


def wait_head(store: Path, old_head: str, timeout: float) -> tuple[str | None, float]:
    """Poll the store until MODEL's head moves: (new head id, time.perf_counter() it was seen)."""
    from modelfs.repo import Repo

    deadline = time.perf_counter() + timeout
    with Repo.open(store) as repo:
        while time.perf_counter() < deadline:
            head = repo.model(MODEL).head
            if head != old_head:
                return head, time.perf_counter()
            time.sleep(0.02)
    return None, time.perf_counter()


def store_du(store: Path) -> dict[str, Any]:
    from modelfs.repo import Repo

    with Repo.open(store) as repo:
        return repo.maintenance().du()["total"]


def bench_write(m: Mount, tr: GptTrainer, work: Path, res: dict[str, Any], profile: Callable[..., Any] | None,
                repeat: int = 3) -> None:
    from modelfs.repo import Repo

    out: dict[str, Any] = {}
    res["write"] = out
    loss = tr.step()
    log(f"  fine-tuned child: {STEPS} more AdamW steps (loss {loss:.3f})")
    local = work / "ckpt" / "child"
    # local: page-cache speed, like the mount's staging writes (no fsync either way); sync timed apart
    # (median of `repeat` saves: a single one varied 0.5-1.5 s on the shared machine)
    saves, syncs = [], []
    for _ in range(repeat):
        drop_caches()
        saves.append(tr.save(local))
        t0 = time.perf_counter()
        os.sync()
        syncs.append(time.perf_counter() - t0)
    local_s = median(saves)
    out["local_sync_s"] = round(median(syncs), 3)
    size = sum(p.stat().st_size for p in local.iterdir())
    out.update({"bytes": size, "local_save_s": round(local_s, 3), "local_saves_s": [round(x, 3) for x in saves],
                "local_MBps": round(size / MB / local_s, 1)})
    log(f"  save_pretrained local: {[round(x, 2) for x in saves]} s (median {size / MB / local_s:.0f} MB/s), "
        f"then sync {out['local_sync_s']} s")

    # reference: `modelfs import` of the same files into a copy of the store
    m.stop()
    copy = work / "store-copy"
    if copy.exists():
        shutil.rmtree(copy)
    t0 = time.perf_counter()
    run(["cp", "-a", "--sparse=always", str(work / "store"), str(copy)])
    out["store_copy_s"] = round(time.perf_counter() - t0, 1)
    before_copy = store_du(copy)
    t0 = time.perf_counter()
    takes_model = "--model" in run([MODELFS, "import", "--help"], check=False).stdout
    cmd = ["--model", MODEL, str(local)] if takes_model else [str(local), MODEL]
    r = run([MODELFS, "--store", str(copy), "import", *cmd], check=False)
    out["import_s"] = round(time.perf_counter() - t0, 2)
    if r.returncode:
        out["import_error"] = r.stderr.strip()[-500:]
    out["import_added_bytes"] = store_du(copy)["stored"] - before_copy["stored"]
    shutil.rmtree(copy)
    log(f"  modelfs import into a store copy: {out['import_s']} s, +{out['import_added_bytes'] / MB:.1f} MB")

    before = store_du(work / "store")
    with Repo.open(work / "store") as repo:
        old_head = repo.model(MODEL).head
    m.start()
    drop_caches()
    dest = m.mnt / MODEL
    info: dict[str, Any] = {}
    c0, t0 = m.counters(), time.perf_counter()
    cpu0 = m.cpu()
    try:
        tr.model.save_pretrained(dest, max_shard_size="1000GB")
    except OSError as e:
        out["mount_error"] = f"{type(e).__name__}: [{errno.errorcode.get(e.errno or 0, e.errno)}] {e.strerror}"
        out["supported"] = False
        log(f"  save_pretrained into the mount failed: {out['mount_error']} (skipping the write benchmark)")
        return
    closed = time.perf_counter()
    out["supported"] = True
    mount_s = closed - t0
    head, seen = wait_head(work / "store", old_head, timeout=600)
    info["daemon_cpu_s"] = round(m.cpu() - cpu0, 3)
    info["counters"] = counter_delta(c0, m.counters())
    out.update({"mount_save_s": round(mount_s, 3), "mount_MBps": round(size / MB / mount_s, 1),
                "close_to_commit_s": round(seen - closed, 3) if head else None,
                "committed": head is not None, "mount_run": info})
    log(f"  save_pretrained into the mount: {mount_s:.2f} s ({size / MB / mount_s:.0f} MB/s); "
        f"commit {out['close_to_commit_s']} s after the last close")
    if head:
        m.stop()
        with Repo.open(work / "store") as repo:
            v = repo.version(head)
            out["committed_ref"] = v.ref
            out["bit_exact"] = all(v.files[p.name].blake3_hex == b3_file(p) for p in local.iterdir())
            out["committed_files"] = sorted(v.files)
        after = store_du(work / "store")
        out["mount_added_bytes"] = after["stored"] - before["stored"]
        m.start()
        log(f"  committed {out['committed_ref']}: +{out['mount_added_bytes'] / MB:.1f} MB, "
            f"bit-exact {out['bit_exact']}")
        if profile is not None:
            # a second write (the next version), under py-spy
            tr.step()
            with Repo.open(work / "store") as repo:
                old_head = repo.model(MODEL).head

            def act() -> None:
                tr.model.save_pretrained(dest, max_shard_size="1000GB")

            out["profile"] = profile(m, act, "write (save_pretrained into the mount, until it returns)")
            wait_head(work / "store", old_head, timeout=600)

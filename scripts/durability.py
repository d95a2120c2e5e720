#!/usr/bin/env python3
"""The long durability campaign (issue 8) for the benchmark doc, or a replay of one seed.

    .venv/bin/python scripts/durability.py --minutes 3 [--seed S]
    .venv/bin/python scripts/durability.py --seed 12 --seconds 9 --no-doc   # replay a CI seed

Runs ``tests/durability/campaign.py`` (a real store, a real writable mount, writer threads,
renames, ``modelfs commit``/``gc``/``import`` and SIGKILLs of the daemon, against an exact
model of what must exist) in rounds of ``--round-seconds`` (seed S, S+1, ...), so a failure
replays as one short round and each round ends with the full check (final unmount, a mount
that recovers, every head read back through the mount, every version's files, ``fsck``).

Writes ``docs/durability-campaign.json`` (every round's counts and violations) and the
markdown table of counts ``docs/durability-campaign.md`` (included in docs/durability.md),
and prints the table. Exits 1 if any round found a violation. Needs root and FUSE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "durability"))

from campaign import Config, Report, fuse_missing, run_campaign, seeds_for  # noqa: E402

ROWS = [  # (label, how it is counted)
    ("actions", "writer, CLI and importer actions"),
    ("closed files", "files whose close() returned"),
    ("interrupted operations", "writes, closes, renames, unlinks a kill or stop cut short"),
    ("SIGKILLs of the daemon", "kill -9 at random points (some right after a close)"),
    ("restarts of the mount", "after each kill or SIGTERM, and the final recovering mount"),
    ("versions", "committed versions in the stores at the end"),
    ("commit barriers", "modelfs commit (exit 0) and fsync of a directory"),
    ("CLI commits / gc runs / imports", "modelfs commit, modelfs gc, modelfs import"),
    ("bytes written", "closed through the mount, plus imported"),
    ("files verified", "heads read through the mount, replaced files, imports, cp -r copies"),
    ("version entries checked", "every file of every version is a whole closed write"),
    ("violations", "of the model (0: it held)"),
    ("daemon log errors", "ERROR lines and tracebacks in the daemons' logs (for a look)"),
]


def row_values(c: Counter[str], violations: int) -> list[str]:
    def mib(n: int) -> str:
        return f"{n / (1 << 20):,.0f} MiB"

    return [
        f"{c['actions']:,}",
        f"{c['closed']:,}",
        f"{c['interrupted']:,}",
        f"{c['kills']:,}",
        f"{c['restarts']:,}",
        f"{c['versions']:,}",
        f"{c['barriers']:,}",
        f"{c['cli_commits']:,} / {c['gc_runs']:,} / {c['imports']:,}",
        mib(c["closed_bytes"] + c["import_bytes"]),
        f"{c['files_verified']:,}",
        f"{c['version_entries_checked']:,}",
        f"{violations:,}",
        f"{c['daemon_log_errors']:,}",
    ]


def table(c: Counter[str], violations: int, minutes: float, rounds: int, seed: int,
          wall_s: float) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    lines = [
        f"Durability campaign, {when}: {minutes:g} min of random actions in {rounds} rounds "
        f"(seeds {seed}..{seed + rounds - 1}), {wall_s:.0f} s wall, on {os.cpu_count()} "
        f"cores ({platform.machine()}, kernel {platform.release()}). "
        f"`scripts/durability.py --minutes {minutes:g} --seed {seed}`.",
        "",
        "| | count | what |",
        "|-|-:|-|",
    ]
    for (label, what), value in zip(ROWS, row_values(c, violations), strict=True):
        lines.append(f"| {label} | {value} | {what} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=None, help="total random-phase time")
    ap.add_argument("--seconds", type=float, default=None, help="the same, in seconds")
    ap.add_argument("--seed", type=int, default=None, help="first round's seed (default: clock)")
    ap.add_argument("--round-seconds", type=float, default=60.0)
    ap.add_argument("--root", type=Path, default=None, help="where stores go (default: a tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the stores and logs")
    ap.add_argument("--no-doc", action="store_true", help="write no docs/ files (a replay)")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "durability-campaign.json")
    ap.add_argument("--md", type=Path, default=ROOT / "docs" / "durability-campaign.md")
    args = ap.parse_args(argv)
    if why := fuse_missing():
        print(why, file=sys.stderr)
        return 2
    seconds = args.seconds if args.seconds is not None else (args.minutes or 1.0) * 60
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    print(f"durability campaign: {seconds:g}s from seed {seed}", flush=True)
    root = args.root or Path(tempfile.mkdtemp(prefix="modelfs-durability-"))
    reports: list[Report] = []
    t0 = time.monotonic()
    for s, secs in seeds_for(seconds / 60, seed, args.round_seconds):
        rep = run_campaign(Config(seed=s, root=root / f"seed{s}", seconds=secs,
                                  log=lambda m: print(m, flush=True)))
        reports.append(rep)
        if rep.ok and not args.keep:
            shutil.rmtree(root / f"seed{s}", ignore_errors=True)
    wall = time.monotonic() - t0
    total: Counter[str] = Counter()
    for r in reports:
        total.update(r.counts)
    violations = sum(len(r.violations) for r in reports)
    md = table(total, violations, seconds / 60, len(reports), seed, wall)
    print()
    print(md)
    for r in reports:
        if not r.ok:
            print(r.summary())
    if not args.no_doc:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "minutes": seconds / 60, "seed": seed, "wall_s": round(wall, 1),
            "cores": os.cpu_count(), "kernel": platform.release(),
            "totals": dict(sorted(total.items())), "violations": violations,
            "rounds": [r.to_json() for r in reports]}, indent=1) + "\n")
        args.md.write_text(md)
        print(f"wrote {args.json} and {args.md}")
    if violations and not args.keep:
        print(f"stores of failed rounds kept under {root}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

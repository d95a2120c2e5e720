"""py-spy profiles of a running daemon: install py-spy on first use, record, summarise stacks."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib.common import ROOT, log, run
from benchlib.mount import Mount, counter_delta


def pyspy(out_dir: Path) -> Path | None:
    exe = out_dir / "venv-pyspy" / "bin" / "py-spy"
    if exe.exists():
        return exe
    log("installing py-spy into a separate venv")
    r = run([sys.executable, "-m", "venv", str(out_dir / "venv-pyspy")], check=False)
    if r.returncode == 0:
        r = run([str(out_dir / "venv-pyspy" / "bin" / "pip"), "install", "-q", "py-spy"], check=False)
    return exe if exe.exists() else None


def summarise_raw(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        c = int(n)
        total += c
        frames = [_frame_name(f) for f in stack.split(";")]
        self_c[frames[-1]] += c
        for f in set(frames):
            if not any(p in f for p in _PLUMBING):
                incl[f] += c
        threads[_thread_kind(frames)] += c
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {"samples": total,
            "self": [(f, pct(c)) for f, c in self_c.most_common(top)],
            "inclusive": [(f, pct(c)) for f, c in incl.most_common(top)],
            "by_thread_kind": [(f, pct(c)) for f, c in threads.most_common()]}


def _frame_name(frame: str) -> str:
    """'read (modelfs/repo/files.py:140)' -> 'read (modelfs/repo/files.py)'."""
    name, sep, loc = frame.partition(" (")
    if not sep:
        return frame
    loc = loc.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
    if "/modelfs/" in loc:
        loc = "modelfs/" + loc.split("/modelfs/", 1)[1]
    return f"{name} ({loc})"


def _thread_kind(frames: list[str]) -> str:
    joined = ";".join(frames)
    if "concurrent/futures" in joined:
        return "thread pool (encode/store)"
    if "trio/_core/_thread_cache" in joined:
        return "trio worker threads (decode)"
    if "trio/_core/_run.py" in joined or "pyfuse3" in joined:
        return "trio loop (FUSE handlers, epoll wait)"
    return "other"


_PLUMBING = ("(threading.py)", "(concurrent/futures/", "(outcome/", "(trio/_core/_thread_cache.py)",
             "(trio/_threads.py)", "(trio/_core/_run.py)", "(<frozen runpy>)", "(_pyfuse3.py)",
             "(modelfs/fs/daemon.py)")


def make_profiler(exe: Path | None, out_dir: Path) -> Callable[..., Any] | None:
    if exe is None:
        return None

    def profile(m: Mount, act: Callable[[], None], label: str,
                prepare: Callable[[], None] | None = None) -> dict[str, Any]:
        """py-spy on the daemon while `act` runs; with `prepare`, a second run (prepare, act) under
        ``--gil`` (only the thread holding the GIL is sampled) says how much of the wall time the
        GIL was held, i.e. whether Python-level work serialises the decoding threads."""
        slug = "".join(ch if ch.isalnum() else "-" for ch in label)[:40].strip("-")
        res: dict[str, Any] = {"case": label, "rate": 250}
        passes = [("all", [])] + ([("gil", ["--gil"])] if prepare is not None else [])
        for kind, extra in passes:
            if prepare is not None:
                prepare()
            dest = out_dir / f"profile-{slug}{'-gil' if kind == 'gil' else ''}.txt"
            p = subprocess.Popen([str(exe), "record", "--pid", str(m.pid), "--rate", "250", "--nonblocking",
                                  "--format", "raw", "--output", str(dest), "--duration", "600", *extra],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(1.5)  # py-spy attaches
            c0, cpu0, t0 = m.counters(), m.cpu(), time.perf_counter()
            act()
            wall = time.perf_counter() - t0
            cpu = m.cpu() - cpu0
            counters = counter_delta(c0, m.counters())
            p.send_signal(2)  # SIGINT: py-spy writes its output and exits
            try:
                text, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                text, _ = p.communicate()
            if not dest.exists():
                res.setdefault("error", text.strip()[-400:])
                continue
            summ = summarise_raw(dest)
            rel = str(dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest)
            if kind == "all":
                res.update(summ, wall_s=round(wall, 3), daemon_cpu_s=round(cpu, 3), counters=counters, raw=rel)
            else:
                res["gil"] = {"samples": summ["samples"], "wall_s": round(wall, 3), "raw": rel,
                              "held_fraction": round(summ["samples"] / (wall * 250), 2),
                              "self": summ["self"][:8]}
        return res

    return profile

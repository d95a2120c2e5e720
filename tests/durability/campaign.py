"""The randomized durability campaign (issue 8): a real store, a real mount, and chaos.

Writer threads (one of them writing its files from a second process) write files into model
directories of a writable mount (small text, a few MB of random bytes, real safetensors files
saved with ``safetensors.numpy.save_file``, the write-to-temp-then-rename save, a big file
then a small one while ``modelfs commit`` starts), append, rename, unlink, read back and
``fsync`` the directory; a CLI thread runs ``modelfs commit``, ``gc`` and ``status``; an importer thread
runs ``modelfs import`` of fresh directories and of versions copied out of the mount; a
chaos thread SIGKILLs the daemon at random points (or stops it with SIGTERM) and mounts the
store again. Everything runs against an exact model of what must exist:

- every file whose ``close()`` returned is, after the campaign is quiesced (final unmount,
  then one more mount and unmount so recovery commits), byte-exact at its final path in its
  model's head, or, if the campaign later replaced or removed it, in some version wherever
  a commit barrier (a ``modelfs commit`` that succeeded, an ``fsync`` of the directory)
  lay between its close and its replacement;
- every file of every version is a whole closed write of that path (a file interrupted by
  a kill, or half written, never appears);
- nothing is left pending or in staging, ``modelfs fsck`` is clean, imports are exact.

Why the oracle stays exact: each writer owns its paths (``w<i>-*``), so only one operation
is in flight per path. An operation that a kill (or a stop) interrupts has a small set of
possible outcomes (a write: the old bytes or, once every byte was written, the new ones; a
rename: before or after; ``save_file``, which renames its temp file while still writing it
and ignores the error of its ``close()``: old, new or nothing); once the mount is back, the writer reads its paths through the
new mount and the model takes the one outcome that matches (none matching is a violation).

Threads interleave as the scheduler likes, so a seed fixes each thread's sequence of
actions and data, not their timing: replay a failure with the same seed and duration
(``scripts/durability.py --seed N --seconds S``) and it explores the same actions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import numpy as np

_FS_TESTS = Path(__file__).resolve().parent.parent / "fs"
if str(_FS_TESTS) not in sys.path:
    sys.path.insert(0, str(_FS_TESTS))

from mounthelp import Mounted, force_unmount, start_mount  # noqa: E402

PIECE = 1 << 20  # writes go out in 1 MiB pieces, as safetensors and cp do
KEEP_BYTES = 256 << 10  # contents kept in memory (for appends) below this size
TEMP_NAME = re.compile(r"\.tmp[A-Za-z0-9]{6}")  # safetensors' temp files
MAX_LIVE = 10  # live files per writer and model: beyond, writers remove or rename over


# -- configuration and report ---------------------------------------------------------------

@dataclass
class Config:
    """One campaign: its seed, where it lives, how long the random phase runs."""

    seed: int
    root: Path
    seconds: float = 12.0
    writers: int = 3
    proc_writers: int = 1  # of the writers, how many write their files from a second process
    models: int = 3  # writable models m0..m<n-1>; m0 is imported by the CLI at setup
    kill_every: tuple[float, float] = (1.2, 3.5)  # seconds between two chaos events
    term_share: float = 0.2  # of chaos events: SIGTERM and a clean restart instead of SIGKILL
    big_mib: tuple[float, float] = (0.5, 3.0)  # random-bytes files
    settle: float | None = None  # the daemon's --settle; None: drawn from the seed
    writer_weights: Mapping[str, int] | None = None  # override writers' action weights
    daemon_args: tuple[str, ...] = ()  # more daemon flags (``--debug`` for a replay)
    plant: bool = False  # self-test of the checks: make changes behind the model's back
    log: Callable[[str], None] = print


@dataclass
class Report:
    """What a campaign did and every violation of the model it found (empty: it held)."""

    seed: int
    seconds: float
    settle: float
    root: str
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        c = self.counts
        head = (f"seed {self.seed}: {c['actions']} actions, {c['closed']} closed files, "
                f"{c['kills']} kills, {c['restarts']} restarts, {c['versions']} versions, "
                f"{c['files_verified']} files verified, {len(self.violations)} violations "
                f"({self.wall_s:.1f}s, settle {self.settle}s, in {self.root})")
        lines = [head]
        lines += [f"  VIOLATION {v}" for v in self.violations[:40]]
        lines += [f"  warning {w}" for w in self.warnings[:20]]
        lines.append(f"  replay: .venv/bin/python scripts/durability.py --seed {self.seed} "
                     f"--seconds {self.seconds:g} --no-doc")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "seconds": self.seconds, "settle": self.settle,
                "wall_s": round(self.wall_s, 1), "counts": dict(sorted(self.counts.items())),
                "violations": self.violations, "warnings": self.warnings, "root": self.root}


# -- small helpers ---------------------------------------------------------------------------

def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def observe(path: Path) -> str | None:
    """blake3 of the file as read through the mount now; None if it is not there."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; ENOENT must be told apart)
    except FileNotFoundError:
        return None
    with f:
        h = blake3.blake3()
        while chunk := f.read(PIECE):
            h.update(chunk)
        return h.hexdigest()


def tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    off = 0
    while off < len(view):
        off += os.write(fd, view[off:off + PIECE])


def modelfs_argv() -> list[str]:
    exe = Path(sys.executable).parent / "modelfs"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "modelfs.cli.main"]


@dataclass(frozen=True)
class CliRun:
    argv: list[str]
    rc: int
    out: str
    err: str

    def tail(self) -> str:
        text = (self.out + self.err).strip().replace("\n", " | ")
        return text[-600:]


def run_cli(store: Path, *args: str, timeout: float = 120.0) -> CliRun:
    """The real ``modelfs`` in a subprocess, as a user runs it (no MODELFS_STORE)."""
    argv = [*modelfs_argv(), "--store", str(store), *args]
    env = {k: v for k, v in os.environ.items() if k != "MODELFS_STORE"}
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return CliRun(argv, -999, str(e.stdout or ""), f"timed out after {timeout}s")
    return CliRun(argv, p.returncode, p.stdout, p.stderr)


# -- the model of what must exist -------------------------------------------------------------

@dataclass(eq=False)
class Rec:
    """One whole content of one file: a write the campaign made (or the setup's import)."""

    model: str
    path: str  # where it was written
    digest: str
    size: int
    how: str
    data: bytes | None  # kept when small, for appends
    closed_at: float | None = None  # monotonic time its close returned (None: not certain)
    gone_at: float | None = None  # when the op that replaced or removed it began
    paths: set[str] = field(default_factory=set)  # every path it was shown at

    def __repr__(self) -> str:
        return f"<{self.how} {self.model}/{self.path} {self.digest[:10]} {self.size}B>"


Outcome = Mapping[str, Rec | None]  # path -> what it shows (None: absent)


class Oracle:
    """What each model's head must show, and what any version may hold."""

    def __init__(self, seed: int, report: Report, t0: float, events: Path) -> None:
        self.seed = seed
        self.report = report
        self.t0 = t0
        self.lock = threading.Lock()
        self.state: dict[tuple[str, str], Rec] = {}
        self.recs: list[Rec] = []
        self.allowed: set[tuple[str, str, str]] = set()  # (model, path, digest) ever shown
        self.history: dict[tuple[str, str], list[Rec]] = {}  # what each path showed, in order
        self.barriers: list[tuple[str, float, float, str]] = []  # model, start, end, what
        self.imports: dict[str, list[dict[str, str]]] = {}  # model -> manifests, in order
        self.import_times: dict[str, list[float]] = {}
        self.copies: list[tuple[str, dict[str, str]]] = []  # (ref, what cp -r read)
        self.closed_event = threading.Event()
        self.last_closed_model = "m0"
        self._events = open(events, "a", buffering=1)  # noqa: SIM115 (closed by close())

    def close(self) -> None:
        self._events.close()

    # -- bookkeeping --
    def event(self, who: str, what: str) -> None:
        with self.lock:
            self._events.write(f"{time.monotonic() - self.t0:8.3f} {who:>8} {what}\n")

    def violation(self, who: str, what: str) -> None:
        msg = f"[seed {self.seed}] t={time.monotonic() - self.t0:.2f}s {who}: {what}"
        with self.lock:
            self.report.violations.append(msg)
            self._events.write(f"VIOLATION {msg}\n")

    def warning(self, who: str, what: str) -> None:
        with self.lock:
            self.report.warnings.append(f"[seed {self.seed}] {who}: {what}")

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.report.counts[key] += n

    # -- contents --
    def new(self, model: str, path: str, data: bytes, how: str) -> Rec:
        r = Rec(model, path, digest(data), len(data), how,
                data if len(data) <= KEEP_BYTES else None)
        with self.lock:
            self.recs.append(r)
        return r

    def closed(self, rec: Rec) -> None:
        rec.closed_at = time.monotonic()
        self.last_closed_model = rec.model
        self.count("closed")
        self.count("closed_bytes", rec.size)
        self.closed_event.set()

    def at(self, model: str, path: str) -> Rec | None:
        with self.lock:
            return self.state.get((model, path))

    def live(self, model: str, prefixes: tuple[str, ...]) -> list[tuple[str, Rec]]:
        with self.lock:
            return sorted((p, r) for (m, p), r in self.state.items()
                          if m == model and p.startswith(prefixes))

    def files(self, model: str) -> dict[str, Rec]:
        with self.lock:
            return {p: r for (m, p), r in self.state.items() if m == model}

    def apply(self, model: str, outcome: Outcome, began: float) -> None:
        """The paths now show ``outcome``; what they showed before and no longer shows anywhere
        was replaced or removed by an operation that began at ``began``."""
        with self.lock:
            before = [self.state.get((model, p)) for p in outcome]
            for p, r in outcome.items():
                if r is None:
                    self.state.pop((model, p), None)
                else:
                    self.state[(model, p)] = r
                    r.paths.add(p)
                    self.allowed.add((model, p, r.digest))
                    h = self.history.setdefault((model, p), [])
                    if not h or h[-1] is not r:
                        h.append(r)
            still = {id(r) for (m, _), r in self.state.items() if m == model}
            for r in before:
                if r is not None and id(r) not in still and r.gone_at is None:
                    r.gone_at = began
            shown = ", ".join(f"{p}={r.digest[:10] if r else None}" for p, r in outcome.items())
            self._events.write(f"{time.monotonic() - self.t0:8.3f} "
                               f"{threading.current_thread().name:>8} {model}: {shown}\n")

    def barrier(self, model: str, start: float, end: float, what: str) -> None:
        """Every file of ``model`` closed before ``start`` is in a version once ``end`` passed."""
        with self.lock:
            self.barriers.append((model, start, end, what))
            self.report.counts["barriers"] += 1


# -- the mount and its restarts -------------------------------------------------------------

class Aborted(Exception):
    """The mount cannot be started again: the campaign ends (already reported)."""


class MountCtl:
    """The one writable mount: started, killed and restarted; writers wait while it is down."""

    def __init__(self, store: Path, root: Path, settle: float, oracle: Oracle) -> None:
        self.store, self.root, self.settle, self.o = store, root, settle, oracle
        self.epoch = 0
        self.up = threading.Event()
        self.m: Mounted | None = None
        self.n = 0
        self.logs: list[Path] = []
        self.daemon_args: tuple[str, ...] = ()
        self.dead = False

    def start(self) -> None:
        n = self.n
        self.n += 1
        log = self.root / f"daemon{n}.log"
        self.logs.append(log)
        t = time.monotonic()
        self.m = start_mount(self.store, self.root / f"mnt{n}", log,
                             extra=("--settle", str(self.settle), *self.daemon_args))
        self.epoch += 1
        self.o.event("mount", f"mounted {self.m.path} (epoch {self.epoch}, pid {self.m.proc.pid}, "
                     f"{time.monotonic() - t:.2f}s)")
        self.up.set()

    def current(self) -> tuple[int, Path]:
        """The epoch and mount point to use now (waits while the mount is being restarted)."""
        while True:
            self.up.wait()
            if self.dead:
                raise Aborted("the mount is gone")
            m, e = self.m, self.epoch
            if m is not None and self.up.is_set():
                return e, m.path

    def disturbed(self, epoch: int) -> bool:
        """Whether the daemon of ``epoch`` was stopped or killed (so its errors are expected)."""
        return epoch != self.epoch or not self.up.is_set()

    def kill(self) -> None:
        assert self.m is not None
        self.up.clear()
        m = self.m
        self.o.event("chaos", f"SIGKILL pid {m.proc.pid}")
        m.proc.kill()
        m.proc.wait(10)
        force_unmount(m.path)
        self.o.count("kills")

    def term(self, who: str = "chaos") -> None:
        """SIGTERM: the daemon stores and commits everything, then exits 0."""
        assert self.m is not None
        self.up.clear()
        m = self.m
        t = time.monotonic()
        rc = m.stop(timeout=45)
        self.o.count("terms")
        self.o.event(who, f"SIGTERM pid {m.proc.pid}: exit {rc} in {time.monotonic() - t:.2f}s")
        if rc != 0:
            self.o.violation(who, f"daemon {m.proc.pid} exited {rc} after SIGTERM (log "
                             f"{m.log}): {tail(m.log)!r}")

    def umount_cli(self) -> None:
        """``modelfs umount``: exits 0 once every draft is committed."""
        assert self.m is not None
        self.up.clear()
        m = self.m
        r = run_cli(self.store, "umount", str(m.path), "--timeout", "60")
        self.o.event("final", f"modelfs umount: rc {r.rc}: {r.tail()}")
        if r.rc != 0:
            self.o.violation("final", f"modelfs umount exited {r.rc}: {r.tail()}")
        try:
            m.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.o.violation("final", f"daemon {m.proc.pid} still running 30s after umount")
        m.stop()
        if m.proc.returncode != 0:
            self.o.violation("final", f"daemon exited {m.proc.returncode} after modelfs umount")

    def restart(self) -> None:
        """Mount again; a mount that will not come up (three tries) ends the campaign."""
        for attempt in range(3):
            try:
                self.start()
                self.o.count("restarts")
                return
            except Exception as e:
                self.o.violation("mount", f"mount #{self.n - 1} failed (try {attempt + 1}): "
                                 f"{str(e)[-800:]}")
                time.sleep(1.0)
        self.dead = True
        self.up.set()  # wake the waiters: they find the campaign aborted
        raise Aborted("the mount does not come up any more")


# -- the threads ----------------------------------------------------------------------------

class Actor(threading.Thread):
    """A campaign thread: its own seeded generator; an exception is a violation, not a hang."""

    def __init__(self, c: Campaign, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.c, self.o, self.ctl = c, c.oracle, c.ctl
        self.rng = random.Random(f"{c.cfg.seed}/{name}")
        self.np = np.random.default_rng(self.rng.getrandbits(64))

    def run(self) -> None:
        try:
            self.body()
        except Aborted:
            self.c.stop.set()
        except BaseException:
            self.o.violation(self.name, "thread crashed: " + traceback.format_exc()[-1500:])

    def body(self) -> None:
        raise NotImplementedError

    def pause(self, lo: float, hi: float) -> None:
        self.c.stop.wait(self.rng.uniform(lo, hi))


class StepFailed(Exception):
    """A write failed at ``step`` (open, write, close)."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(step, error)
        self.step, self.error = step, error


class Writer(Actor):
    """Writes, replaces, renames and removes its own files (``w<i>-*``) in every model."""

    ACTIONS = {"small": 22, "big": 7, "tmp_save": 10, "st_save": 10, "append": 7, "rename": 9,
               "unlink": 6, "readback": 12, "dirsync": 3, "race_commit": 2}
    CREATE = ("small", "big", "tmp_save", "st_save", "race_commit")

    def __init__(self, c: Campaign, i: int) -> None:
        super().__init__(c, f"w{i}")
        self.i = i
        self.n = 0
        self.prefix = f"w{i}-"
        self.tmp_prefix = f".tmp-w{i}-"
        self.weights: dict[str, dict[str, np.ndarray]] = {}

    # -- choosing --
    def mine(self, model: str) -> list[tuple[str, Rec]]:
        return self.o.live(model, (self.prefix, self.tmp_prefix))

    def fresh_name(self, ext: str) -> str:
        self.n += 1
        return f"{self.prefix}{self.n:04d}{ext}"

    def target(self, model: str, ext: str) -> str:
        same = [p for p, _ in self.mine(model) if p.endswith(ext) and p.startswith(self.prefix)]
        if same and (self.rng.random() < 0.45 or len(self.mine(model)) >= MAX_LIVE):
            return self.rng.choice(same)
        return self.fresh_name(ext)

    def text(self) -> bytes:
        self.n += 1
        words = " ".join(f"{self.rng.getrandbits(32):08x}" for _ in range(self.rng.randint(4, 400)))
        return f'{{"writer": {self.i}, "n": {self.n}, "seed": {self.c.cfg.seed}, "w": "{words}"}}\n'.encode()

    def tensors(self, model: str) -> dict[str, np.ndarray]:
        """A small checkpoint, each save a fine-tune-like step of this writer's last one."""
        w = self.weights.get(model)
        if w is None or self.rng.random() < 0.15:
            n = self.rng.choice([2_000, 30_000, 120_000, 260_000])
            w = {"embed.weight": self.np.standard_normal(n, dtype=np.float32),
                 "layer.0.weight": self.np.standard_normal((64, 64), dtype=np.float32),
                 "layer.0.bias": np.zeros(64, dtype=np.float32)}
        else:
            w = {k: (v + self.np.standard_normal(v.shape, dtype=np.float32) * 1e-4).astype(v.dtype)
                 for k, v in w.items()}
            if self.rng.random() < 0.2:
                w["layer.0.half"] = w["layer.0.weight"].astype(np.float16)
        self.weights[model] = w
        return w

    def st_bytes(self, model: str) -> tuple[dict[str, np.ndarray], dict[str, str], bytes]:
        from safetensors.numpy import save

        t = self.tensors(model)
        self.n += 1
        meta = {"step": f"{self.i}-{self.n}"}  # one key: safetensors shuffles several
        return t, meta, save(t, metadata=meta)

    # -- the loop --
    def body(self) -> None:
        actions = {**self.ACTIONS, **(self.c.cfg.writer_weights or {})}
        names, weights = zip(*actions.items(), strict=True)
        while not self.c.stop.is_set():
            model = self.rng.choice(self.c.models)
            act = self.rng.choices(names, weights)[0]
            mine = self.mine(model)
            if len(mine) >= MAX_LIVE and act in self.CREATE:
                act = self.rng.choice(["unlink", "rename"])
            if not mine and act in ("append", "rename", "unlink", "readback"):
                act = "small"
            self.o.count("actions")
            self.o.count(f"act.{act}")
            getattr(self, "do_" + act)(model)
            self.pause(0.0, 0.12)

    # -- outcomes --
    def failed(self, err: BaseException, epoch: int, model: str, what: str,
               outcomes: list[Outcome], began: float) -> None:
        """An op failed: expected when its daemon was killed or stopped, else a violation.

        Either way the paths it touched show one of ``outcomes`` once the mount answers.
        """
        if self.ctl.disturbed(epoch):
            self.o.count("interrupted")
            self.o.event(self.name, f"{what}: interrupted ({err!r})")
        else:
            self.o.violation(self.name, f"{what} failed while the daemon was up: {err!r}")
        self.reconcile(model, what, outcomes, began)

    def reconcile(self, model: str, what: str, outcomes: list[Outcome], began: float) -> None:
        paths = sorted({p for o in outcomes for p in o})
        while True:
            epoch, mnt = self.ctl.current()
            try:
                seen = {p: observe(mnt / model / p) for p in paths}
                break
            except OSError as e:
                if not self.ctl.disturbed(epoch):
                    self.o.violation(self.name, f"after {what}: reading back failed: {e!r}")
                    return
        for o in outcomes:
            if all(seen[p] == (r.digest if r else None) for p, r in o.items()):
                self.o.apply(model, o, began)
                self.o.event(self.name, f"after {what}: {model} shows {dict(o)}")
                return
        shown = {p: (d[:10] if d else None) for p, d in seen.items()}
        self.o.violation(self.name, f"after {what}: {model} shows {shown}, which is none of "
                         f"the possible outcomes {outcomes}")
        adopted: dict[str, Rec | None] = {}
        for p, d in seen.items():  # follow what is there, so one fault is reported once
            if d is None:
                adopted[p] = None
                continue
            known = next((r for o in outcomes for r in o.values() if r and r.digest == d), None)
            adopted[p] = known or Rec(model, p, d, -1, "unknown", None)
        self.o.apply(model, adopted, began)

    # -- actions --
    def raw_write(self, full: Path, data: bytes, flags: int) -> None:
        """open, write in 1 MiB pieces, close; ``StepFailed`` says at which step it failed."""
        step = "open"
        try:
            fd = os.open(full, os.O_WRONLY | flags, 0o644)
            step = "write"
            try:
                write_all(fd, data)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            step = "close"
            os.close(fd)
        except OSError as e:
            raise StepFailed(step, e) from None

    def write_file(self, model: str, path: str, data: bytes, how: str, flags: int,
                   content: bytes | None = None) -> Rec | None:
        """Write ``data`` to a file that then holds ``content`` (``data`` unless appending).

        Returns the new content, or None if it did not survive.
        """
        old = self.o.at(model, path)
        epoch, mnt = self.ctl.current()
        began = time.monotonic()
        rec = self.o.new(model, path, data if content is None else content, how)
        try:
            self.raw_write(mnt / model / path, data, flags)
        except StepFailed as e:
            outs: list[Outcome] = [{path: old}]
            if e.step == "close":  # every byte was written: the close may have been recorded
                outs.append({path: rec})
            self.failed(e.error, epoch, model, f"{how} {path} ({e.step})", outs, began)
            return rec if self.o.at(model, path) is rec else None
        self.o.closed(rec)
        self.o.apply(model, {path: rec}, began)
        return rec

    def do_small(self, model: str) -> None:
        self.write_file(model, self.target(model, ".json"), self.text(), "small",
                        os.O_CREAT | os.O_TRUNC)

    def do_big(self, model: str) -> None:
        size = int(self.rng.uniform(*self.c.cfg.big_mib) * (1 << 20))
        self.write_file(model, self.target(model, ".bin"), self.np.bytes(size), "big",
                        os.O_CREAT | os.O_TRUNC)

    def do_append(self, model: str) -> None:
        small = [(p, r) for p, r in self.mine(model) if r.data is not None]
        if not small:
            return self.do_small(model)
        path, old = self.rng.choice(small)
        assert old.data is not None
        extra = self.text()
        self.write_file(model, path, extra, "append", os.O_APPEND, content=old.data + extra)
        return None

    def do_tmp_save(self, model: str) -> None:
        """Write ``.tmp-w<i>-<n>``, close it, rename it over the target (torch.save style)."""
        if self.rng.random() < 0.5:
            ext, data = ".safetensors", self.st_bytes(model)[2]
        else:
            ext, data = ".bin", self.np.bytes(int(self.rng.uniform(*self.c.cfg.big_mib) * (1 << 20)))
        target = self.target(model, ext)
        self.n += 1
        tmp = f"{self.tmp_prefix}{self.n:04d}"
        rec = self.write_file(model, tmp, data, "tmp_save", os.O_CREAT | os.O_EXCL)
        if rec is None or self.o.at(model, tmp) is not rec:
            return
        self.rename(model, tmp, target, rec)

    def do_st_save(self, model: str) -> None:
        """``safetensors.numpy.save_file`` into the mount: its own ``.tmpXXXXXX`` and rename."""
        from safetensors.numpy import save_file

        tensors, meta, data = self.st_bytes(model)
        target = self.target(model, ".safetensors")
        old = self.o.at(model, target)
        epoch, mnt = self.ctl.current()
        began = time.monotonic()
        rec = self.o.new(model, target, data, "st_save")
        # what a cut save leaves: the old file, the new one, or (renamed while still open, then
        # never closed) nothing: the store never shows bytes that were not closed
        outs: list[Outcome] = [{target: old}, {target: rec}, {target: None}]
        try:
            save_file(tensors, str(mnt / model / target), metadata=meta)
        except Exception as e:  # SafetensorError wraps the OSError
            self.failed(e, epoch, model, f"save_file {target}", outs, began)
            self.adopt_temp(model, rec, began)
            return
        if self.ctl.disturbed(epoch):
            # safetensors drops close()'s error (Rust's File drop): a save that returned while
            # its daemon was being killed may never have been closed
            self.o.count("interrupted")
            self.o.event(self.name, f"save_file {target}: returned as the daemon went down")
            self.reconcile(model, f"save_file {target}", outs, began)
            return
        self.o.closed(rec)
        self.o.apply(model, {target: rec}, began)

    def adopt_temp(self, model: str, rec: Rec, began: float) -> None:
        """A ``save_file`` whose rename failed (ENOENT once a stop detached the mount) closes
        its whole ``.tmpXXXXXX`` file: a closed file, kept. Find it by its bytes."""
        if self.o.at(model, rec.path) is rec:
            return
        epoch, mnt = self.ctl.current()
        known = self.o.files(model)
        try:
            names = [n for n in os.listdir(mnt / model) if TEMP_NAME.fullmatch(n) and n not in known]
            for n in names:
                if observe(mnt / model / n) == rec.digest:
                    self.o.apply(model, {n: rec}, began)
                    self.o.count("kept_temp_files")
                    self.o.event(self.name, f"save_file's temp file {model}/{n} holds {rec}")
                    return
        except OSError as e:
            if not self.ctl.disturbed(epoch):
                self.o.violation(self.name, f"listing {model}/ failed: {e!r}")

    def do_rename(self, model: str) -> None:
        mine = self.mine(model)
        src, rec = self.rng.choice(mine)
        ext = os.path.splitext(src)[1] if src.startswith(self.prefix) else ".bin"
        others = [p for p, _ in mine if p != src and p.startswith(self.prefix)]
        dst = self.rng.choice(others) if others and self.rng.random() < 0.4 else self.fresh_name(ext)
        self.rename(model, src, dst, rec)

    def rename(self, model: str, src: str, dst: str, rec: Rec) -> None:
        """Rename ``src`` (holding ``rec``) over ``dst``; a cut rename may have gone either way."""
        old = self.o.at(model, dst)
        epoch, mnt = self.ctl.current()
        began = time.monotonic()
        try:
            os.rename(mnt / model / src, mnt / model / dst)
        except OSError as e:
            self.failed(e, epoch, model, f"rename {src} -> {dst}",
                        [{src: rec, dst: old}, {src: None, dst: rec}], began)
            return
        self.o.apply(model, {src: None, dst: rec}, began)

    def do_unlink(self, model: str) -> None:
        path, rec = self.rng.choice(self.mine(model))
        epoch, mnt = self.ctl.current()
        began = time.monotonic()
        try:
            os.unlink(mnt / model / path)
        except OSError as e:
            self.failed(e, epoch, model, f"unlink {path}", [{path: rec}, {path: None}], began)
            return
        self.o.apply(model, {path: None}, began)

    def do_readback(self, model: str) -> None:
        """Read one of this writer's files through the mount: it shows the last closed write."""
        path, rec = self.rng.choice(self.mine(model))
        epoch, mnt = self.ctl.current()
        try:
            got = observe(mnt / model / path)
        except OSError as e:
            if not self.ctl.disturbed(epoch):
                self.o.violation(self.name, f"reading {model}/{path} failed: {e!r}")
            return
        if self.ctl.disturbed(epoch):
            return
        self.o.count("readbacks")
        if got != rec.digest:
            self.o.violation(self.name, f"{model}/{path} reads back as {got and got[:10]}, "
                             f"not the last closed write {rec}")

    def do_race_commit(self, model: str) -> None:
        """Issue 8 case 1: a big file, then a small one, closed while ``modelfs commit`` starts.

        The CLI must leave the live mount's staging files alone; no barrier is recorded (the
        commit may have looked before the closes), the final checks see a lost file.
        """
        argv = [*modelfs_argv(), "--store", str(self.c.store), "commit", model]
        env = {k: v for k, v in os.environ.items() if k != "MODELFS_STORE"}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            time.sleep(self.rng.uniform(0.1, 0.5))  # the CLI is starting up meanwhile
            self.n += 1
            stem = f"{self.prefix}{self.n:04d}-race"
            size = int(self.rng.uniform(6, 24) * (1 << 20))
            self.write_file(model, stem + "-a.bin", self.np.bytes(size), "race",
                            os.O_CREAT | os.O_TRUNC)
            self.write_file(model, stem + "-b.json", self.text(), "race", os.O_CREAT | os.O_TRUNC)
        finally:
            out, err = proc.communicate(timeout=180)
        self.o.event(self.name, f"race commit {model}: rc {proc.returncode}: {(out + err)[-300:]!r}")
        if "Traceback" in err or proc.returncode not in (0, 1):
            self.o.violation(self.name, f"modelfs commit {model} (raced): rc {proc.returncode}: "
                             f"{(out + err)[-600:]!r}")

    def do_dirsync(self, model: str) -> None:
        """fsync of the model's directory commits it now: a barrier for the oracle."""
        epoch, mnt = self.ctl.current()
        began = time.monotonic()
        try:
            fd = os.open(mnt / model, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            if not self.ctl.disturbed(epoch):
                self.o.violation(self.name, f"fsync of {model}/ failed: {e!r}")
            return
        took = time.monotonic() - began
        if took > 30:
            self.o.warning(self.name, f"fsync of {model}/ took {took:.1f}s")
        self.o.barrier(model, began, time.monotonic(), "fsync")


class ProcWriter(Writer):
    """A writer whose file writes a second process makes (two processes writing one mount).

    The child (``python campaign.py --child``) gets one request a line, the file to write
    and where its bytes are, and answers with the step that failed, if any. Close times are
    taken when the answer arrives, later than the real close: the barrier rule stays safe.
    """

    def body(self) -> None:
        self.spool = self.c.root / "spool" / self.name
        self.spool.mkdir(parents=True, exist_ok=True)
        self.child = subprocess.Popen([sys.executable, __file__, "--child"], text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            super().body()
        finally:
            assert self.child.stdin is not None
            self.child.stdin.close()
            self.child.wait(30)

    def raw_write(self, full: Path, data: bytes, flags: int) -> None:
        assert self.child.stdin is not None and self.child.stdout is not None
        src = self.spool / "data"
        src.write_bytes(data)
        self.child.stdin.write(json.dumps({"path": str(full), "data": str(src), "flags": flags})
                               + "\n")
        self.child.stdin.flush()
        reply = json.loads(self.child.stdout.readline())
        if not reply["ok"]:
            raise StepFailed(reply["step"], OSError(reply["errno"], reply["err"]))


def _child() -> int:
    """The second writing process: writes what it is told, says where it failed."""
    for line in sys.stdin:
        req = json.loads(line)
        data = Path(req["data"]).read_bytes()
        step = "open"
        try:
            fd = os.open(req["path"], os.O_WRONLY | req["flags"], 0o644)
            step = "write"
            try:
                write_all(fd, data)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            step = "close"
            os.close(fd)
            reply: dict[str, Any] = {"ok": True}
        except OSError as e:
            reply = {"ok": False, "step": step, "errno": e.errno, "err": e.strerror or str(e)}
        print(json.dumps(reply), flush=True)
    return 0


class CliUser(Actor):
    """``modelfs commit``, ``gc`` and ``status`` against the store the mount is serving."""

    ACTIONS = {"commit": 35, "commit_after_close": 15, "gc": 20, "status": 10}

    def body(self) -> None:
        names, weights = zip(*self.ACTIONS.items(), strict=True)
        while not self.c.stop.is_set():
            self.pause(0.1, 0.7)
            if self.c.stop.is_set():
                return
            act = self.rng.choices(names, weights)[0]
            self.o.count("actions")
            self.o.count(f"act.{act}")
            getattr(self, "do_" + act)()

    def do_commit_after_close(self) -> None:
        """``modelfs commit`` of the model a file was just closed in (it is being stored)."""
        self.o.closed_event.clear()
        if self.o.closed_event.wait(2.0):
            self.do_commit(self.o.last_closed_model)

    def do_commit(self, model: str | None = None) -> None:
        model = model or self.rng.choice(self.c.models)
        began = time.monotonic()
        r = run_cli(self.c.store, "commit", model, "-m", "campaign")
        self.o.event(self.name, f"commit {model}: rc {r.rc}: {r.tail()}")
        if r.rc == 0:
            self.o.count("cli_commits")
            self.o.barrier(model, began, time.monotonic(), "modelfs commit")
        elif "Traceback" in r.err or r.rc != 1:
            self.o.violation(self.name, f"modelfs commit {model}: rc {r.rc}: {r.tail()}")
        else:
            self.o.count("cli_commits_refused")  # files still being stored: one clear line

    def do_gc(self) -> None:
        r = run_cli(self.c.store, "gc", "--json")
        self.o.event(self.name, f"gc: rc {r.rc}: {r.tail()}")
        if r.rc != 0:
            self.o.violation(self.name, f"modelfs gc: rc {r.rc}: {r.tail()}")
            return
        self.o.count("gc_runs")
        with contextlib.suppress(ValueError, AttributeError):
            self.o.count("gc_chunks_removed", int(json.loads(r.out).get("chunks_removed", 0)))

    def do_status(self) -> None:
        r = run_cli(self.c.store, "status")
        if r.rc != 0:
            self.o.violation(self.name, f"modelfs status: rc {r.rc}: {r.tail()}")


class Importer(Actor):
    """``modelfs import`` of fresh directories and of versions copied out of the mount."""

    ACTIONS = {"import_new": 40, "import_copy": 25, "verify_import": 35}

    def __init__(self, c: Campaign) -> None:
        super().__init__(c, "imp")
        self.k = 0
        self.weights: dict[str, np.ndarray] = {}

    def body(self) -> None:
        names, weights = zip(*self.ACTIONS.items(), strict=True)
        while not self.c.stop.is_set():
            self.pause(0.5, 1.5)
            if self.c.stop.is_set():
                return
            act = self.rng.choices(names, weights)[0]
            self.o.count("actions")
            self.o.count(f"act.{act}")
            getattr(self, "do_" + act)()

    def run_import(self, src: Path, model: str) -> None:
        manifest = {p.relative_to(src).as_posix(): digest(p.read_bytes())
                    for p in sorted(src.rglob("*")) if p.is_file()}
        r = run_cli(self.c.store, "import", str(src), "--model", model, "-m", "campaign")
        self.o.event(self.name, f"import {src.name} -> {model}: rc {r.rc}: {r.tail()}")
        if r.rc != 0:
            self.o.violation(self.name, f"modelfs import {src} --model {model}: rc {r.rc}: "
                             f"{r.tail()}")
            return
        self.o.count("imports")
        self.o.count("import_bytes", sum(p.stat().st_size for p in src.rglob("*") if p.is_file()))
        with self.o.lock:
            self.o.imports.setdefault(model, []).append(manifest)
            self.o.import_times.setdefault(model, []).append(time.monotonic())

    def do_import_new(self) -> None:
        from safetensors.numpy import save_file

        model = f"imp{self.rng.randrange(2)}"
        self.k += 1
        src = self.c.root / "imports" / f"{model}-{self.k:03d}"
        src.mkdir(parents=True)
        w = self.weights.get(model)
        w = (self.np.standard_normal(100_000, dtype=np.float32) if w is None
             else w + self.np.standard_normal(w.shape, dtype=np.float32) * 1e-3)
        self.weights[model] = w
        save_file({"w": w, "b": w[:64].copy()}, str(src / "model.safetensors"),
                  metadata={"k": str(self.k)})
        (src / "config.json").write_text(json.dumps({"k": self.k, "seed": self.c.cfg.seed}) + "\n")
        if self.rng.random() < 0.5:
            (src / "sub").mkdir()
            (src / "sub" / "blob.bin").write_bytes(self.np.bytes(self.rng.randint(1, 600_000)))
        self.run_import(src, model)

    def do_import_copy(self) -> None:
        """Copy a committed version out of the mount (``cp -r``) and import it as a new model."""
        model = self.rng.choice(self.c.models)
        epoch, mnt = self.ctl.current()
        self.k += 1
        dst = self.c.root / "imports" / f"copy-{self.k:03d}"
        try:
            ref = os.getxattr(mnt / model, "user.modelfs.ref").decode()
            shutil.copytree(mnt / ref, dst, copy_function=shutil.copyfile)
        except (OSError, shutil.Error) as e:
            if not self.ctl.disturbed(epoch):
                self.o.violation(self.name, f"copying {model}'s head version out of the mount "
                                 f"failed: {e!r}")
            shutil.rmtree(dst, ignore_errors=True)
            return
        if self.ctl.disturbed(epoch):  # the copy may be short: a read on a dead mount
            shutil.rmtree(dst, ignore_errors=True)
            return
        manifest = {p.relative_to(dst).as_posix(): digest(p.read_bytes())
                    for p in sorted(dst.rglob("*")) if p.is_file()}
        self.o.count("version_files_read", len(manifest))
        with self.o.lock:  # checked against the version's manifest at the end
            self.o.copies.append((ref, manifest))
        self.run_import(dst, f"copy{self.rng.randrange(2)}")

    def do_verify_import(self) -> None:
        """An imported version, read through the mount, is exactly what was imported."""
        with self.o.lock:
            done = [(m, n, man) for m, mans in self.o.imports.items()
                    for n, (man, t) in enumerate(zip(mans, self.o.import_times[m], strict=True), 1)
                    if time.monotonic() - t > 2.0]  # the mount polls for commits twice a second
        if not done:
            return
        model, n, manifest = self.rng.choice(done)
        for attempt in range(6):  # a busy daemon may take a while to see a new model
            epoch, mnt = self.ctl.current()
            d = mnt / f"{model}@{n}"
            try:
                if not d.is_dir():
                    raise FileNotFoundError(errno.ENOENT, "not shown (yet)", str(d))
                got = {p.relative_to(d).as_posix(): observe(p) for p in sorted(d.rglob("*"))
                       if p.is_file()}
                break
            except FileNotFoundError as e:
                if attempt == 5 and not self.ctl.disturbed(epoch):
                    self.o.violation(self.name, f"{model}@{n}, imported, is not in the mount "
                                     f"after 5s more: {e!r}")
                    return
                time.sleep(1.0)
            except OSError as e:
                if not self.ctl.disturbed(epoch):
                    self.o.violation(self.name, f"reading {model}@{n} through the mount: {e!r}")
                return
        else:
            return
        if self.ctl.disturbed(epoch):
            return
        self.o.count("version_files_read", len(got))
        if got != manifest:
            self.o.violation(self.name, f"{model}@{n} through the mount is {got}, imported "
                             f"{manifest}")


class Chaos(Actor):
    """SIGKILLs the daemon at random points (sometimes right after a close), or SIGTERMs it."""

    def __init__(self, c: Campaign) -> None:
        super().__init__(c, "chaos")

    def body(self) -> None:
        while not self.c.stop.is_set():
            self.pause(*self.c.cfg.kill_every)
            if self.c.stop.is_set():
                return
            first = self.o.report.counts["kills"] == 0  # every campaign kills at least once
            if not first and self.rng.random() < self.c.cfg.term_share:
                self.ctl.term()
            else:
                if self.rng.random() < 0.35:  # into the window between a close and its store
                    self.o.closed_event.clear()
                    self.o.closed_event.wait(2.0)
                    time.sleep(self.rng.uniform(0, 0.05))
                self.ctl.kill()
            self.ctl.restart()


# -- the campaign ---------------------------------------------------------------------------

class Campaign:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rng = random.Random(f"{cfg.seed}/main")
        settle = cfg.settle if cfg.settle is not None else self.rng.choice([0.2, 0.4, 1.0])
        cfg.root.mkdir(parents=True, exist_ok=True)
        self.root = cfg.root
        self.store = cfg.root / "store"
        self.report = Report(cfg.seed, cfg.seconds, settle, str(cfg.root))
        self.t0 = time.monotonic()
        self.oracle = Oracle(cfg.seed, self.report, self.t0, cfg.root / "events.log")
        self.ctl = MountCtl(self.store, cfg.root, settle, self.oracle)
        self.ctl.daemon_args = cfg.daemon_args
        self.models = [f"m{i}" for i in range(cfg.models)]
        self.stop = threading.Event()

    def log(self, msg: str) -> None:
        self.cfg.log(f"[durability seed {self.cfg.seed}] {msg}")

    # -- setup --
    def setup(self) -> None:
        """m0 imported by the CLI; the other models made with mkdir in the mount."""
        from safetensors.numpy import save

        o = self.oracle
        r = run_cli(self.store, "init")
        if r.rc != 0:
            raise RuntimeError(f"modelfs init: {r.tail()}")
        src = self.root / "imports" / "m0-setup"
        src.mkdir(parents=True)
        rng = np.random.default_rng(self.cfg.seed)
        base = {"embed.weight": rng.standard_normal(30_000, dtype=np.float32),
                "layer.0.weight": rng.standard_normal((64, 64), dtype=np.float32),
                "layer.0.bias": np.zeros(64, dtype=np.float32)}
        files = {"w0-model.safetensors": save(base, metadata={"step": "0"}),
                 "w0-config.json": json.dumps({"seed": self.cfg.seed}).encode() + b"\n"}
        for name, data in files.items():
            (src / name).write_bytes(data)
        r = run_cli(self.store, "import", str(src), "--model", "m0")
        if r.rc != 0:
            raise RuntimeError(f"modelfs import of the setup model: {r.tail()}")
        for name, data in files.items():
            rec = o.new("m0", name, data, "setup")
            rec.closed_at = time.monotonic()
            o.apply("m0", {name: rec}, rec.closed_at)
        self.ctl.start()
        _, mnt = self.ctl.current()
        for i, model in enumerate(self.models[1:], 1):
            os.mkdir(mnt / model)
            name = f"w{i % self.cfg.writers}-first.safetensors"
            data = save({"embed.weight": base["embed.weight"] + 1e-3,
                         "layer.0.weight": base["layer.0.weight"]}, metadata={"step": "1"})
            rec = o.new(model, name, data, "setup")
            began = time.monotonic()
            (mnt / model / name).write_bytes(data)
            o.closed(rec)
            o.apply(model, {name: rec}, began)
            fd = os.open(mnt / model, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            o.barrier(model, time.monotonic(), time.monotonic(), "setup fsync")

    # -- the random phase --
    def chaos_phase(self) -> None:
        n = self.cfg.writers
        threads: list[Actor] = [Writer(self, i) for i in range(n - self.cfg.proc_writers)]
        threads += [ProcWriter(self, i) for i in range(n - self.cfg.proc_writers, n)]
        threads += [CliUser(self, "cli"), Importer(self), Chaos(self)]
        for t in threads:
            t.start()
        self.stop.wait(self.cfg.seconds)
        self.stop.set()
        deadline = time.monotonic() + 90
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.oracle.violation("main", f"threads {stuck} still running 90s after the end "
                                  "(a hung operation); killing the daemon to free them")
            with contextlib.suppress(Exception):
                self.ctl.kill()
                self.ctl.restart()
            for t in threads:
                t.join(30)

    def plant_faults(self) -> None:
        """Changes the model does not know of, which the final checks must report."""
        _, mnt = self.ctl.current()
        (mnt / "m0" / "w0-planted.bin").write_bytes(b"planted behind the model's back\n")
        mine = self.oracle.live("m1", ("w",))
        if mine:
            os.unlink(mnt / "m1" / mine[0][0])
        self.oracle.event("main", f"planted w0-planted.bin in m0, removed m1/{mine[:1]}")

    # -- quiescing and checking --
    def quiesce(self) -> None:
        """Final unmount (``modelfs umount`` or SIGTERM), then a mount that recovers, read back."""
        if self.rng.random() < 0.5:
            self.ctl.umount_cli()
        else:
            self.ctl.term("final")
        self.check_staging("the clean final unmount")
        self.oracle.count("restarts")
        self.ctl.start()
        _, mnt = self.ctl.current()
        for model in self.models:
            self.check_head_through_mount(mnt, model)
        for model, mans in sorted(self.oracle.imports.items()):
            got = {p.relative_to(mnt / model).as_posix(): observe(p)
                   for p in sorted((mnt / model).rglob("*")) if p.is_file()}
            self.oracle.count("files_verified", len(got))
            if got != mans[-1]:
                self.oracle.violation("final", f"{model} through the mount is {got}, last "
                                      f"imported {mans[-1]}")
        self.ctl.term("final")

    def check_head_through_mount(self, mnt: Path, model: str) -> None:
        o = self.oracle
        want = {p: r.digest for p, r in o.files(model).items()}
        got = {p.relative_to(mnt / model).as_posix(): observe(p)
               for p in sorted((mnt / model).rglob("*")) if p.is_file()}
        o.count("files_verified", len(want))
        for p in sorted(set(want) | set(got)):
            if want.get(p) != got.get(p):
                o.violation("final", f"{model}/{p} through the final mount: "
                            f"{(got.get(p) or 'absent')[:10]}, expected "
                            f"{(want.get(p) or 'absent')[:10]} ({o.at(model, p)})")

    def check_store(self) -> None:
        """Heads, every version, the barriers, imports, drafts, staging, then ``fsck``."""
        from modelfs.repo import Repo

        o = self.oracle
        with Repo.open(self.store) as repo:
            left = repo.drafts().models()
            if left:
                o.violation("final", f"drafts still pending after the final unmount: {left}")
            versions: dict[str, list[Any]] = {}
            for info in repo.models():
                versions[info.name] = repo.versions(info.name)
            o.count("versions", sum(len(v) for v in versions.values()))
            for model in self.models:
                self.check_model(model, versions.get(model, []), repo.resolve(model))
            for model, mans in sorted(o.imports.items()):
                got = [{p: e.blake3_hex for p, e in v.files.items()}
                       for v in sorted(versions.get(model, []), key=lambda v: v.number)]
                o.count("files_verified", sum(len(m) for m in mans))
                if got != mans:
                    o.violation("final", f"{model}'s versions {got} are not its imports {mans}")
            for ref, manifest in o.copies:
                v = repo.resolve(ref)
                o.count("files_verified", len(manifest))
                if {p: e.blake3_hex for p, e in v.files.items()} != manifest:
                    o.violation("final", f"cp -r of {ref} out of the mount read {manifest}, "
                                f"but {ref} holds {dict(v.files)}")
            o.count("models", len(versions))
        self.check_staging("the recovering mount")
        r = run_cli(self.store, "fsck")
        o.event("final", f"fsck: rc {r.rc}: {r.tail()}")
        if r.rc != 0:
            o.violation("final", f"modelfs fsck: rc {r.rc}: {r.tail()}")
        self.report.counts["store_bytes"] = sum(
            p.stat().st_size for p in self.store.glob("*.mdb"))

    def check_order(self, model: str, versions: list[Any]) -> None:
        """Versions follow each path's history forward: an older content never comes back."""
        o = self.oracle
        at: dict[str, int] = {}  # path -> index in its history of what the last version held
        for v in sorted(versions, key=lambda v: v.number):
            for p, e in v.files.items():
                h = o.history.get((model, p), [])
                idx = [i for i, r in enumerate(h) if r.digest == e.blake3_hex]
                if not idx:
                    continue  # reported by the whole-write check
                later = [i for i in idx if i >= at.get(p, 0)]
                if not later:
                    o.violation("final", f"{v.ref}/{p} holds {h[idx[-1]]}, older than "
                                f"{h[at[p]]}, which an earlier version held")
                    continue
                at[p] = later[0]

    def check_staging(self, after: str) -> None:
        """No staging file outlives its pending record (issue 8 case 10) once a mount stopped."""
        staging = self.store / "staging"
        left = [p for p in staging.rglob("*") if p.is_file() and p.name != ".lock"] \
            if staging.exists() else []
        if left:
            self.oracle.violation("final", f"{len(left)} staging files left after {after} "
                                  f"({sum(p.stat().st_size for p in left)} bytes): "
                                  f"{[str(p.relative_to(staging)) for p in left[:5]]}")

    def check_model(self, model: str, versions: list[Any], head: Any) -> None:
        o = self.oracle
        want = {p: r.digest for p, r in o.files(model).items()}
        got = {p: e.blake3_hex for p, e in head.files.items()}
        if got != want:
            for p in sorted(set(want) | set(got)):
                if want.get(p) != got.get(p):
                    rec = o.at(model, p)
                    o.violation("final", f"{head.ref}/{p} is {(got.get(p) or 'absent')[:10]}, "
                                f"expected {(want.get(p) or 'absent')[:10]} ({rec}, closed at "
                                f"t={(rec.closed_at - self.t0) if rec and rec.closed_at else -1:.2f}s)")
        held: dict[str, set[str]] = {}
        bad: dict[tuple[str, str, int], list[int]] = {}  # (path, digest, size) -> versions
        for v in versions:
            for p, e in v.files.items():
                o.count("version_entries_checked")
                held.setdefault(e.blake3_hex, set()).add(p)
                if (model, p, e.blake3_hex) not in o.allowed:
                    bad.setdefault((p, e.blake3_hex, e.size), []).append(v.number)
        for (p, d, size), nums in sorted(bad.items()):
            o.violation("final", f"{model}@{nums[0]}/{p} ({d[:10]}, {size} bytes; in versions "
                        f"{nums[0]}..{nums[-1]}) is no whole closed write of that path "
                        "(half a file?)")
        self.check_order(model, versions)
        bars = [(s, e) for m, s, e, _ in o.barriers if m == model]
        for rec in o.recs:
            if rec.model != model or rec.closed_at is None or rec.gone_at is None:
                continue
            if not any(rec.closed_at <= s and e <= rec.gone_at for s, e in bars):
                continue
            o.count("replaced_files_checked")
            o.count("files_verified")
            if not held.get(rec.digest, set()) & rec.paths:
                o.violation("final", f"{rec}, closed at t={rec.closed_at - self.t0:.2f}s and "
                            f"replaced at t={rec.gone_at - self.t0:.2f}s with a commit between, "
                            "is in no version of " + model)

    def run(self) -> Report:
        t = time.monotonic()
        self.log(f"root {self.root}, {self.cfg.seconds:g}s, settle {self.report.settle}s")
        try:
            self.setup()
            self.chaos_phase()
            if self.ctl.dead:
                raise Aborted("no mount to quiesce")
            if self.cfg.plant:
                self.plant_faults()
            self.quiesce()
            self.check_store()
        except Aborted:
            pass  # reported where it happened
        except BaseException:
            self.oracle.violation("main", "campaign crashed: " + traceback.format_exc()[-2000:])
        finally:
            self.stop.set()
            m = self.ctl.m
            if m is not None:
                with contextlib.suppress(Exception):
                    m.stop()
            for log in self.ctl.logs:
                self.scan_log(log)
            self.oracle.close()
        self.report.wall_s = time.monotonic() - t
        self.log(self.report.summary())
        return self.report

    def scan_log(self, log: Path) -> None:
        """Tracebacks in a daemon log are worth a look (warnings: the model decides)."""
        with contextlib.suppress(OSError):
            text = log.read_text(errors="replace")
            n = text.count("Traceback")
            errors = [ln for ln in text.splitlines() if " ERROR " in ln]
            self.report.counts["daemon_log_errors"] += len(errors) + n
            for ln in errors[:3]:
                self.oracle.warning(log.name, ln[-300:])
            if n:
                self.oracle.warning(log.name, f"{n} tracebacks")


def run_campaign(cfg: Config) -> Report:
    """Run one seeded campaign in ``cfg.root`` and return what it found."""
    return Campaign(cfg).run()


def seeds_for(minutes: float, seed: int, round_seconds: float) -> Iterator[tuple[int, float]]:
    """Rounds of a long run: (seed, seconds) pairs, seed, seed + 1, ..."""
    total = minutes * 60
    k = 0
    while total > 0:
        s = min(round_seconds, total)
        yield seed + k, s
        total -= s
        k += 1


def fuse_missing() -> str:
    if not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")):
        return "FUSE is not usable here (/dev/fuse, fusermount3)"
    return ""


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
    sys.exit(_child())

"""Test results per version, and running the tests that have none yet.

A result is keyed by (test definition hash, version id): versions never change, so a result
once known stays true and is never run again unless asked (``force``). Each result is stored
the moment its command ends, so an interrupted run keeps what it finished.

A test's command runs through an executor (``ops.executors``: a local pool, or Ray) with
``{path}`` naming a read-only directory of the version's files that the caller's
``VersionDirs`` provides (a mount of the store): a 10 GB model is read where it lies, never
copied.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfs.errors import ModelfsError, NotFound
from modelfs.ops.checks import Check, Checks
from modelfs.ops.executors import Executor, Job, JobResult, get_executor
from modelfs.ops.views import VersionDirs
from modelfs.repo import Repo, Version

TABLE = "results"
TAIL_LINES = 20  # of the command's output kept with a result: enough to see why it failed
LINE_MAX = 400  # characters of one kept line
VISIBLE_WAIT = 10.0  # seconds a version just committed may take to appear in a running mount


@dataclass(frozen=True, slots=True)
class Result:
    """What one run of one test on one version gave."""

    test_hash: str
    version: str  # version id
    passed: bool  # exit status 0 within the timeout
    exit_code: int  # negative: killed by that signal (a timeout)
    timed_out: bool
    seconds: float
    metrics: Mapping[str, Any] | None  # the last stdout line, when it is a JSON object
    output: tuple[str, ...]  # the last lines of stdout, then of stderr
    time: float
    test: str = ""  # the test's name when it ran (names may change, the hash does not)
    ref: str = ""  # the version's ref (model@n), for reading the table by eye
    timeout: float = 0.0  # what the run was allowed
    runtime: Mapping[str, str] | None = None  # where it ran (python, torch, host), from the executor

    @property
    def status(self) -> str:
        return "pass" if self.passed else ("TIMEOUT" if self.timed_out else "FAIL")

    def to_json(self) -> dict[str, Any]:
        return {"test_hash": self.test_hash, "version": self.version, "passed": self.passed,
                "exit_code": self.exit_code, "timed_out": self.timed_out, "seconds": self.seconds,
                "metrics": dict(self.metrics) if self.metrics is not None else None,
                "output": list(self.output), "time": self.time, "test": self.test, "ref": self.ref,
                "timeout": self.timeout, "runtime": dict(self.runtime) if self.runtime is not None else None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Result:
        return cls(d["test_hash"], d["version"], bool(d["passed"]), int(d["exit_code"]),
                   bool(d["timed_out"]), float(d["seconds"]), d.get("metrics"), tuple(d.get("output", ())),
                   float(d["time"]), d.get("test", ""), d.get("ref", ""), float(d.get("timeout", 0.0)),
                   d.get("runtime"))


def _key(test_hash: str, version_id: str) -> bytes:
    return test_hash.encode() + b"\0" + version_id.encode()


def metrics_of(stdout: str) -> dict[str, Any] | None:
    """The last non-empty stdout line as a JSON object (``{"loss": 0.31}``), else None."""
    for line in reversed(stdout.splitlines()):
        if line.strip():
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def result_of(check: Check, v: Version, jr: JobResult, timeout: float) -> Result:
    lines = [ln[:LINE_MAX] for ln in jr.last_lines(TAIL_LINES)]
    passed = jr.exit_code == 0 and not jr.timed_out
    return Result(check.hash, v.id, passed, jr.exit_code, jr.timed_out, round(jr.seconds, 3),
                  metrics_of(jr.stdout), tuple(lines), time.time(), check.name, v.ref, timeout, jr.runtime)


class Results:
    """The store's results (table ``results``: definition hash + NUL + version id -> result)."""

    def __init__(self, repo: Repo) -> None:
        self._table = repo.table(TABLE)

    def get(self, test_hash: str, version_id: str) -> Result | None:
        raw = self._table.get(_key(test_hash, version_id))
        return None if raw is None else Result.from_json(raw)

    def of_test(self, test_hash: str) -> dict[str, Result]:
        """version id -> result, for one definition."""
        return {r.version: r for r in (Result.from_json(v) for _, v in self._table.items(test_hash.encode() + b"\0"))}

    def all(self) -> dict[tuple[str, str], Result]:
        return {(r.test_hash, r.version): r for r in (Result.from_json(v) for _, v in self._table.items())}

    def put(self, result: Result) -> None:
        self._table.put(_key(result.test_hash, result.version), result.to_json())

    def forget(self, test_hash: str) -> int:
        keys = [k for k, _ in self._table.items(test_hash.encode() + b"\0")]
        return self._table.delete(*keys) if keys else 0


def remove_test(repo: Repo, name: str) -> tuple[Check, int]:
    """Drop a test and, unless another test runs the same definition, its results."""
    check, orphaned = Checks(repo).remove(name)
    return check, Results(repo).forget(check.hash) if orphaned else 0


# -- which versions --------------------------------------------------------------------------
def select_versions(repo: Repo, under: str | None = None, ref: str | None = None) -> list[Version]:
    """One version (``ref``), the subtree under a model (every version of it and everything
    derived from them, transitively), or every version; oldest first."""
    if under is not None and ref is not None:
        raise ModelfsError("give --under MODEL or --version REF, not both")
    if ref is not None:
        return [repo.resolve(ref)]
    if under is None:
        return repo.all_versions()
    seen: dict[str, Version] = {}
    todo = list(repo.versions(under))
    while todo:
        v = todo.pop()
        if v.id not in seen:
            seen[v.id] = v
            todo.extend(repo.children(v.id))
    return sorted(seen.values(), key=lambda v: (v.time, v.model, v.number))


def pairs(checks: Sequence[Check], versions: Sequence[Version]) -> list[tuple[Check, Version]]:
    """(test, version) for every test and every version it applies to, versions oldest first."""
    out = [(c, v) for v in versions for c in checks if c.matches(v)]
    if not out:
        names = ", ".join(c.name for c in checks)
        raise NotFound(f"no version matches test(s) {names} in the selection ({len(versions)} versions)")
    return out


# -- running -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    check: Check
    version: Version
    result: Result
    cached: bool  # known before this run: not run again


@dataclass
class Runner:
    """Runs (test, version) pairs through an executor and records each result as it ends.

    ``executor`` is used as given and left open (bisect runs one probe after another through
    it); without one, a local executor with ``jobs`` slots is made per call and closed.
    """

    repo: Repo
    dirs: VersionDirs
    executor: Executor | None = None
    jobs: int = 1
    timeout: float | None = None  # overrides each test's own timeout when given
    runs: int = field(default=0, init=False)  # commands run so far (bisect counts them)

    def run(self, todo: Iterable[tuple[Check, Version]], force: bool = False) -> Iterator[Outcome]:
        """Known results first (unless ``force``), then each new one as its command ends."""
        results = Results(self.repo)
        fresh: list[tuple[Check, Version]] = []
        for c, v in todo:
            known = None if force else results.get(c.hash, v.id)
            if known is not None:
                yield Outcome(c, v, known, True)
            else:
                fresh.append((c, v))
        if not fresh:
            return
        jobs = [self._job(c, v) for c, v in fresh]
        with self._executor() as ex:
            for i, jr in ex.run(jobs):
                c, v = fresh[i]
                r = result_of(c, v, jr, jobs[i].timeout)
                results.put(r)
                self.runs += 1
                yield Outcome(c, v, r, False)

    def _job(self, c: Check, v: Version) -> Job:
        path = self.dirs.path(v)
        deadline = time.monotonic() + VISIBLE_WAIT
        while not path.is_dir():  # a mount sees a commit made elsewhere within its refresh interval
            if time.monotonic() > deadline:
                raise ModelfsError(f"{v.ref} is not visible as a directory at {path}: nothing was run")
            time.sleep(0.05)
        return Job(c.command_for(v, path), self.timeout if self.timeout is not None else c.timeout)

    @contextlib.contextmanager
    def _executor(self) -> Iterator[Executor]:
        if self.executor is not None:
            yield self.executor
            return
        ex = get_executor("local", self.jobs)
        try:
            yield ex
        finally:
            ex.close()

    def one(self, c: Check, v: Version, force: bool = False) -> Outcome:
        (outcome,) = self.run([(c, v)], force)
        return outcome


# -- status for the lineage pictures -----------------------------------------------------------
def status_by_version(repo: Repo) -> dict[str, tuple[int, int]]:
    """version id -> (passed, failed) over the defined tests that apply to it.

    Empty when no test is defined; the lineage tree and SVG then look as they always did.
    """
    checks = Checks(repo).all()
    if not checks:
        return {}
    by_hash: dict[str, list[Check]] = {}
    for c in checks:
        by_hash.setdefault(c.hash, []).append(c)
    counts: dict[str, list[int]] = {}
    versions: dict[str, Version] = {}
    for (h, vid), r in Results(repo).all().items():
        for c in by_hash.get(h, ()):
            if vid not in versions:
                try:
                    versions[vid] = repo.version(vid)
                except NotFound:  # a version gone (gc of an aborted import): nothing to show
                    continue
            if c.matches(versions[vid]):
                counts.setdefault(vid, [0, 0])[0 if r.passed else 1] += 1
    return {vid: (p, f) for vid, (p, f) in counts.items()}

"""Running a cascade's plan: each node as soon as its last parent is done, through an executor.

The plan gives the order; the executor (a local pool, or Ray) gives the scheduling. A node's
recipe job is submitted the moment every parent it waits for is done, so independent
branches run side by side and a merge starts after both its parents. A recipe that fails
(non-zero exit, a timeout, nothing written into {out}) stops only its own subtree.

Each new version's tests (``modelfs.ops.checks``, when that module is installed) run on it
through the same executor. With ``gate`` the version is stored beside the head
(``move_head=False``) and becomes the head only when every test passes
(``Repo.advance_head``); a failing one stays reachable as ``model@N``, and its subtree is
not updated.

Every step is recorded in the ``cascades`` table as it ends (`CascadeLog`): the version and
then the node's final state. Resuming reads them back; a version that committed just before
a kill (its node not yet recorded) is found by the cascade id in its provenance, so no
node is run twice once its version is stored.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from modelfs.errors import Conflict, ModelfsError
from modelfs.ops.cascade import FINAL, CascadeLog, Node, NodeState, Plan
from modelfs.ops.executors import Executor, Job, JobResult
from modelfs.ops.recipes import (
    InputHashes,
    RecipeFailed,
    Recipes,
    Run,
    finish,
    prepare,
    wait_visible,
)
from modelfs.ops.views import VersionDirs
from modelfs.repo import Repo, Version

Event = Callable[[str], None]


def checks_modules() -> tuple[ModuleType, ModuleType] | None:
    """(modelfs.ops.checks, modelfs.ops.results) when tests over the lineage are installed."""
    try:
        return importlib.import_module("modelfs.ops.checks"), importlib.import_module("modelfs.ops.results")
    except ImportError:
        return None


@dataclass
class Report:
    plan: Plan
    nodes: dict[str, NodeState]
    wall: float = 0.0
    modelfs_seconds: float = 0.0  # planning, committing, recording, waiting for the mount
    recipe_seconds: float = 0.0  # summed wall time of the recipe jobs run now
    test_seconds: float = 0.0
    runs: int = 0  # recipe jobs run by this call (a resume skips finished nodes)
    tests_enabled: bool = False
    resumed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [m for m, s in self.nodes.items() if s.state in ("failed", "gated")]

    def to_json(self) -> dict[str, Any]:
        return {"cascade": self.plan.id, "root": self.plan.root, "from": self.plan.source_ref,
                "gate": self.plan.gate, "resumed": self.resumed, "tests": self.tests_enabled,
                "nodes": [{"model": n.model, **self.nodes.get(n.model, NodeState("pending")).to_json()}
                          for n in self.plan.nodes],
                "left": [{"model": m, "why": why} for m, why in self.plan.left],
                "failed": self.failed, "runs": self.runs,
                "seconds": {"wall": round(self.wall, 3), "modelfs": round(self.modelfs_seconds, 3),
                            "recipes": round(self.recipe_seconds, 3), "tests": round(self.test_seconds, 3)},
                "notes": self.notes}


@dataclass
class _Testing:
    """A committed node's tests: what is still running, what has come back."""

    version: Version
    waiting: dict[int, Any] = field(default_factory=dict)  # ticket -> check
    results: list[Any] = field(default_factory=list)


class CascadeRunner:
    """Runs (or resumes) one plan; every outcome is recorded as it happens."""

    def __init__(self, repo: Repo, plan: Plan, dirs: VersionDirs, executor: Executor,
                 executor_name: str = "local", work_dir: Path | None = None, timeout: float | None = None,
                 on_event: Event | None = None, run_tests: bool = True) -> None:
        self.repo = repo
        self.plan = plan
        self.dirs = dirs
        self.ex = executor
        self.executor_name = executor_name
        self.work_dir = work_dir
        self.timeout = timeout
        self.log = CascadeLog(repo)
        self.say = on_event or (lambda line: None)
        self.tests = checks_modules() if run_tests else None
        self.recipes = Recipes(repo)
        self.hashes = InputHashes()
        self.names = {n.model for n in plan.nodes}
        self.state: dict[str, NodeState] = {}
        self.made: dict[str, str] = {}  # model -> its new version id (done nodes)
        self._recipe_jobs: dict[int, tuple[Node, Run]] = {}
        self._test_jobs: dict[int, str] = {}  # ticket -> model
        self._testing: dict[str, _Testing] = {}
        self.report = Report(plan, self.state, tests_enabled=self.tests is not None)

    # -- bookkeeping ------------------------------------------------------------------------
    def _set(self, model: str, st: NodeState) -> None:
        self.state[model] = st
        self.log.node(self.plan, model, st)
        if st.state == "done" and st.version:
            self.made[model] = st.version

    def _ready(self, n: Node) -> bool | None:
        """True when every parent in the plan is done; None when one will never be."""
        for p in n.parents:
            if p in self.names and p != self.plan.root:
                s = self.state.get(p)
                if s is None or s.state not in FINAL:
                    return False
                if s.state != "done":
                    return None
        return True

    def _adopt(self) -> None:
        """Resume: node states recorded before, and versions committed but not yet recorded."""
        self.state.update(self.log.nodes(self.plan))
        for model, st in self.state.items():
            if st.state == "done" and st.version:
                self.made[model] = st.version
        for n in self.plan.nodes:
            if n.model in self.state:
                continue
            for v in self.repo.versions(n.model):
                if v.number > n.head_number and v.provenance.get("cascade") == self.plan.id:
                    self._set(n.model, NodeState("committed", v.id, v.ref, list(v.provenance.get(
                        "recipe", {}).get("parent_refs", [])), head_moved=not self.plan.gate))
                    break

    # -- the loop ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Report:
        t0 = time.monotonic()
        busy = time.monotonic()
        self.report.resumed = resume
        if resume:
            self._adopt()
            done = sum(1 for s in self.state.values() if s.state in FINAL)
            self.say(f"resuming cascade {self.plan.id}: {done} of {len(self.plan.nodes)} nodes finished")
        else:
            self.log.start(self.plan)
        for model, st in list(self.state.items()):
            if st.state == "committed":  # its tests (and the head) were still to come
                self._start_tests(model, self.repo.version(st.version or ""))
        self.report.modelfs_seconds += time.monotonic() - busy
        while True:
            busy = time.monotonic()
            self._schedule()
            self.report.modelfs_seconds += time.monotonic() - busy
            pending = set(self._recipe_jobs) | set(self._test_jobs)
            if not pending:
                break
            ticket, result = self.ex.wait_one(pending)
            busy = time.monotonic()
            if ticket in self._recipe_jobs:
                self._recipe_done(*self._recipe_jobs.pop(ticket), result)
            else:
                self._test_done(self._test_jobs.pop(ticket), ticket, result)
            self.report.modelfs_seconds += time.monotonic() - busy
        self.report.wall = time.monotonic() - t0
        if all(self.state.get(n.model, NodeState("pending")).state in FINAL for n in self.plan.nodes):
            self.log.finish(self.plan, {"failed": self.report.failed,
                                        "done": [m for m, s in self.state.items() if s.state == "done"]})
        return self.report

    def _schedule(self) -> None:
        running = {n.model for n, _ in self._recipe_jobs.values()} | set(self._testing)
        for n in self.plan.nodes:
            if n.model in self.state or n.model in running:
                continue
            ready = self._ready(n)
            if ready is None:
                bad = next(p for p in n.parents if self.state.get(p) and self.state[p].state != "done")
                self._set(n.model, NodeState("blocked", error=f"not updated: {bad} {self.state[bad].state}"))
                self.say(f"{n.model}: not updated ({bad} {self.state[bad].state})")
            elif ready:
                self._start_recipe(n)

    def _start_recipe(self, n: Node) -> None:
        recipe = self.recipes.get(n.model)
        try:
            if recipe is None:
                raise RecipeFailed(f"{n.model}: its recipe was removed since the cascade was planned")
            inputs = [self.repo.version(vid) for vid in self.plan.inputs(n, self.made)]
            run = prepare(self.repo, recipe, inputs, self.dirs, self.hashes, self.work_dir, self.timeout)
        except ModelfsError as e:
            self._set(n.model, NodeState("failed", error=str(e), tail=getattr(e, "tail", [])))
            self.say(f"{n.model}: FAILED before it ran: {e}")
            return
        self.say(f"{n.model}: running its recipe on {', '.join(v.ref for v in inputs)}")
        self._recipe_jobs[self.ex.submit(run.job)] = (n, run)

    def _recipe_done(self, n: Node, run: Run, result: JobResult) -> None:
        self.report.runs += 1
        self.report.recipe_seconds += result.seconds
        refs = [v.ref for v in run.parents]
        head = self.repo.version(n.head)
        try:
            v = finish(self.repo, run, result, executor=self.executor_name, move_head=not self.plan.gate,
                       extra={"cascade": self.plan.id, "cascade_root": self.plan.source_ref},
                       how=run.recipe.how or head.how)
        except RecipeFailed as e:
            self._set(n.model, NodeState("failed", inputs=refs, seconds=round(result.seconds, 3),
                                         error=str(e), tail=e.tail))
            self.say(f"{n.model}: FAILED: {e}")
            return
        self._set(n.model, NodeState("committed", v.id, v.ref, refs, round(result.seconds, 3),
                                     head_moved=not self.plan.gate))
        self.say(f"{n.model}: made {v.ref} in {result.seconds:.1f} s"
                 + (" (stored beside the head until its tests pass)" if self.plan.gate else ""))
        self._start_tests(n.model, v)

    # -- tests on each new version ---------------------------------------------------------
    def _start_tests(self, model: str, v: Version) -> None:
        t = _Testing(v)
        self._testing[model] = t
        if self.tests is not None:
            checks_mod, results_mod = self.tests
            known = results_mod.Results(self.repo)
            todo = [c for c in checks_mod.Checks(self.repo).all() if c.matches(v)]
            path = wait_visible(self.dirs, [v])[0] if todo else None
            for c in todo:
                r = known.get(c.hash, v.id)
                if r is not None:  # a resume: run before the kill
                    t.results.append((c, r))
                else:
                    ticket = self.ex.submit(Job(c.command_for(v, path), c.timeout))
                    t.waiting[ticket] = c
                    self._test_jobs[ticket] = model
        if not t.waiting:
            self._tests_finished(model)

    def _test_done(self, model: str, ticket: int, result: JobResult) -> None:
        assert self.tests is not None
        t = self._testing[model]
        c = t.waiting.pop(ticket)
        r = self.tests[1].result_of(c, t.version, result, c.timeout)
        self.tests[1].Results(self.repo).put(r)
        self.report.test_seconds += result.seconds
        t.results.append((c, r))
        if not t.waiting:
            self._tests_finished(model)

    def _tests_finished(self, model: str) -> None:
        t = self._testing.pop(model)
        st = self.state[model]
        st.tests = [{"test": c.name, "passed": r.passed, "status": r.status, "metrics": r.metrics}
                    for c, r in t.results]
        failed = [x["test"] for x in st.tests if not x["passed"]]
        if failed:
            self.say(f"{model}: {t.version.ref} failed test(s) {', '.join(failed)}")
        if self.plan.gate and failed:
            st.state, st.head_moved = "gated", False
            st.error = f"{t.version.ref} failed test(s) {', '.join(failed)}: stored, not made the head"
        else:
            st.state = "done"
            if self.plan.gate:
                try:
                    self.repo.advance_head(t.version.id)
                    st.head_moved = True
                except Conflict as e:
                    st.head_moved = False
                    self.report.notes.append(str(e))
        self._set(model, st)


def run_cascade(repo: Repo, plan: Plan, dirs: VersionDirs, executor: Executor, *, resume: bool = False,
                **kw: Any) -> Report:
    """Run (or resume) `plan` to its end; failures are in the report, not raised."""
    return CascadeRunner(repo, plan, dirs, executor, **kw).run(resume)

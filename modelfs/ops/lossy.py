"""The accuracy gate of lossy mode: a version is stored lossily only if its fine-tune survives.

Run before anything is committed, on a plan from repo/lossy.py (the reconstruction written to
a work directory):

1. the given tests (``--gate``, defined with ``modelfs test add``) on the original and on the
   reconstruction: each passes on both, and each metric of the reconstruction is within
   ``tolerance`` (relative, default 0.5%) of the original's;
2. the derivation survived: every changed tensor's reconstruction error is below 10% of the
   tensor's own change from its parent (relative L2). MGit's fixed step fails this on real
   low-learning-rate fine-tunes: it rounds the whole change away while the loss still passes.

Attempts go from the coarsest error aim to finer ones (``AIMS``); when none passes, the version
is stored exactly. The decision and its figures go into the version's provenance: ``lossy``
for a lossy version (the lineage picture and every listing mark it by that key), or
``lossy_gate`` for one that was asked to be lossy and was stored exactly (with why).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfs.errors import ModelfsError
from modelfs.ops.checks import Check, Checks, fill_command
from modelfs.ops.executors import Job, get_executor
from modelfs.ops.results import metrics_of
from modelfs.repo import CHANGE_LIMIT, LossyPlan, Repo, Version, source_files

DEFAULT_TOLERANCE = 0.005
AIMS = (0.097, 0.03)  # error / change per tensor: the first attempt, then a finer one
SCHEME = "qdelta"


class GateError(ModelfsError):
    """The gate cannot judge (a test fails on the original itself, a bad tolerance)."""


@dataclass(frozen=True, slots=True)
class GateOptions:
    tests: tuple[str, ...] = ()
    tolerance: float = DEFAULT_TOLERANCE
    aims: tuple[float, ...] = AIMS

    def check(self) -> None:
        if not (0 < self.tolerance < 1) or not math.isfinite(self.tolerance):
            raise GateError(f"--tolerance must be between 0 and 1 (relative), not {self.tolerance}")
        if not self.aims or any(not 0 < a < 1 for a in self.aims):  # an aim >= 0.1 fails check 2
            raise GateError(f"error aims must lie in (0, 1): {self.aims}")


@dataclass
class Decision:
    """What the gate decided: the accepted plan (None: store exactly) and what to record."""

    plan: LossyPlan | None
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # one line each, for the user

    @property
    def lossy(self) -> bool:
        return self.plan is not None

    def provenance(self) -> dict[str, Any]:
        return {"lossy": self.record} if self.lossy else {"lossy_gate": self.record}


# -- running the tests on a directory ------------------------------------------------------------
def _run(checks: Sequence[Check], directory: Path, model: str) -> dict[str, dict[str, Any]]:
    """name -> {"passed", "metrics", "tail"} of each test run on `directory` (not a version yet)."""
    values = {"path": str(directory), "model": model, "version": "candidate", "ref": f"{model}@candidate"}
    jobs = [Job(fill_command(c.cmd, values), c.timeout) for c in checks]
    out: dict[str, dict[str, Any]] = {}
    ex = get_executor("local", 1)
    try:
        for i, jr in ex.run(jobs):
            out[checks[i].name] = {"passed": jr.ok, "metrics": metrics_of(jr.stdout),
                                   "tail": jr.last_lines(3)}
    finally:
        ex.close()
    return out


def _numbers(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def compare(original: Mapping[str, Any], recon: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    """Check 1 for one test: passes on the reconstruction, every metric within `tolerance`."""
    a, b = _numbers(original.get("metrics")), _numbers(recon.get("metrics"))
    rel: dict[str, float | None] = {}
    ok = bool(recon["passed"])
    for k, va in a.items():
        vb = b.get(k)
        if vb is None or not math.isfinite(vb):
            rel[k], ok = None, False
            continue
        r = abs(vb - va) / abs(va) if va != 0 else (0.0 if vb == 0 else math.inf)
        rel[k] = float(f"{r:.4g}")
        ok = ok and r <= tolerance
    return {"passed": ok, "original": a, "reconstruction": b, "relative_change": rel}


# -- the gate ------------------------------------------------------------------------------------
def gate(repo: Repo, model: str, files: Mapping[str, Path], bases: list[Version],
         options: GateOptions) -> tuple[Decision, tempfile.TemporaryDirectory[str] | None]:
    """Plan and judge; the work directory holding an accepted plan's files is returned open
    (the caller commits from it, then cleans it up)."""
    options.check()
    checks = [Checks(repo).get(n) for n in dict.fromkeys(options.tests)]
    record: dict[str, Any] = {"scheme": SCHEME, "gate": list(dict.fromkeys(options.tests)),
                              "tolerance": options.tolerance, "change_limit": CHANGE_LIMIT}
    if not bases:
        record["decision"] = "exact: the base of a lineage is always stored exactly"
        return Decision(None, record, ["lossy: no parent, so stored exactly (a lineage's base always is)"]), None
    record["parents"] = [b.ref for b in bases]
    root = _common_dir(files)
    original = _run(checks, root, model) if checks else {}
    for name, r in original.items():
        if not r["passed"]:
            tail = "; ".join(r["tail"]) or "no output"
            raise GateError(f"gate test {name!r} fails on the original files themselves ({tail}): nothing stored")
    attempts: list[dict[str, Any]] = []
    notes: list[str] = []
    for aim in options.aims:
        work = tempfile.TemporaryDirectory(prefix="modelfs-lossy-", dir=_scratch(repo))
        plan = repo.plan_lossy(files, bases, aim, Path(work.name))
        fig = plan.figures()
        attempt: dict[str, Any] = {"aim": aim, "max_error_ratio": fig["max_error_ratio"],
                                   "worst_tensor": fig["worst_tensor"], "tensors_lossy": fig["tensors_lossy"]}
        attempts.append(attempt)
        if not plan.is_lossy:
            attempt["passed"] = False
            attempt["why"] = "nothing here is smaller stored lossily"
            work.cleanup()
            record["attempts"] = attempts
            record["decision"] = f"exact: {attempt['why']}"
            return Decision(None, record, [f"lossy: stored exactly, {attempt['why']} "
                                           f"({plan.exact_note() or 'no float tensor changed'})"]), None
        attempt["change_check"] = plan.check_change()
        if not attempt["change_check"]:
            attempt["passed"] = False
            attempt["why"] = (f"{fig['worst_tensor']}: error {fig['max_error_ratio']:.3g} of its change "
                              f">= {CHANGE_LIMIT:g}")
            work.cleanup()
            continue
        recon = _run(checks, _recon_dir(plan, root, Path(work.name)), model) if checks else {}
        attempt["tests"] = {n: compare(original[n], recon[n], options.tolerance) for n in original}
        attempt["passed"] = all(t["passed"] for t in attempt["tests"].values())
        if attempt["passed"]:
            record.update({k: v for k, v in fig.items()})
            record["attempts"] = attempts
            record["decision"] = "lossy"
            note = plan.exact_note()
            if note:
                notes.append(f"lossy: {note}")
            return Decision(plan, record, notes), work
        failed = [n for n, t in attempt["tests"].items() if not t["passed"]]
        attempt["why"] = f"metrics of {', '.join(failed)} moved beyond the tolerance"
        work.cleanup()
    record["attempts"] = attempts
    record["decision"] = "exact: " + (attempts[-1].get("why", "no attempt passed") if attempts else "nothing to do")
    notes.append(f"lossy: the gate refused every step, stored exactly ({record['decision'][7:]})")
    return Decision(None, record, notes), None


def _scratch(repo: Repo) -> str | None:
    """Work files on the store's disk when it has a staging area (as ops.commit does)."""
    root = repo.path / "staging" if repo.path is not None and (repo.path / "staging").is_dir() else None
    return str(root) if root is not None else None


def _common_dir(files: Mapping[str, Path]) -> Path:
    """The directory the files lie in as a checkpoint directory (their relative paths kept)."""
    roots = {Path(str(src)[: len(str(src)) - len(path)]) for path, src in files.items()
             if str(src).endswith(path)}
    if len(roots) != 1:
        raise GateError("the gate needs the files in one directory")
    return roots.pop()


def _recon_dir(plan: LossyPlan, original: Path, work: Path) -> Path:
    """The reconstruction as a whole checkpoint directory: every file the plan did not rewrite
    (the original's config, tokenizer ...) is linked in from the original directory."""
    for src in original.rglob("*"):
        rel = src.relative_to(original)
        dest = work / rel
        if src.is_file() and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(src.resolve())
    return work


# -- importing -----------------------------------------------------------------------------------
@dataclass
class LossyImport:
    version: Version
    decision: Decision


def import_lossy(repo: Repo, src: str | Path, model: str, parents: list[str] | None = None,
                 options: GateOptions | None = None, how: str | None = None, message: str = "",
                 provenance: Mapping[str, Any] | None = None, infer_parent: bool = True) -> LossyImport:
    """`modelfs import --lossy`: gate, then commit the reconstruction (or the original)."""
    options = options or GateOptions()
    files = source_files(Path(src))
    bases = repo.delta_bases(model, parents)
    if not bases and infer_parent and files:
        inference = repo.infer_parents(files)
        if inference is not None and inference.parents:
            parents = [v.id for v in inference.parents]
            bases = list(inference.parents)
    decision, work = gate(repo, model, files, bases, options)
    prov = dict(provenance or {}) | decision.provenance()
    try:
        if decision.plan is not None:
            v = repo.commit_files(model, decision.plan.files, parents=parents, how=how, message=message,
                                  provenance=prov, hints=decision.plan.chunk_hints, infer_parent=False)
        else:
            v = repo.commit_files(model, files, parents=parents, how=how, message=message,
                                  provenance=prov, infer_parent=infer_parent)
    finally:
        if work is not None:
            work.cleanup()
    return LossyImport(v, decision)


def options_for(repo: Repo, model: str, tests: Sequence[str] = (), tolerance: float | None = None
                ) -> GateOptions:
    """The gate's options: what was given, else the model's settings (``lossy-gate``,
    ``lossy-tolerance``); every named test must exist (checked before anything is stored)."""
    settings = repo.model_settings()
    names = tuple(tests) or tuple(n for n in str(settings.get(model, "lossy-gate")).split(",") if n)
    tol = tolerance if tolerance is not None else float(settings.get(model, "lossy-tolerance"))
    opts = GateOptions(names, tol)
    opts.check()
    for n in names:
        Checks(repo).get(n)
    return opts


def wants_lossy(repo: Repo, model: str) -> bool:
    """Whether `modelfs config MODEL lossy on` asks for this model's versions to be lossy."""
    return bool(repo.model_settings().get(model, "lossy"))


def describe(decision: Decision) -> list[str]:
    """Lines for the user: the decision, the error figures, each gate test's metrics."""
    r = decision.record
    if not decision.lossy:
        return decision.notes
    lines = [f"lossy: error at worst {r['max_error_ratio']:.3g} of a tensor's change ({r['worst_tensor']}), "
             f"{r['error_ratio']:.3g} overall (limit {CHANGE_LIMIT:g}); {r['tensors_lossy']} tensors lossy, "
             f"steps {r['step_min']:.3g}..{r['step_max']:.3g}; attempts {len(r['attempts'])}"]
    for name, t in r["attempts"][-1].get("tests", {}).items():
        moved = ", ".join(f"{k} {t['original'][k]:.6g} -> {t['reconstruction'].get(k, float('nan')):.6g} "
                          f"({(t['relative_change'][k] or 0) * 100:.3f}%)" for k in t["original"])
        lines.append(f"gate {name}: {moved or 'passed (no metrics)'}, within {r['tolerance'] * 100:g}%")
    return lines + decision.notes


# -- the mount: `modelfs config M lossy on` ------------------------------------------------------
def install(repo: Repo) -> None:
    """Make draft commits (the mount's writes, `modelfs commit`) lossy for models configured so."""
    done: dict[str, set[bytes]] = {}
    repo.drafts().set_lossy(lambda model: lossy_draft(repo, model, done.setdefault(model, set())))


def lossy_draft(repo: Repo, model: str, done: set[bytes] | None = None) -> dict[str, Any] | None:
    """Before a draft of a lossy model commits: gate its changed files and, when the gate
    accepts, re-stage them as their reconstructions. Returns the provenance to record.

    A gate that cannot judge (a test failing on the original) leaves the files exact, with
    the reason recorded: a commit from the mount is never refused for it.
    """
    if not wants_lossy(repo, model):
        return None
    drafts = repo.drafts()
    d = drafts.get(model)
    done = set() if done is None else done
    changed = {p: e for p, e in (d.changes.items() if d else ()) if e is not None
               and p not in d.staged and e.key not in done}
    if not changed:
        return None
    bases = repo.delta_bases(model) or [repo.version(v) for v in d.derived_from]
    with tempfile.TemporaryDirectory(prefix="modelfs-lossy-draft-", dir=_scratch(repo)) as tmp:
        root = Path(tmp)
        for path, entry in drafts.view(model).items():  # the whole directory, for the tests
            dest = root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as f:
                for piece in repo.iter_file(entry):
                    f.write(piece)
        try:
            options = options_for(repo, model)
            decision, work = gate(repo, model, {p: root / p for p in changed}, bases, options)
        except ModelfsError as e:  # a test failing on the original, one since removed ...
            return {"lossy_gate": {"decision": f"exact: {e}"}}
        try:
            if decision.plan is not None:
                for path, src in decision.plan.files.items():
                    if work is not None and Path(src).is_relative_to(work.name):
                        done.add(drafts.stage_file(model, path, Path(src), hints=decision.plan.chunk_hints).key)
        finally:
            if work is not None:
                work.cleanup()
    return decision.provenance()

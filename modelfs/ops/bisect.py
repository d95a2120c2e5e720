"""Bisect: the derivation step on a path of versions that brought a test's failure in.

"Is this bug inherited from an upstream model?" The path is REF's first-parent ancestry
(the previous version of the same model, else the first model it was derived from), or
versions the user names. Assuming the test passes up to some version and fails from there
on (what bisect always assumes), a binary search finds that version with at most
1 + ceil(log2 n) runs, fewer where results are already known: every known result narrows
the search before anything runs, and every probe is stored, so a second bisect (or
``test results``) reuses it. MGit's anchor walks a chain of single parents of one model
type; this walks any path, across models and kinds of derivation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfs.errors import ModelfsError
from modelfs.ops.checks import Check
from modelfs.ops.results import Result, Results, Runner
from modelfs.repo import Repo, Version

FOUND, ROOT_FAILS, NEVER_FAILS = "found", "fails-at-root", "never-fails"


def first_parent(repo: Repo, v: Version) -> Version | None:
    """The previous version of the same model, else the first version it was derived from."""
    p = v.previous or (v.derived_from[0] if v.derived_from else None)
    return repo.version(p) if p else None


def ancestry(repo: Repo, ref: Version, good: Version | None = None) -> list[Version]:
    """REF's first-parent ancestry, oldest first, back to the root or to ``good``."""
    path = [ref]
    while path[-1].id != (good.id if good else None):
        p = first_parent(repo, path[-1])
        if p is None:
            if good is not None:
                raise ModelfsError(f"--good {good.ref} is not on {ref.ref}'s first-parent ancestry "
                                   "(name the versions to walk with --path)")
            break
        if any(p.id == q.id for q in path):  # versions are content-addressed: cannot happen
            raise ModelfsError(f"the lineage has a cycle through {p.ref}")
        path.append(p)
    return path[::-1]


def _ancestors(repo: Repo, v: Version) -> dict[str, int]:
    """Every ancestor of v (v included) with its distance in edges."""
    dist, todo = {v.id: 0}, [v]
    while todo:
        cur = todo.pop(0)
        for p in cur.parents:
            if p not in dist:
                dist[p] = dist[cur.id] + 1
                todo.append(repo.version(p))
    return dist


def given_path(repo: Repo, ref: Version, refs: Sequence[str], good: Version | None = None) -> list[Version]:
    """The versions named by ``--path`` (oldest first), REF appended if not last; each must
    be an ancestor of the next, so the walk follows the lineage."""
    path = [repo.resolve(r) for r in refs]
    if any(v.id == ref.id for v in path[:-1]):
        raise ModelfsError(f"--path names {ref.ref} before its end: list the path oldest first, "
                           f"{ref.ref} last (or leave it out)")
    if not path or path[-1].id != ref.id:
        path.append(ref)
    ids = [v.id for v in path]
    if len(set(ids)) != len(ids):
        raise ModelfsError("--path names a version twice")
    for a, b in zip(path, path[1:], strict=False):
        if a.id not in _ancestors(repo, b):
            raise ModelfsError(f"--path: {a.ref} is not an ancestor of {b.ref} (list the path oldest first)")
    if good is not None:
        if good.id not in ids:
            raise ModelfsError(f"--good {good.ref} is not on the --path")
        path = path[ids.index(good.id):]
    return path


@dataclass(frozen=True, slots=True)
class Probe:
    version: Version
    result: Result
    cached: bool  # known before: not run


@dataclass
class Bisection:
    check: Check
    path: list[Version]  # oldest first; REF is last
    verdict: str = NEVER_FAILS
    first_bad: Version | None = None
    last_good: Version | None = None  # its predecessor on the path: the step is last_good -> first_bad
    good_given: bool = False
    probes: list[Probe] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return sum(not p.cached for p in self.probes)

    @property
    def reused(self) -> int:
        return sum(p.cached for p in self.probes)

    def step(self) -> str:
        """How first_bad was made from last_good: the edge and the version's own words."""
        bad, good = self.first_bad, self.last_good
        if bad is None or good is None:
            return ""
        if bad.previous == good.id:
            edge = f"a new version of {bad.model}"
        elif good.id in bad.derived_from:
            edge = f"derived from {good.ref}"
        else:
            edge = f"{good.ref} is an ancestor (not a parent) of {bad.ref}"
        how = f" by {bad.how}" if bad.how else ""
        msg = f": {bad.message}" if bad.message else ""
        return f"{edge}{how}{msg}"

    def to_json(self) -> dict[str, Any]:
        def ref(v: Version | None) -> dict[str, Any] | None:
            return None if v is None else {"id": v.id, "ref": v.ref, "how": v.how, "message": v.message,
                                           "provenance": dict(v.provenance)}
        return {"test": self.check.name, "verdict": self.verdict, "first_bad": ref(self.first_bad),
                "last_good": ref(self.last_good), "step": self.step() or None,
                "path": [v.ref for v in self.path], "good_given": self.good_given,
                "runs": self.runs, "reused": self.reused,
                "probes": [{"ref": p.version.ref, "status": p.result.status, "cached": p.cached,
                            "metrics": dict(p.result.metrics) if p.result.metrics is not None else None}
                           for p in self.probes]}


def bisect(repo: Repo, runner: Runner, check: Check, path: Sequence[Version],
           good_given: bool = False) -> Bisection:
    """The first version on ``path`` (oldest first) where ``check`` fails.

    Invariant: path[hi] fails; path[lo] passes (lo = -1: nothing before the path). With
    ``good_given`` the first version is taken as passing without a run, as git bisect does.
    """
    b = Bisection(check, list(path), good_given=good_given)
    known = Results(repo)
    cache: dict[int, bool] = {}

    def passes(i: int) -> bool:
        if i not in cache:
            v = path[i]
            r = known.get(check.hash, v.id)
            if r is not None:
                b.probes.append(Probe(v, r, True))
            else:
                out = runner.one(check, v)
                b.probes.append(Probe(v, out.result, out.cached))
                r = out.result
            cache[i] = r.passed
        return cache[i]

    n = len(path)
    if good_given and n < 2:
        raise ModelfsError(f"--good {path[0].ref} is the version being bisected: nothing lies between")
    # known results first: the first known failure bounds the search from above, the last
    # known pass below it bounds it from below
    fails = [i for i, v in enumerate(path) if (r := known.get(check.hash, v.id)) is not None and not r.passed]
    hi = fails[0] if fails else n - 1
    if good_given and hi == 0:
        raise ModelfsError(f"{check.name} is known to fail at --good {path[0].ref}: it is not good")
    if not fails and passes(hi):
        return b  # passes at REF: nothing brought a failure in on this path
    if fails:
        passes(hi)  # recorded as a (reused) probe, so the report shows what bounded the search
    lo = 0 if good_given else -1
    for i in range(hi - 1, lo, -1):
        r = known.get(check.hash, path[i].id)
        if r is not None and r.passed:
            lo = i
            passes(i)
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    b.first_bad = path[hi]
    if hi == 0 and not good_given:
        b.verdict = ROOT_FAILS
    else:
        b.verdict = FOUND
        b.last_good = path[hi - 1]
    return b

"""The cascading update's plan and its durable record: which descendants, in what order.

After MODEL gets a new version, every descendant that has a recipe is re-derived from the
new versions of its parents. The plan is made from the lineage at the model level: model D
depends on model P when D's head was derived from a version of P. From MODEL it follows
only models with recipes (a model without one is left as it is, so nothing below it
changes through it), orders them topologically (Kahn's algorithm: a merge comes after all
its parents, each model once) and refuses a cycle. A parent outside the cascade keeps the
version the model was made from; only what changed upstream propagates. A model whose head
was already made from the new version is up to date and is not run again.

Better than MGit's `run_update_cascade` on each count: topological, not breadth-first (no
node enqueued twice), a failing recipe stops its own subtree only, and the plan and every
finished node are stored (table ``cascades``) so a killed cascade resumes
(`cascade_run.py` runs it).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import blake3

from modelfs.errors import ModelfsError, NotFound
from modelfs.ops.recipes import Recipes
from modelfs.repo import Repo, Version

TABLE = "cascades"


class CycleError(ModelfsError):
    pass


@dataclass(frozen=True, slots=True)
class Node:
    """One model to re-derive: its parent models in order and what it was last made from."""

    model: str
    parents: tuple[str, ...]  # parent models, in the order of its head's provenance edges
    base: tuple[str, ...]  # the version ids of those parents its head was made from
    head: str  # the model's head when planned (its new version's versioning parent)
    head_number: int
    cmd: str

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "parents": list(self.parents), "base": list(self.base),
                "head": self.head, "head_number": self.head_number, "cmd": self.cmd}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Node:
        return cls(d["model"], tuple(d["parents"]), tuple(d["base"]), d["head"], int(d["head_number"]),
                   d["cmd"])


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    root: str  # the model whose new version starts the cascade
    source: str  # that version's id
    source_ref: str
    nodes: tuple[Node, ...]  # topological order
    left: tuple[tuple[str, str], ...] = ()  # descendants not re-derived, and why
    gate: bool = False
    created: float = 0.0

    def node(self, model: str) -> Node:
        for n in self.nodes:
            if n.model == model:
                return n
        raise NotFound(f"{model} is not in cascade {self.id}")

    def inputs(self, node: Node, made: Mapping[str, str]) -> list[str]:
        """The version ids `node` is derived from: the root's new version, the new version
        of a parent re-derived in this cascade (`made`), or what it was made from before."""
        out = []
        for p, b in zip(node.parents, node.base, strict=True):
            out.append(self.source if p == self.root else made.get(p, b))
        return out

    def children(self) -> dict[str, list[str]]:
        """model -> the plan's nodes that wait for it."""
        names = {n.model for n in self.nodes}
        kids: dict[str, list[str]] = {}
        for n in self.nodes:
            for p in dict.fromkeys(n.parents):
                if p in names:
                    kids.setdefault(p, []).append(n.model)
        return kids

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "root": self.root, "source": self.source, "source_ref": self.source_ref,
                "nodes": [n.to_json() for n in self.nodes], "left": [list(x) for x in self.left],
                "gate": self.gate, "created": self.created}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Plan:
        return cls(d["id"], d["root"], d["source"], d["source_ref"],
                   tuple(Node.from_json(n) for n in d["nodes"]),
                   tuple((a, b) for a, b in d.get("left", ())), bool(d.get("gate")),
                   float(d.get("created", 0.0)))


def _model_edges(repo: Repo) -> tuple[dict[str, Version], dict[str, list[tuple[str, str]]]]:
    """Every model's head, and model -> [(parent model, parent version id)] from the head's
    provenance edges, in order."""
    heads: dict[str, Version] = {}
    for m in repo.models():
        if m.head:
            heads[m.name] = repo.version(m.head)
    owner: dict[str, str] = {}
    parents: dict[str, list[tuple[str, str]]] = {}
    for name, h in heads.items():
        for vid in h.derived_from:
            if vid not in owner:
                try:
                    owner[vid] = repo.version(vid).model
                except NotFound:  # a parent gone (gc of an aborted import): no edge
                    continue
            parents.setdefault(name, []).append((owner[vid], vid))
    return heads, parents


def _topological(nodes: Iterable[str], deps: Mapping[str, list[str]]) -> list[str]:
    """Kahn's algorithm, ties by name (a stable order); CycleError naming what is left."""
    names = set(nodes)
    waiting = {n: len({d for d in deps.get(n, ()) if d in names}) for n in names}
    users: dict[str, list[str]] = {}
    for n in names:
        for d in set(deps.get(n, ())):
            if d in names:
                users.setdefault(d, []).append(n)
    ready = [n for n, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for u in users.get(n, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(names):
        stuck = sorted(n for n in names if waiting[n] > 0)
        raise CycleError(f"the lineage has a cycle through {', '.join(stuck)}: no order re-derives "
                         "each after its parents; nothing was run")
    return order


def make_plan(repo: Repo, model: str, from_ref: str | None = None, gate: bool = False) -> Plan:
    """The cascade after `model`'s new version (`from_ref`, default its head). Nothing is stored."""
    repo.model(model)  # NotFound for an unknown model
    source = repo.resolve(from_ref or model)
    if source.model != model:
        raise ModelfsError(f"--from {from_ref} is {source.ref}, not a version of {model}")
    heads, parents = _model_edges(repo)
    recipes = Recipes(repo).all()
    children: dict[str, list[str]] = {}
    for child, ps in parents.items():
        for p, _ in ps:
            children.setdefault(p, []).append(child)
    reach: list[str] = []
    left: dict[str, str] = {}
    seen = {model}
    todo = [model]
    while todo:
        for c in sorted(set(children.get(todo.pop(), ()))):
            if c == model:
                raise CycleError(f"the lineage has a cycle: {model} is derived from its own descendants; "
                                 "nothing was run")
            if c in seen:
                continue
            seen.add(c)
            if c not in recipes:
                left[c] = "no recipe"
                continue
            reach.append(c)
            todo.append(c)
    deps = {n: [p for p, _ in parents[n]] for n in reach}
    order = _topological(reach, deps)
    stale: set[str] = set()
    nodes: list[Node] = []
    for n in order:
        ps = parents[n]
        if any((p == model and vid != source.id) or p in stale for p, vid in ps):
            stale.add(n)
            h = heads[n]
            nodes.append(Node(n, tuple(p for p, _ in ps), tuple(v for _, v in ps), h.id, h.number,
                              recipes[n].cmd))
        else:
            left[n] = f"up to date (made from {source.ref})"
    created = time.time()
    ident = blake3.blake3(f"{model}\0{source.id}\0{created}".encode()).hexdigest()[:12]
    return Plan(ident, model, source.id, source.ref, tuple(nodes), tuple(sorted(left.items())), gate,
                created)


# -- the durable record ----------------------------------------------------------------------
@dataclass
class NodeState:
    """Where one node of a cascade stands: committed (tests pending), done, failed, gated, blocked."""

    state: str
    version: str | None = None
    ref: str | None = None
    inputs: list[str] = field(default_factory=list)  # refs it was (to be) derived from
    seconds: float = 0.0  # the recipe's wall time
    error: str | None = None
    tail: list[str] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)
    head_moved: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "version": self.version, "ref": self.ref, "inputs": self.inputs,
                "seconds": self.seconds, "error": self.error, "tail": self.tail, "tests": self.tests,
                "head_moved": self.head_moved}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NodeState:
        return cls(d["state"], d.get("version"), d.get("ref"), list(d.get("inputs", ())),
                   float(d.get("seconds", 0.0)), d.get("error"), list(d.get("tail", ())),
                   list(d.get("tests", ())), bool(d.get("head_moved", True)))


FINAL = frozenset({"done", "failed", "gated", "blocked"})


class CascadeLog:
    """Table ``cascades``: ``id`` -> plan and state; ``id NUL model`` -> that node's state.

    Each record is one transaction, written the moment it is known, so a killed cascade
    knows on resume which nodes are finished.
    """

    def __init__(self, repo: Repo) -> None:
        self._table = repo.table(TABLE)

    def start(self, plan: Plan) -> None:
        for key, rec in self._table.items():
            if b"\0" not in key and rec.get("state") == "running" and rec["plan"]["root"] == plan.root:
                self._table.put(key, {**rec, "state": "superseded", "by": plan.id})
        self._table.put(plan.id.encode(), {"plan": plan.to_json(), "state": "running"})

    def node(self, plan: Plan, model: str, state: NodeState) -> None:
        self._table.put(plan.id.encode() + b"\0" + model.encode(), state.to_json())

    def nodes(self, plan: Plan) -> dict[str, NodeState]:
        prefix = plan.id.encode() + b"\0"
        return {k[len(prefix):].decode(): NodeState.from_json(v) for k, v in self._table.items(prefix)}

    def finish(self, plan: Plan, summary: Mapping[str, Any]) -> None:
        self._table.put(plan.id.encode(), {"plan": plan.to_json(), "state": "finished",
                                           "summary": dict(summary)})

    def interrupted(self, model: str | None = None) -> Plan:
        """The latest cascade that did not finish (of `model`'s, when given)."""
        plans = [Plan.from_json(rec["plan"]) for key, rec in self._table.items()
                 if b"\0" not in key and rec.get("state") == "running"]
        plans = [p for p in plans if model is None or p.root == model]
        if not plans:
            raise NotFound("no interrupted cascade to resume" + (f" for {model}" if model else ""))
        return max(plans, key=lambda p: p.created)

    def history(self) -> list[dict[str, Any]]:
        return [rec for key, rec in self._table.items() if b"\0" not in key]

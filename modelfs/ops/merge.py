"""Merging two versions into a new version with both as parents.

Two phases, so that nothing is written unless the whole merge can complete:

1. plan: from file records only (nothing decoded), decide for every file and tensor what
   the result holds (A's, B's or the base's bytes, or a strategy's output) and collect
   every conflict: a shape or dtype disagreement, a tensor changed on one side and removed
   on the other, a missing base, a strategy that cannot merge non-float tensors.
2. run: compute the merged tensors one at a time into staging files and commit them
   in one transaction with `Repo.commit_files`; files taken whole are carried over
   without rewriting (`keep`).

Per-tensor rules (`glob=strategy`, first match wins) choose strategies by tensor name. Files
are merged tensor by tensor where their format allows replacing tensor bytes (safetensors,
plug-in formats marked `rewritable`); any other file (config.json, tokenizers) is matched by
path and taken from A unless a rule says otherwise. Where every input of a tensor holds the same bytes,
the result is those bytes, whatever the strategy.
"""

from __future__ import annotations

import fnmatch
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfs.errors import Conflict, ModelfsError
from modelfs.formats import get_format
from modelfs.lineage import FileEntry, Version
from modelfs.ops.commit import ChunkHint, staging_dir
from modelfs.ops.strategies import (
    MergeStrategy,
    TensorInputs,
    get_merge,
    is_numeric,
    register_merge,
    registered_merges,
)
from modelfs.repo import FileRecord, Repo, StoredInline, StoredTensor

__all__ = ["MergeConflicts", "MergePlan", "Rule", "merge", "parse_rules", "plan_merge",
           "register_merge", "registered_merges"]

Side = str  # "a" | "b" | "base"


class MergeConflicts(Conflict):
    """The merge cannot complete; `conflicts` lists each one as a line a user can act on."""

    def __init__(self, conflicts: list[str]) -> None:
        self.conflicts = conflicts
        super().__init__(
            f"merge has {len(conflicts)} conflict{'s' if len(conflicts) != 1 else ''}; nothing was "
            "written (resolve with --rule 'PATTERN=take-a' or take-b, or another --base)")


@dataclass(frozen=True)
class Rule:
    pattern: str
    strategy: str
    params: Mapping[str, float] = field(default_factory=dict)

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


def parse_rule(text: str, where: str = "--rule") -> Rule:
    """'PATTERN=STRATEGY [key=value ...]' (whitespace around '=' allowed)."""
    pattern, sep, rest = text.partition("=")
    words = rest.split()
    if not sep or not pattern.strip() or not words:
        raise ModelfsError(f"{where}: {text!r} is not PATTERN=STRATEGY")
    params: dict[str, float] = {}
    for w in words[1:]:
        k, s, v = w.partition("=")
        try:
            params[k] = float(v)
        except ValueError:
            raise ModelfsError(f"{where}: bad parameter {w!r} in {text!r} (want key=number)") from None
        if not s:
            raise ModelfsError(f"{where}: bad parameter {w!r} in {text!r} (want key=number)")
    return Rule(pattern.strip(), words[0], params)


def parse_rules(text: str, source: str) -> list[Rule]:
    """A rules file: one rule per line, '#' comments and blank lines ignored."""
    rules = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            rules.append(parse_rule(line, f"{source}:{i}"))
    return rules


# ---------------------------------------------------------------- the plan


@dataclass
class TensorPlan:
    name: str
    source: Side | None  # copy this side's bytes; None: compute with `strategy`
    strategy: str
    params: Mapping[str, float]
    ref: StoredTensor  # dtype, shape, nbytes of the result (A's or B's tensor)
    inputs: dict[Side, StoredTensor] = field(default_factory=dict)


@dataclass
class FilePlan:
    path: str
    keep: FileEntry | None = None  # carried over whole
    header_from: Side | None = None  # a side whose header bytes fit the result verbatim
    metadata: Mapping[str, str] | None = None
    tensors: list[TensorPlan] = field(default_factory=list)
    records: dict[Side, FileRecord] = field(default_factory=dict)


@dataclass
class MergePlan:
    a: Version
    b: Version
    base: Version | None
    strategy: str
    params: Mapping[str, float]
    rules: list[Rule]
    files: list[FilePlan] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def computed(self) -> int:
        return sum(1 for f in self.files for t in f.tensors if t.source is None)


def _safetensors_meta(rec: FileRecord) -> Mapping[str, str] | None:
    head = rec.parts[0] if rec.parts and isinstance(rec.parts[0], StoredInline) else None
    if head is None or len(head.data) < 8:
        return None
    try:
        meta = json.loads(head.data[8:]).get("__metadata__")
    except (ValueError, AttributeError):
        return None
    return meta if isinstance(meta, dict) else None


class _Planner:
    def __init__(self, repo: Repo, plan: MergePlan) -> None:
        self.repo, self.plan = repo, plan
        self.versions: dict[Side, Version | None] = {"a": plan.a, "b": plan.b, "base": plan.base}

    def strategy_for(self, name: str) -> tuple[MergeStrategy, Mapping[str, float]]:
        for r in self.plan.rules:
            if r.matches(name):
                return get_merge(r.strategy), {**self.plan.params, **r.params}
        return get_merge(self.plan.strategy), self.plan.params

    def conflict(self, msg: str) -> None:
        self.plan.conflicts.append(msg)

    def run(self) -> None:
        paths = sorted(set(self.plan.a.files) | set(self.plan.b.files)
                       | (set(self.plan.base.files) if self.plan.base else set()))
        self.check_same_model()
        for path in paths:
            entries = {s: v.files.get(path) if v else None for s, v in self.versions.items()}
            self.plan_file(path, entries)

    def check_same_model(self) -> None:
        """Two different models (a GPT-2 and a BERT) are no merge: they share no tensor, or
        their configs name different architectures. Said before anything is planned."""
        a, b = self.plan.a, self.plan.b
        names = {s: {t.name for e in v.files.values() if _rewritable(e.format)
                     for t in self.repo.file_record(e).tensors() if t.name}
                 for s, v in (("a", a), ("b", b))}
        if names["a"] and names["b"] and not names["a"] & names["b"]:
            self.conflict(f"{a.ref} and {b.ref} share no tensor ({len(names['a'])} and "
                          f"{len(names['b'])} tensors, no name in common): they are different "
                          "models, and a merge would hold both; merge versions of one architecture")
        for path in sorted(set(a.files) & set(b.files)):
            if path.rsplit("/", 1)[-1] != "config.json" or any(r.matches(path) for r in self.plan.rules):
                continue
            ca, cb = _config(self.repo, a.files[path]), _config(self.repo, b.files[path])
            for key in CONFIG_IDENTITY:
                if key in ca and key in cb and ca[key] != cb[key]:
                    self.conflict(f"{path}: A ({a.ref}) has {key} {json.dumps(ca[key])}, B ({b.ref}) "
                                  f"has {json.dumps(cb[key])}: the configs describe different models; "
                                  f"if they are one architecture after all, choose with --rule "
                                  f"'{path}=take-a' (or take-b)")

    def plan_file(self, path: str, e: dict[Side, FileEntry | None]) -> None:
        ea, eb = e["a"], e["b"]
        tensorwise = (ea is not None and eb is not None and ea.key != eb.key
                      and ea.format == eb.format and _rewritable(ea.format))
        if not tensorwise:
            self.plan_whole_file(path, e)
            return
        assert ea is not None
        fp = FilePlan(path)
        for side, entry in e.items():
            if entry is not None and (side != "base" or entry.format == ea.format):
                fp.records[side] = self.repo.file_record(entry)
        by = {s: {t.name: t for t in r.tensors()} for s, r in fp.records.items()}
        names = list(dict.fromkeys([*by["a"], *by["b"], *by.get("base", {})]))
        for name in names:
            tp = self.plan_tensor(path, name, by["a"].get(name), by["b"].get(name),
                                  by.get("base", {}).get(name))
            if tp is not None:
                fp.tensors.append(tp)
        layout = [(t.name, t.ref.dtype.name, t.ref.shape) for t in fp.tensors]
        for side in ("a", "b"):
            if layout == [(t.name, t.dtype.name, t.shape) for t in by[side].values()]:
                fp.header_from = side
                if all(t.source == side for t in fp.tensors):
                    fp.keep, fp.tensors = e[side], []
                break
        if fp.header_from is None:
            if ea.format != "safetensors":
                self.conflict(f"{path}: the merged tensors differ from both A's and B's list, and "
                              f"a new {ea.format} header cannot be written; add --rule "
                              "'NAME=take-a' (or take-b) for the tensors that one side lacks")
                return
            fp.metadata = _safetensors_meta(fp.records["a"])
        self.plan.files.append(fp)

    def plan_whole_file(self, path: str, e: dict[Side, FileEntry | None]) -> None:
        """A file merged as a whole: by a rule on its path, else A's copy (3-way for add/remove)."""
        ea, eb, ec = e["a"], e["b"], e["base"]
        strategy = None
        for r in self.plan.rules:
            if r.matches(path):
                strategy = get_merge(r.strategy)
                break
        if strategy is not None and strategy.takes is None:
            if ea is not None and eb is not None and ea.key != eb.key:
                self.conflict(f"{path}: {strategy.name} cannot merge {ea.format} files "
                              "(only safetensors tensors); use take-a, take-b or take-base")
                return
            strategy = None
        if strategy is not None:
            chosen = e[strategy.takes or "a"]
        elif ea is not None and eb is not None:
            if ea.key != eb.key and "blob" not in (ea.format, eb.format):
                self.conflict(f"{path}: A and B hold different {ea.format}/{eb.format} files, which "
                              "merge only whole; choose with --rule "
                              f"'{path}=take-a' (or take-b), or convert them to safetensors")
                return
            chosen = ea  # metadata, tokenizers, configs: A's unless a rule says otherwise
        else:
            chosen = self.three_way(path, ea, eb, ec, "file")
        if chosen is not None:
            self.plan.files.append(FilePlan(path, keep=chosen))

    def three_way(self, what: str, a: Any, b: Any, base: Any, kind: str) -> Any:
        """One side lacks it: added on the other side (keep), or removed (drop if unchanged)."""
        if a is None and b is None:
            return None  # removed on both sides
        present, side = (a, "A") if a is not None else (b, "B")
        other = "B" if side == "A" else "A"
        if base is None or self.plan.base is None:
            return present  # added on one side (or no base to tell): keep it
        if _same(present, base):
            return None  # the other side removed it; this side left it alone
        self.conflict(f"{what}: {kind} changed in {side} ({self.ref(side)}) but removed in {other} "
                      f"({self.ref(other)}); keep it with --rule '{what.split(':')[-1]}=take-"
                      f"{side.lower()}' or drop it with take-{other.lower()}")
        return None

    def ref(self, side: str) -> str:
        return (self.plan.a if side == "A" else self.plan.b).ref

    def plan_tensor(self, path: str, name: str, ta: StoredTensor | None, tb: StoredTensor | None,
                    tc: StoredTensor | None) -> TensorPlan | None:
        strategy, params = self.strategy_for(name)
        where = f"{path}:{name}"
        if strategy.takes is not None:
            chosen = {"a": ta, "b": tb, "base": tc}[strategy.takes]
            if strategy.takes == "base" and self.plan.base is None:
                self.conflict(f"{where}: take-base needs a base version (--base)")
                return None
            return TensorPlan(name, strategy.takes, strategy.name, params, chosen) if chosen else None
        if ta is None or tb is None:
            kept = self.three_way(where, ta, tb, tc, "tensor")
            if kept is None:
                return None
            return TensorPlan(name, "a" if ta is not None else "b", strategy.name, params, kept)
        if (ta.dtype.name, ta.shape) != (tb.dtype.name, tb.shape):
            self.conflict(f"{where}: A has {ta.dtype.name}{list(ta.shape)}, B has "
                          f"{tb.dtype.name}{list(tb.shape)}; {strategy.name} needs equal shapes and "
                          f"dtypes; pick one with --rule '{name}=take-a' (or take-b)")
            return None
        if _same(ta, tb) and (tc is None or not strategy.needs_base or _same(ta, tc)):
            return TensorPlan(name, "a", strategy.name, params, ta)  # everyone agrees
        inputs = {"a": ta, "b": tb}
        if strategy.needs_base:
            if self.plan.base is None:
                self.conflict(f"{where}: {strategy.name} needs a base version, and A and B have no "
                              "common ancestor; pass --base MODEL[@N]")
                return None
            if tc is None or (tc.dtype.name, tc.shape) != (ta.dtype.name, ta.shape):
                got = f"{tc.dtype.name}{list(tc.shape)}" if tc else "nothing"
                self.conflict(f"{where}: {strategy.name} needs the base's tensor, but base "
                              f"{self.plan.base.ref} has {got}; use --rule '{name}=take-a' (or "
                              "weighted-average, which needs no base)")
                return None
            inputs["base"] = tc
        elif tc is not None and (tc.dtype.name, tc.shape) == (ta.dtype.name, ta.shape):
            inputs["base"] = tc
        if not is_numeric(ta.dtype):
            self.conflict(f"{where}: {ta.dtype.name} values differ between A and B and "
                          f"{strategy.name} merges only floating-point tensors; use --rule "
                          f"'{name}=take-a' (or take-b)")
            return None
        return TensorPlan(name, None, strategy.name, params, ta, inputs)


CONFIG_IDENTITY = ("model_type", "architectures")  # config.json keys that name the architecture
CONFIG_MAX = 1 << 20  # a config bigger than this is not a transformers config: not read


def _config(repo: Repo, entry: FileEntry) -> dict[str, Any]:
    """A config.json's keys, or {} when it is not a small JSON object."""
    if entry.size > CONFIG_MAX:
        return {}
    try:
        d = json.loads(b"".join(repo.iter_file(entry)))
    except (ValueError, UnicodeDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def _rewritable(fmt: str) -> bool:
    """Formats whose verbatim bytes do not depend on tensor values, so tensors can be replaced:
    safetensors, and plug-in formats that say so (`rewritable = True`). Not torch's zip: its
    headers hold a CRC of every storage."""
    if fmt == "safetensors":
        return True
    try:
        return bool(getattr(get_format(fmt), "rewritable", False))
    except ModelfsError:
        return False


def _same(x: Any, y: Any) -> bool:
    """Same content, judged from hashes alone (file keys or chunk keys)."""
    if isinstance(x, FileEntry) and isinstance(y, FileEntry):
        return x.key == y.key
    if isinstance(x, StoredTensor) and isinstance(y, StoredTensor):
        return (x.dtype.name, x.shape, x.chunk_bytes, x.chunks) == (y.dtype.name, y.shape, y.chunk_bytes, y.chunks)
    return False


def plan_merge(repo: Repo, a: Version, b: Version, base: Version | None, strategy: str,
               params: Mapping[str, float] | None = None, rules: Sequence[Rule] = ()) -> MergePlan:
    """Everything the merge will do, and every conflict, from file records alone."""
    get_merge(strategy)
    for r in rules:
        get_merge(r.strategy)
    plan = MergePlan(a, b, base, strategy, dict(params or {}), list(rules))
    _Planner(repo, plan).run()
    return plan


# ---------------------------------------------------------------- running it


def _header(tensors: list[TensorPlan], metadata: Mapping[str, str] | None) -> bytes:
    """A safetensors header for a tensor list no input had (aligned to 8 like safetensors)."""
    h: dict[str, Any] = {}
    if metadata:
        h["__metadata__"] = dict(metadata)
    off = 0
    for t in tensors:
        h[t.name] = {"dtype": t.ref.dtype.name, "shape": list(t.ref.shape),
                     "data_offsets": [off, off + t.ref.nbytes]}
        off += t.ref.nbytes
    raw = json.dumps(h, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class _Writer:
    def __init__(self, repo: Repo, plan: MergePlan) -> None:
        self.repo, self.plan = repo, plan
        self.hints: dict[tuple[str, str], tuple[TensorPlan, list[tuple[str, tuple[str, ...], Any]]]] = {}

    def read(self, fp: FilePlan, side: Side, t: StoredTensor) -> bytes:
        return self.repo.reader(fp.records[side]).read(t.offset, t.nbytes)

    def write(self, fp: FilePlan, dest: Path) -> None:
        header = fp.records[fp.header_from].parts[0] if fp.header_from else None
        with open(dest, "wb") as f:
            if isinstance(header, StoredInline):
                f.write(header.data)
            else:
                f.write(_header(fp.tensors, fp.metadata))
            for tp in fp.tensors:
                f.write(self.tensor_bytes(fp, tp))

    def tensor_bytes(self, fp: FilePlan, tp: TensorPlan) -> bytes:
        if tp.source is not None:
            side_rec = fp.records[tp.source]
            return self.repo.reader(side_rec).read(tp.ref.offset, tp.ref.nbytes)
        raw = {s: self.read(fp, s, t) for s, t in tp.inputs.items()}
        inputs = TensorInputs(tp.name, tp.ref.dtype, tp.ref.shape, raw["a"], raw["b"], raw.get("base"))
        out = get_merge(tp.strategy).merge(inputs, tp.params)
        if len(out) != tp.ref.nbytes:
            raise ModelfsError(f"{fp.path}:{tp.name}: strategy {tp.strategy} returned {len(out)} "
                               f"bytes, expected {tp.ref.nbytes}")
        if inputs.codec_hint:
            self.hints[(fp.path, tp.name)] = (tp, inputs.codec_hint)
        return out

    def hint(self, path: str, name: str, chunk: int) -> list[ChunkHint]:
        """For the importer hook: which parent chunks (and codec parameters) reproduce this chunk."""
        found = self.hints.get((path, name))
        if found is None:
            return []
        tp, codec_hints = found
        out = []
        for codec, sides, hint in codec_hints:
            try:
                out.append(ChunkHint(codec, tuple(tp.inputs[s].chunks[chunk] for s in sides), hint))
            except (KeyError, IndexError):
                continue
        return out


def merge(repo: Repo, a: Version, b: Version, *, base: Version | None = None, strategy: str,
          params: Mapping[str, float] | None = None, rules: Iterable[Rule] = (),
          into: str | None = None, message: str = "", base_given: bool = False) -> Version:
    """Merge versions A and B into a new version of `into` (default: A's model) with both as parents."""
    if base is None and not base_given:
        base = repo.common_ancestor(a.id, b.id)
    plan = plan_merge(repo, a, b, base, strategy, params, list(rules))
    if plan.conflicts:
        raise MergeConflicts(plan.conflicts)
    model = into or a.model
    writer = _Writer(repo, plan)
    keep: dict[str, FileEntry] = {}
    with staging_dir(repo) as tmp:
        files: dict[str, Path] = {}
        for i, fp in enumerate(plan.files):
            if fp.keep is not None:
                keep[fp.path] = fp.keep
                continue
            dest = Path(tmp) / f"{i}"
            writer.write(fp, dest)
            files[fp.path] = dest
        prov = {"merge": {"a": a.ref, "b": b.ref, "base": base.ref if base else None,
                          "strategy": strategy, "params": dict(params or {}),
                          "rules": [f"{r.pattern}={r.strategy}" + "".join(f" {k}={v}" for k, v in r.params.items())
                                    for r in plan.rules],
                          "computed_tensors": plan.computed}}
        msg = message or f"merge {a.ref} and {b.ref} ({strategy})"
        v = repo.commit_files(model, files, hints=writer.hint, parents=[a.id, b.id], how="merge",
                              message=msg, provenance=prov, infer_parent=False, keep=keep)
    return v


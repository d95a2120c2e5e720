"""`modelfs diff`, `modelfs merge`, `modelfs plugins`: the ops over versions.

The ops modules load only when their command runs, so `modelfs log` never imports them.
`import --lora/--updates` lives with `import` in store_cmds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modelfs.cli.app import open_repo, progress
from modelfs.cli.render import human_bytes
from modelfs.errors import ModelfsError

if TYPE_CHECKING:
    from modelfs.lineage import Version
    from modelfs.ops.diff import Differ

DIFF_CACHE = 64 << 20  # decoded-chunk cache for diff: a window of chunks, not a checkpoint
MAX_CONFLICTS = 20  # conflict lines printed; a dtype mismatch can conflict on every tensor


# ---------------------------------------------------------------- diff


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _tensor_line(td: Any) -> str:
    from modelfs.ops.diff import TensorDiff

    assert isinstance(td, TensorDiff)
    mark = {"added": "+", "removed": "-", "changed": "~", "unchanged": "="}[td.status]
    name = td.name or "(bytes)"
    t = td.b or td.a
    assert t is not None
    kind = f"{t.dtype.name}{list(t.shape)}"
    if td.retyped and td.a and td.b:
        kind = f"{td.a.dtype.name}{list(td.a.shape)} -> {td.b.dtype.name}{list(td.b.shape)}"
    line = f"  {mark} {name:<48} {kind:<24}"
    s = td.stats
    if s is not None and s.n:
        line += f" {_count(s.changed):>7} {100 * s.changed / s.n:6.2f}%"
        if s.numeric:
            line += f"  l2 {_num(s.l2):>9}  rel {_num(s.rel):>9}  max|d| {_num(s.max_abs):>9}"
    return line


def _summary(counts: dict[str, int], stats: Any, elements: int, differing: int) -> str:
    """Tensor counts, then elements that differ over the elements of every tensor (unchanged
    ones included), then the norms of the change over the tensors that were compared."""
    parts = [f"{counts[k]} {k}" for k in ("changed", "unchanged", "added", "removed") if counts[k]]
    out = ", ".join(parts) or "no tensors"
    if elements:
        out += f"; {_count(differing)} of {_count(elements)} elements differ ({100 * differing / elements:.2f}%)"
    if stats.n:
        out += f", ||d|| {_num(stats.l2)}, rel {_num(stats.rel)}"
    return out


def _smaller(b_logical: int, delta: int) -> str:
    """How much smaller than a full copy B costs given A; nothing new is not "infx"."""
    if not delta:
        return "nothing new to store" if b_logical else "empty"
    return f"{b_logical / delta:.1f}x smaller than a full copy"


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@click.option("--stat", is_flag=True, help="Only a summary line per file and the total.")
@click.option("--all", "show_all", is_flag=True, help="List unchanged tensors too.")
@click.option("--names-only", is_flag=True, help="Statuses from hashes only: decode nothing, no numbers.")
@click.pass_context
def diff_command(ctx: click.Context, a: str, b: str, as_json: bool, stat: bool, show_all: bool,
                 names_only: bool) -> None:
    """What changed from version A to version B, file by file and tensor by tensor.

    For each changed tensor: how many elements differ (bit patterns; values across a dtype
    change), the L2 norm of the change, its size relative to A (||B-A||/||A||) and the
    largest |change|. Unchanged files and tensors are known from hashes, never decoded.
    The total ends with the bytes B's version adds to a store that holds A.
    """
    from modelfs.ops.diff import Differ

    with open_repo(ctx, DIFF_CACHE) as repo:
        va, vb = repo.resolve(a), repo.resolve(b)
        work = sum(e.size for p, e in vb.files.items() if p not in va.files or va.files[p].key != e.key)
        with progress(work, f"diff {va.ref} {vb.ref}", enabled=not names_only) as advance:
            differ = Differ(repo, va, vb, numbers=not names_only, workers=os.cpu_count() or 2,
                            progress=advance)
            _print_diff(va, vb, differ, as_json, stat, show_all)


def _print_diff(va: Version, vb: Version, differ: Differ, as_json: bool, stat: bool,
                show_all: bool) -> None:
    from modelfs.ops.diff import DiffTotal, FileDiff, TensorDiff, summarize

    events = differ.run()
    if as_json:
        doc = summarize(list(events))
        doc = {"a": {"ref": va.ref, "id": va.id}, "b": {"ref": vb.ref, "id": vb.id}, **doc}
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"diff {va.ref} ({va.id}) -> {vb.ref} ({vb.id})")
    pending: list[str] = []
    hidden = 0
    for ev in events:
        if isinstance(ev, TensorDiff):
            if not ev.name:
                continue  # a non-tensor file: its file line says it all
            if ev.status == "unchanged" and not show_all:
                hidden += 1
            elif not stat:
                pending.append(_tensor_line(ev))
        elif isinstance(ev, FileDiff):
            mark = {"added": "A", "removed": "D", "changed": "M", "unchanged": "="}[ev.status]
            size = (f"{human_bytes(ev.a.size) if ev.a else '-'} -> "
                    f"{human_bytes(ev.b.size) if ev.b else '-'}")
            head = f"{mark} {ev.path}  [{(ev.b or ev.a).format}] {size}"  # type: ignore[union-attr]
            if ev.status == "changed":
                head += (f"; {_summary(ev.counts, ev.stats, ev.elements, ev.differing)}; "
                         f"stored delta {human_bytes(ev.delta_bytes)}")
            click.echo(head)
            for line in pending:
                click.echo(line)
            if hidden and not stat and ev.status == "changed":
                click.echo(f"    ({hidden} unchanged tensors not shown; --all lists them)")
            pending, hidden = [], 0
        elif isinstance(ev, DiffTotal):
            f = ev.files
            click.echo(f"total: {sum(f.values())} files ({', '.join(f'{v} {k}' for k, v in f.items() if v)}; "
                       f"{ev.tensor_files} with tensors, {ev.other_files} other); "
                       f"tensors: {_summary(ev.tensors, ev.stats, ev.elements, ev.differing)}")
            click.echo(f"stored size of {vb.ref} given {va.ref}: {human_bytes(ev.delta_bytes)} "
                       f"for {human_bytes(ev.b_logical)} ({_smaller(ev.b_logical, ev.delta_bytes)})")


# ---------------------------------------------------------------- merge


def _params(alpha: float | None, params: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in params:
        k, sep, v = p.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            raise ModelfsError(f"--param {p!r}: want NAME=NUMBER") from None
        if not sep or not k:
            raise ModelfsError(f"--param {p!r}: want NAME=NUMBER")
    if alpha is not None:
        out["alpha"] = alpha
    return out


@click.command("merge")
@click.argument("a")
@click.argument("b")
@click.option("--base", help="Common ancestor for 3-way strategies (default: the nearest in the lineage).")
@click.option("--strategy", "-s", required=True,
              help="take-a, take-b, take-base, weighted-average, average-3, task-arithmetic, ties, "
                   "or a plug-in's.")
@click.option("--alpha", type=float, help="weighted-average: weight of B (0.5); task-arithmetic, "
                                          "ties: scale of the task vectors (1).")
@click.option("--param", "params", multiple=True, metavar="NAME=NUMBER",
              help="Other strategy parameters, e.g. density=0.2 for ties.")
@click.option("--rule", "rules", multiple=True, metavar="GLOB=STRATEGY",
              help="Strategy for tensors (or non-tensor files) matching GLOB; first match wins.")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A file of rules, one GLOB=STRATEGY [NAME=NUMBER ...] per line.")
@click.option("--into", help="Model that gets the merged version (default: A's model).")
@click.option("-m", "--message", default="", help="Message recorded with the version.")
@click.option("--dry-run", is_flag=True, help="Plan and report conflicts; write nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def merge_command(ctx: click.Context, a: str, b: str, base: str | None, strategy: str,
                  alpha: float | None, params: tuple[str, ...], rules: tuple[str, ...],
                  rules_file: Path | None, into: str | None, message: str, dry_run: bool,
                  as_json: bool) -> None:
    """Merge versions A and B into a new version whose parents are A and B.

    Tensors are merged one by one with --strategy (or the first --rule whose glob matches
    the tensor name); non-tensor files (config, tokenizer) come from A unless a rule
    matching their path says otherwise. Conflicts are listed and nothing is written.
    """
    from modelfs.names import check_model_name
    from modelfs.ops.merge import MergeConflicts, merge, parse_rule, parse_rules, plan_merge

    all_rules = [parse_rule(r) for r in rules]
    if rules_file is not None:
        try:
            text = rules_file.read_text()
        except OSError as e:
            raise ModelfsError(f"--rules {rules_file}: {e.strerror}") from None
        all_rules += parse_rules(text, str(rules_file))
    p = _params(alpha, params)
    if into is not None:
        check_model_name(into)
    with open_repo(ctx) as repo:
        va, vb = repo.resolve(a), repo.resolve(b)
        vbase = repo.resolve(base) if base else None
        try:
            if dry_run:
                plan = plan_merge(repo, va, vb, vbase or repo.common_ancestor(va.id, vb.id),
                                  strategy, p, all_rules)
                if plan.conflicts:
                    raise MergeConflicts(plan.conflicts)
                click.echo(f"merge {va.ref} + {vb.ref} (base {plan.base.ref if plan.base else '-'}): "
                           f"{len(plan.files)} files, {plan.computed} tensors to compute; no conflicts")
                return
            v = merge(repo, va, vb, base=vbase, strategy=strategy, params=p, rules=all_rules,
                      into=into, message=message)
        except MergeConflicts as e:
            shown = e.conflicts if as_json or len(e.conflicts) <= MAX_CONFLICTS else e.conflicts[:MAX_CONFLICTS]
            for c in shown:
                click.echo(f"conflict: {c}", err=True)
            if len(shown) < len(e.conflicts):
                click.echo(f"conflict: ... and {len(e.conflicts) - len(shown)} more like these "
                           "(--json lists all)", err=True)
            raise
        info = v.provenance.get("merge", {})
        if as_json:
            click.echo(json.dumps({"id": v.id, "ref": v.ref, "parents": list(v.derived_from),
                                   "base": info.get("base"), "computed_tensors": info.get("computed_tensors")}))
            return
        click.echo(f"merged {va.ref} + {vb.ref} (base {info.get('base') or '-'}, {strategy}) into "
                   f"{v.ref} ({v.id}): {info.get('computed_tensors')} tensors computed")


# ---------------------------------------------------------------- plugins


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True)
def plugins_command(as_json: bool) -> None:
    """Registered formats, codecs, update types and merge strategies (plug-ins included)."""
    from modelfs.codecs import registered_codecs
    from modelfs.formats import registered_formats
    from modelfs.ops.strategies import registered_merges
    from modelfs.ops.updates import registered_updates

    found = {"formats": sorted(registered_formats()), "codecs": sorted(registered_codecs()),
             "updates": sorted(registered_updates()), "merges": sorted(registered_merges())}
    if as_json:
        click.echo(json.dumps(found))
        return
    for k, names in found.items():
        click.echo(f"{k:<8} {', '.join(names)}")


COMMANDS: list[click.Command] = [diff_command, merge_command, plugins_command]

"""`modelfs import --lossy`: the gated lossy import (ops/lossy.py), and what it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from modelfs.cli.app import open_repo
from modelfs.cli.render import human_bytes
from modelfs.errors import ModelfsError
from modelfs.repo import Repo, Version


def check_lossy_options(lossy: bool, tolerance: float | None, gate: tuple[str, ...], *others: object) -> None:
    """--tolerance and --gate belong to --lossy; --lossy does not combine with --lora/--updates."""
    if not lossy and (tolerance is not None or gate):
        raise ModelfsError("--tolerance and --gate set the lossy gate: give --lossy too")
    if lossy and any(o is not None for o in others):
        raise ModelfsError("--lossy cannot be combined with --lora or --updates")


def lossy_wanted(ctx: click.Context, model: str) -> bool:
    """`modelfs config MODEL lossy on` makes its imports lossy too."""
    from modelfs.ops.lossy import wants_lossy

    with open_repo(ctx) as repo:
        return wants_lossy(repo, model)


def import_lossy_cmd(ctx: click.Context, src: Path, model: str, parents: tuple[str, ...], how: str | None,
                     message: str, prov: dict[str, Any], no_infer: bool, tolerance: float | None,
                     gate: tuple[str, ...], as_json: bool, recipe_cmd: str | None = None,
                     inputs: tuple[Path, ...] = ()) -> None:
    from modelfs.ops.lossy import describe, import_lossy, options_for

    with open_repo(ctx) as repo:
        options = options_for(repo, model, gate, tolerance)  # bad tests or tolerance: nothing stored
        if recipe_cmd is not None:
            prov = {**prov, "recipe_cmd": recipe_cmd}
        res = import_lossy(repo, src, model, list(parents) or None, options, how=how, message=message,
                           provenance=prov, infer_parent=not no_infer)
        v = res.version
        if recipe_cmd is not None:
            from modelfs.cli.recipe_cmds import record_import_recipe

            record_import_recipe(repo, model, recipe_cmd, inputs)
        if as_json:
            click.echo(json.dumps({"id": v.id, "ref": v.ref, "parents": list(v.parents),
                                   "lossy": res.decision.lossy, **res.decision.provenance()}))
            return
        for line in describe(res.decision):
            click.echo(line)
        click.echo(f"imported {v.ref} ({v.id}){' lossily' if res.decision.lossy else ''}, "
                   f"{len(v.files)} files, {human_bytes(v.logical_size)}")


# -- marking lossy versions wherever a user looks (show, log, du) ------------------------------
def lossy_mark(v: Version) -> str:
    """`lossy (error 0.086 of change)` for a lossy version, else ""."""
    rec = v.provenance.get("lossy")
    if not isinstance(rec, dict):
        return ""
    return f"lossy (error {rec.get('max_error_ratio', 0):.3g} of change)"


def show_lossy(v: Version, worst: int = 5) -> list[str]:
    """`modelfs show`'s lines for a lossy version: the figures, the gate, the worst tensors."""
    rec = v.provenance.get("lossy")
    if not isinstance(rec, dict):
        return []
    lines = [f"lossy    yes: error at worst {rec.get('max_error_ratio', 0):.4g} of a tensor's change "
             f"({rec.get('worst_tensor')}), {rec.get('error_ratio', 0):.4g} overall, limit "
             f"{rec.get('change_limit', 0.1):g}; {rec.get('tensors_lossy', 0)} tensors lossy, "
             f"{rec.get('tensors_exact', 0)} exact, {rec.get('tensors_unchanged', 0)} unchanged, "
             f"{rec.get('tensors_inherited', 0)} inherited from a lossy parent",
             f"         steps {rec.get('step_min') or 0:.3g}..{rec.get('step_max') or 0:.3g}, codes "
             f"{human_bytes(rec.get('lossy_bytes', 0))} (lossless delta {human_bytes(rec.get('exact_delta_bytes', 0))}); "
             f"original bytes are not kept"]
    for a in rec.get("attempts", []):
        tests = "; ".join(
            f"{n} " + ", ".join(f"{k} {t['original'][k]:.6g}->{t['reconstruction'].get(k, float('nan')):.6g}"
                                for k in t["original"]) + (" ok" if t["passed"] else " FAIL")
            for n, t in a.get("tests", {}).items())
        verdict = "accepted" if a.get("passed") else f"refused: {a.get('why', '')}"
        lines.append(f"  gate   aim {a['aim']:g}: max error {a.get('max_error_ratio', 0):.4g}"
                     f"{'; ' + tests if tests else ''} -> {verdict}")
    per = rec.get("per_tensor", {})
    for name, (ratio, step) in sorted(per.items(), key=lambda kv: -kv[1][0])[:worst]:
        lines.append(f"  tensor {name}: error {ratio:.4g} of change, step {step:.3g}")
    if rec.get("kept_exact"):
        lines.append(f"  {rec['kept_exact']}")
    return lines


def lossy_counts(repo: Repo) -> dict[str, int]:
    """model -> how many of its versions are lossy (`du`'s column)."""
    out: dict[str, int] = {}
    for v in repo.all_versions():
        if isinstance(v.provenance.get("lossy"), dict):
            out[v.model] = out.get(v.model, 0) + 1
    return out

"""`modelfs import --lossy`: the gated lossy import (ops/lossy.py), and what it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from modelfs.cli.app import open_repo
from modelfs.cli.render import human_bytes
from modelfs.errors import ModelfsError


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
                     gate: tuple[str, ...], as_json: bool) -> None:
    from modelfs.ops.lossy import describe, import_lossy, options_for

    with open_repo(ctx) as repo:
        options = options_for(repo, model, gate, tolerance)  # bad tests or tolerance: nothing stored
        res = import_lossy(repo, src, model, list(parents) or None, options, how=how, message=message,
                           provenance=prov, infer_parent=not no_infer)
        v = res.version
        if as_json:
            click.echo(json.dumps({"id": v.id, "ref": v.ref, "parents": list(v.parents),
                                   "lossy": res.decision.lossy, **res.decision.provenance()}))
            return
        for line in describe(res.decision):
            click.echo(line)
        click.echo(f"imported {v.ref} ({v.id}){' lossily' if res.decision.lossy else ''}, "
                   f"{len(v.files)} files, {human_bytes(v.logical_size)}")

"""`modelfs log`, `show` (and `lineage`, from lineage_cmds): reading the lineage (nothing writes)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from modelfs.cli.app import open_repo
from modelfs.cli.lineage_cmds import lineage
from modelfs.cli.lossy_cmds import lossy_mark, show_lossy
from modelfs.cli.render import human_bytes
from modelfs.lineage.search import Query, parse_since
from modelfs.repo import Version


def _version_json(v: Version) -> dict[str, Any]:
    return {"id": v.id, "ref": v.ref, "model": v.model, "number": v.number, "previous": v.previous,
            "derived_from": list(v.derived_from), "how": v.how, "message": v.message, "time": v.time,
            "files": {p: e.to_json() for p, e in v.files.items()}, "provenance": dict(v.provenance)}


@click.command()
@click.argument("model")
@click.option("-n", "max_count", type=click.IntRange(min=1), help="At most N versions.")
@click.option("--grep", help="Only versions whose message, how or provenance holds TEXT (any case).")
@click.option("--since", help="Only versions committed at or after: 2026-12-01, 2026-12-01T10:00, 30m, 2d.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log(ctx: click.Context, model: str, max_count: int | None, grep: str | None, since: str | None,
        as_json: bool) -> None:
    """Versions of MODEL, newest first (annotations applied: docs/everyday.md)."""
    q = Query(grep=grep, since=parse_since(since) if since else None)
    with open_repo(ctx) as repo:
        versions = [v for v in reversed(repo.versions(model)) if q.matches(v)][:max_count]
        if as_json:
            click.echo(json.dumps([_version_json(v) for v in versions], indent=1))
            return
        for v in versions:
            parents = ", ".join(repo.version(p).ref for p in v.parents) or "-"
            when = dt.datetime.fromtimestamp(v.time).strftime("%Y-%m-%d %H:%M:%S")
            mark = lossy_mark(v)
            click.echo(f"{v.ref:<24} {v.id}  {when}  parents: {parents}  how: {v.how or '-'}"
                       f"  {human_bytes(v.logical_size)}{'  ' + mark if mark else ''}  {v.message}")


@click.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """One version: parents, children, how, files with sizes and blake3."""
    with open_repo(ctx) as repo:
        v = repo.resolve(ref)
        children = repo.children(v.id)
        if as_json:
            d = _version_json(v)
            d["children"] = [c.id for c in children]
            click.echo(json.dumps(d, indent=1))
            return
        click.echo(f"version  {v.ref} ({v.id})")
        click.echo(f"parents  {', '.join(repo.version(p).ref for p in v.parents) or '-'}")
        click.echo(f"children {', '.join(c.ref for c in children) or '-'}")
        click.echo(f"how      {v.how or '-'}")
        if v.message:
            click.echo(f"message  {v.message}")
        for line in show_lossy(v):
            click.echo(line)
        for k, val in v.provenance.items():
            if k != "lossy":  # shown above, in words
                click.echo(f"{k:<8} {json.dumps(val)}")
        for path, e in sorted(v.files.items()):
            click.echo(f"  {e.size:>12}  {e.format:<12} {e.blake3_hex[:16]}  {path}")


COMMANDS: list[click.Command] = [log, show, lineage]

"""`modelfs lineage`: the graph by model (or by version), as a tree, DOT, SVG, PNG or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from modelfs.cli.app import open_repo
from modelfs.cli.picture import lineage_dot, render
from modelfs.cli.render import lineage_tree, model_tree

PICTURE = click.Path(dir_okay=False, writable=True, path_type=Path)


@click.command()
@click.option("--versions", "every", is_flag=True,
              help="Every version on its own line (node), not one per model.")
@click.option("--dot", is_flag=True, help="Print the picture's Graphviz DOT source.")
@click.option("--svg", type=PICTURE, help="Draw the picture into an SVG file (Graphviz's dot).")
@click.option("--png", type=PICTURE, help="Draw the picture into a PNG file (Graphviz's dot).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lineage(ctx: click.Context, every: bool, dot: bool, svg: Path | None, png: Path | None,
            as_json: bool) -> None:
    """The lineage: each model on one line (`minilm-ft @1..@3`) under the model it came from.

    With --svg/--png, a picture laid out by Graphviz: each model's versions in a row,
    derivation edges coloured by how, test status and lossy marks, and a legend.
    """
    from modelfs.ops.results import status_by_version

    with open_repo(ctx) as repo:
        versions = repo.all_versions()
        status = status_by_version(repo)  # {} until tests have run
    if as_json:
        click.echo(json.dumps([{"id": v.id, "ref": v.ref, "parents": list(v.parents), "how": v.how,
                                **({"tests": dict(zip(("passed", "failed"), status[v.id], strict=True))}
                                   if v.id in status else {})}
                               for v in versions], indent=1))
        return
    if svg or png or dot:
        source = lineage_dot(versions, status, every)
        if dot:
            click.echo(source, nl=False)
        for fmt, dest in (("svg", svg), ("png", png)):
            if dest is not None:
                render(source, fmt, dest)
                click.echo(f"wrote {dest}")
        return
    lines = (lineage_tree if every else model_tree)(versions, status)
    for line in lines or ["(empty store)"]:
        click.echo(line)

"""`modelfs tag`, `checkout`, `rm`, `mv`, `prune`, `annotate`, `reparent`, `find`: the
everyday verbs of a version-control tool, git's names where git has one (docs/everyday.md).

Every change goes through `Repo.history()` (repo/history.py): versions stay immutable; what
changes is names, tags and annotations read over the records.
"""

from __future__ import annotations

import json
from typing import Any

import click

from modelfs.cli.app import open_repo
from modelfs.errors import ModelfsError
from modelfs.lineage.refs import check_tag_name
from modelfs.lineage.search import Query, parse_since, parse_where
from modelfs.repo import Repo, Version


@click.command()
@click.argument("ref", required=False)
@click.argument("name", required=False)
@click.option("-l", "--list", "list_", is_flag=True, help="List tags (of REF's model, if given).")
@click.option("-d", "--delete", is_flag=True, help="Delete the tag MODEL:TAG (REF).")
@click.option("-f", "--force", is_flag=True, help="Move a tag that names another version.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tag(ctx: click.Context, ref: str | None, name: str | None, list_: bool, delete: bool, force: bool,
        as_json: bool) -> None:
    """Name a version: `tag M@3 best` makes `M:best` a ref (CLI and mount); -l lists, -d deletes."""
    with open_repo(ctx) as repo:
        h = repo.history()
        if delete:
            if ref is None or ":" not in ref or name is not None:
                raise ModelfsError("tag -d wants one MODEL:TAG")
            model, _, t = ref.partition(":")
            vid = h.untag(model, check_tag_name(t))
            click.echo(f"deleted tag {ref} (was {repo.version(vid).ref})")
            return
        if list_ or ref is None:
            model = ref.split("@")[0].split(":")[0] if ref else None
            if model is not None:
                repo.model(model)  # an unknown model is one line, not an empty list
            rows = h.tags(model)
            if as_json:
                click.echo(json.dumps([{"model": m, "tag": t, "ref": v.ref, "id": v.id} for m, t, v in rows]))
                return
            for m, t, v in rows:
                click.echo(f"{m}:{t:<20} {v.ref:<24} {v.id}")
            return
        if name is None:
            raise ModelfsError("tag wants REF and NAME: `modelfs tag M@3 best`")
        v = repo.resolve(ref)
        was = h.tag(v, name, force=force)
        moved = f" (moved from {repo.version(was).ref})" if was and was != v.id else ""
        click.echo(f"tagged {v.ref} as {v.model}:{name}{moved}")


@click.command()
@click.argument("ref")
@click.option("-m", "--message", default="", help="Message recorded with the new version.")
@click.pass_context
def checkout(ctx: click.Context, ref: str, message: str) -> None:
    """Make REF's files the head again, as a new version after the old head (nothing is lost)."""
    with open_repo(ctx) as repo:
        v = repo.resolve(ref)
        old = repo.resolve(v.model)
        new = repo.history().checkout(v, message)
    click.echo(f"checked out {v.ref} as {new.ref} ({new.id}); the previous head {old.ref} stays")


revert = click.Command("revert", callback=checkout.callback, params=list(checkout.params),
                       help="The same as `checkout REF`: REF's files as a new head version.",
                       short_help="The same as checkout REF: its files as a new head version.")


def _say_removal(what: str, r: Any, dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{what}: {verb} {len(r.removed)} versions" + (f" ({', '.join(r.removed)})" if r.removed else ""))
    for ref, kids in r.kept_as_history.items():
        click.echo(f"  kept {ref} as lineage history (by id only): {', '.join(kids)} derive from it")
    if r.tags_dropped:
        click.echo(f"  tags {'to drop' if dry_run else 'dropped'}: {', '.join(r.tags_dropped)}")
    if not dry_run and r.removed:
        click.echo("  `modelfs gc` frees their bytes")


@click.command("rm")
@click.argument("model")
@click.option("--force", is_flag=True, help="Also when other models derive from its versions: "
                                            "those are kept as lineage history.")
@click.option("--dry-run", is_flag=True)
@click.pass_context
def rm(ctx: click.Context, model: str, force: bool, dry_run: bool) -> None:
    """Remove MODEL: its name, tags and versions (bytes freed by `modelfs gc`)."""
    with open_repo(ctx) as repo:
        r = repo.history().remove(model, force=force, dry_run=dry_run)
    _say_removal(model, r, dry_run)


@click.command("mv")
@click.argument("old")
@click.argument("new")
@click.pass_context
def mv(ctx: click.Context, old: str, new: str) -> None:
    """Rename model OLD to NEW: its versions, numbers and tags follow."""
    with open_repo(ctx) as repo:
        n = repo.history().rename(old, new)
    click.echo(f"renamed {old} to {new} ({n} versions)")


@click.command()
@click.argument("model")
@click.option("--keep-last", type=int, required=True, help="Versions to keep, newest first (the head always).")
@click.option("--keep-tagged", is_flag=True, help="Keep tagged versions too.")
@click.option("--force", is_flag=True, help="Also when other models derive from a pruned version: "
                                            "it is kept as lineage history.")
@click.option("--dry-run", is_flag=True)
@click.pass_context
def prune(ctx: click.Context, model: str, keep_last: int, keep_tagged: bool, force: bool, dry_run: bool) -> None:
    """Remove MODEL's older versions; the bytes go at the next `modelfs gc`."""
    with open_repo(ctx) as repo:
        r = repo.history().prune(model, keep_last, keep_tagged=keep_tagged, force=force, dry_run=dry_run)
    _say_removal(model, r, dry_run)


def _sets(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise ModelfsError(f"--set {p!r}: want KEY=VALUE")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


@click.command()
@click.argument("ref")
@click.option("--how", help="How it was derived (finetune, lora, merge, ...).")
@click.option("-m", "--message", help="A new message.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A provenance key (JSON or text).")
@click.pass_context
def annotate(ctx: click.Context, ref: str, how: str | None, message: str | None, sets: tuple[str, ...]) -> None:
    """Enrich REF's lineage afterwards: recorded beside the version, which stays as it was."""
    edit: dict[str, Any] = {}
    if how is not None:
        edit["how"] = how
    if message is not None:
        edit["message"] = message
    if sets:
        edit["set"] = _sets(sets)
    if not edit:
        raise ModelfsError("annotate wants --how, -m or --set")
    with open_repo(ctx) as repo:
        v = repo.history().annotate(repo.resolve(ref), {**edit, "note": "annotate"})
    click.echo(f"annotated {v.ref}: " + ", ".join(f"{k} {json.dumps(val)}" for k, val in edit.items()))


@click.command()
@click.argument("ref")
@click.option("--parent", "parents", multiple=True, required=True, metavar="REF",
              help="Its real provenance parent(s); repeat for a merge.")
@click.option("--how", help="How it was derived from them.")
@click.pass_context
def reparent(ctx: click.Context, ref: str, parents: tuple[str, ...], how: str | None) -> None:
    """Fix REF's provenance parents (recorded as an annotation; the version stays as it was)."""
    with open_repo(ctx) as repo:
        v = repo.resolve(ref)
        ps = [repo.resolve(p) for p in parents]
        if any(p.id == v.id for p in ps):
            raise ModelfsError(f"{v.ref} cannot be its own parent")
        edit: dict[str, Any] = {"parents": [p.id for p in ps if p.id != v.previous], "note": "reparent"}
        if how is not None:
            edit["how"] = how
        v = repo.history().annotate(v, edit)
    click.echo(f"{v.ref}: parents now {', '.join(p.ref for p in ps)}")


def _line(repo: Repo, v: Version) -> str:
    return f"{v.ref:<24} {v.id}  how: {v.how or '-'}  {v.message}"


@click.command()
@click.option("--how", help="Versions derived this way (finetune, merge, checkout, ...).")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="A provenance or annotation key (a.b for nested keys); repeat to AND them.")
@click.option("--grep", help="Text in the message, how or provenance (any case).")
@click.option("--since", help="Committed at or after: 2026-12-01, 2026-12-01T10:00, 30m, 2d.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def find(ctx: click.Context, how: str | None, where: tuple[str, ...], grep: str | None, since: str | None,
         as_json: bool) -> None:
    """Versions of every model by their metadata: how, provenance and annotation keys, message."""
    q = Query(how, parse_where(where), grep, parse_since(since) if since else None)
    with open_repo(ctx) as repo:
        hits = [v for v in repo.all_versions() if q.matches(v)]
        if as_json:
            click.echo(json.dumps([{"ref": v.ref, "id": v.id, "how": v.how, "message": v.message}
                                   for v in hits]))
            return
        for v in hits:
            click.echo(_line(repo, v))


COMMANDS: list[click.Command] = [tag, checkout, revert, rm, mv, prune, annotate, reparent, find]

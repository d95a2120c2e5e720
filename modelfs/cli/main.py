"""`modelfs` verbs. Every user error is one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from modelfs.cli.render import human_bytes, lineage_dot, lineage_svg, lineage_tree
from modelfs.errors import ModelfsError
from modelfs.repo import Repo

DEFAULT_STORE = Path.home() / ".modelfs" / "store"


def _store_path(given: str | None) -> Path:
    if given:
        return Path(given)
    env = os.environ.get("MODELFS_STORE")
    return Path(env) if env else DEFAULT_STORE


class _Group(click.Group):
    """Turns every ModelfsError (and OSError) into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModelfsError as e:
            raise click.ClickException(str(e)) from None
        except BrokenPipeError:
            _pipe_closed()
        except OSError as e:
            raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None


@click.group(cls=_Group)
@click.option("--store", "store", metavar="DIR", help="Store directory (default: $MODELFS_STORE or ~/.modelfs/store).")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.pass_context
def cli(ctx: click.Context, store: str | None, verbose: bool) -> None:
    """Version control for ML model checkpoints, used as a filesystem."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="modelfs: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["store"] = _store_path(store)


@contextmanager
def _repo(ctx: click.Context) -> Iterator[Repo]:
    repo = Repo.open(ctx.obj["store"])
    try:
        yield repo
    finally:
        repo.close()


@contextmanager
def _progress(total: int, what: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@cli.command()
@click.option("--shared", is_flag=True,
              help="Give the store's group the owner's access (default: the owner only).")
@click.pass_context
def init(ctx: click.Context, shared: bool) -> None:
    """Create an empty store, private to its owner unless --shared."""
    Repo.init(ctx.obj["store"], shared=shared).close()
    click.echo(f"initialised empty {'shared' if shared else 'private'} modelfs store in {ctx.obj['store']}")


@cli.command("import")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="Model name to import into (a new version of it).")
@click.option("--parent", "parents", multiple=True, metavar="MODEL[@N]", help="Provenance parent(s); repeat for merges.")
@click.option("--how", help="How it was derived: finetune, lora, prune, cast, merge, ...")
@click.option("-m", "--message", default="", help="Message recorded with the version.")
@click.option("--provenance", help="Free-form JSON recorded with the version.")
@click.option("--no-infer", is_flag=True, help="Do not infer a parent for a new model.")
@click.option("--follow-symlinks", is_flag=True,
              help="Import what symlinks out of SRC point to (refused by default).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def import_(ctx: click.Context, src: Path, model: str, parents: tuple[str, ...], how: str | None,
            message: str, provenance: str | None, no_infer: bool, follow_symlinks: bool,
            as_json: bool) -> None:
    """Import the checkpoint directory SRC as a new version of MODEL."""
    if not src.is_dir():
        raise ModelfsError(f"{src} is not a directory")
    try:
        prov = json.loads(provenance) if provenance else {}
    except json.JSONDecodeError as e:
        raise ModelfsError(f"--provenance is not valid JSON: {e}") from None
    if not isinstance(prov, dict):
        raise ModelfsError(f"--provenance must be a JSON object such as '{{\"lr\": 1e-4}}', not {provenance}")
    with _repo(ctx) as repo, _progress(_dir_size(src), f"import {model}") as tick:
        v = repo.import_dir(src, model, parents=list(parents), how=how, message=message,
                            provenance=prov, infer_parent=not no_infer, progress=tick,
                            follow_symlinks=follow_symlinks)
        for w in repo.last_import_warnings:
            click.echo(f"warning: {w}", err=True)
        inferred = repo.last_inferred_parent
        if as_json:
            click.echo(json.dumps({"id": v.id, "ref": v.ref, "parents": list(v.parents),
                                   "inferred_parent": inferred.ref if inferred else None}))
            return
        if inferred is not None:
            click.echo(f"parent inferred from tensor overlap: {inferred.ref}")
        click.echo(f"imported {v.ref} ({v.id}), {len(v.files)} files, {human_bytes(v.logical_size)}")


@cli.command()
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_context
def export(ctx: click.Context, ref: str, dest: Path) -> None:
    """Write version REF (MODEL, MODEL@N or an id) into the new or empty directory DEST."""
    with _repo(ctx) as repo:
        v = repo.resolve(ref)
        with _progress(v.logical_size, f"export {v.ref}") as tick:
            repo.export(v.id, dest, progress=tick)
        click.echo(f"exported {v.ref} to {dest}")


def _version_json(v: Any) -> dict[str, Any]:
    return {"id": v.id, "ref": v.ref, "model": v.model, "number": v.number, "previous": v.previous,
            "derived_from": list(v.derived_from), "how": v.how, "message": v.message, "time": v.time,
            "files": {p: e.to_json() for p, e in v.files.items()}, "provenance": dict(v.provenance)}


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log(ctx: click.Context, model: str, as_json: bool) -> None:
    """Versions of MODEL, newest first."""
    with _repo(ctx) as repo:
        versions = list(reversed(repo.versions(model)))
        if as_json:
            click.echo(json.dumps([_version_json(v) for v in versions], indent=1))
            return
        import datetime as dt
        for v in versions:
            parents = ", ".join(repo.version(p).ref for p in v.parents) or "-"
            when = dt.datetime.fromtimestamp(v.time).strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{v.ref:<24} {v.id}  {when}  parents: {parents}  how: {v.how or '-'}"
                       f"  {human_bytes(v.logical_size)}  {v.message}")


@cli.command()
@click.option("--dot", is_flag=True, help="Print Graphviz DOT instead of a tree.")
@click.option("--svg", type=click.Path(dir_okay=False, path_type=Path), help="Write the graph as an SVG picture.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lineage(ctx: click.Context, dot: bool, svg: Path | None, as_json: bool) -> None:
    """The whole lineage graph: every model and version with its parents."""
    with _repo(ctx) as repo:
        versions = repo.all_versions()
    if as_json:
        click.echo(json.dumps([{"id": v.id, "ref": v.ref, "parents": list(v.parents), "how": v.how}
                               for v in versions], indent=1))
    elif svg:
        svg.write_text(lineage_svg(versions))
        click.echo(f"wrote {svg}")
    elif dot:
        click.echo(lineage_dot(versions), nl=False)
    else:
        for line in lineage_tree(versions) or ["(empty store)"]:
            click.echo(line)


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """One version: parents, children, how, files with sizes and blake3."""
    with _repo(ctx) as repo:
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
        for k, val in v.provenance.items():
            click.echo(f"{k:<8} {json.dumps(val)}")
        for path, e in sorted(v.files.items()):
            click.echo(f"  {e.size:>12}  {e.format:<12} {e.blake3_hex[:16]}  {path}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def du(ctx: click.Context, as_json: bool) -> None:
    """Logical bytes (as full copies), stored bytes and the ratio, per model and in total."""
    with _repo(ctx) as repo:
        report = repo.maintenance().du()
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(f"{'model':<28}{'versions':>9}{'logical':>12}{'stored':>12}{'ratio':>9}")
    for name, m in sorted(report["models"].items()):
        click.echo(f"{name:<28}{m['versions']:>9}{human_bytes(m['logical']):>12}"
                   f"{human_bytes(m['stored']):>12}{m['ratio']:>8.1f}x")
    t = report["total"]
    click.echo(f"{'total':<28}{t['versions']:>9}{human_bytes(t['logical']):>12}"
               f"{human_bytes(t['stored']):>12}{t['ratio']:>8.2f}x")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fsck(ctx: click.Context, as_json: bool) -> None:
    """Check every chunk's and file's blake3 and every reference."""
    with _repo(ctx) as repo:
        report = repo.maintenance().fsck()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        for e in report.errors:
            click.echo(f"error: {e}", err=True)
        click.echo(f"checked {report.versions_checked} versions, {report.files_checked} files, "
                   f"{report.chunks_checked} chunks: {'ok' if report.ok else f'{len(report.errors)} errors'}")
        if report.unreferenced_chunks or report.unreferenced_files:
            click.echo(f"{report.unreferenced_chunks} chunks and {report.unreferenced_files} file records "
                       "are unreferenced (left by an interrupted import; `modelfs gc` removes them)")
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Remove chunks and file records no version reaches."""
    with _repo(ctx) as repo:
        r = repo.maintenance().gc(dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(r))
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {r['chunks_removed']} chunks and {r['files_removed']} file records "
                   f"({human_bytes(r['bytes_freed'])})")


@cli.command()
@click.argument("parent")
@click.argument("new")
@click.option("--how", default="derive", help="How NEW is derived from PARENT (finetune, lora, ...).")
@click.pass_context
def derive(ctx: click.Context, parent: str, new: str, how: str) -> None:
    """Start model NEW from PARENT[@N]: its directory in the mount shows PARENT's files at once."""
    with _repo(ctx) as repo:
        p = repo.drafts().derive(parent, new, how=how)
    click.echo(f"{new} derived from {p.ref}; write into <mount>/{new}/ and it commits as {new}@1")


def _draft_rows(repo: Repo) -> list[dict[str, Any]]:
    """Every draft: its pending changes, and why it is held if a save into it failed."""
    drafts = repo.drafts()
    rows = []
    for name in drafts.models():
        d = drafts.get(name)
        if d is None:
            continue
        changes: dict[str, str | None] = {p: (e.blake3_hex if e else None)
                                          for p, e in d.changes.items()}
        changes.update({p: "staged" for p in d.staged})  # closed, being stored
        rows.append({"model": name, "changes": changes, "held": dict(d.held)})
    return rows


def _print_drafts(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("nothing pending")
    for r in rows:
        click.echo(f"{r['model']}: {len(r['changes'])} pending changes"
                   + (" (held: a save failed; commit --force or discard)" if r["held"] else ""))
        for p, why in sorted(r["held"].items()):
            click.echo(f"  held by {p}: {why}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Drafts waiting to commit: pending changes per model, and why a held one waits."""
    with _repo(ctx) as repo:
        _print_drafts(_draft_rows(repo), as_json)


@cli.command()
@click.argument("model")
@click.pass_context
def discard(ctx: click.Context, model: str) -> None:
    """Drop MODEL's draft (pending changes, a held failed save); the head is left as it was."""
    with _repo(ctx) as repo:
        if repo.drafts().get(model) is None:
            repo.model(model)  # raises NotFound for an unknown model
            click.echo(f"{model}: nothing to discard")
            return
        paths = repo.drafts().discard(model)
    click.echo(f"{model}: discarded {len(paths)} pending changes")


@cli.command()
@click.argument("model", required=False)
@click.option("-m", "--message", default="", help="Message recorded with the version.")
@click.option("--force", is_flag=True,
              help="Commit a held draft (a save into it failed) with what was closed whole.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def commit(ctx: click.Context, model: str | None, message: str, force: bool,
           as_json: bool) -> None:
    """Commit MODEL's pending changes (files closed in the mount) now; without MODEL, list drafts."""
    with _repo(ctx) as repo:
        drafts = repo.drafts()
        if model is None:
            _print_drafts(_draft_rows(repo), as_json)
            return
        if drafts.get(model) is None:
            repo.model(model)  # raises NotFound for an unknown model
        v = drafts.commit(model, message=message, force=force)
    if as_json:
        click.echo(json.dumps({"committed": v.ref if v else None, "id": v.id if v else None}))
    else:
        click.echo(f"committed {v.ref} ({v.id})" if v else f"{model}: nothing to commit")


def _register_plugins() -> None:
    """Commands from other front ends (the mount, diff/merge) live in their own modules."""
    try:
        from modelfs.cli import mount_cmds
    except ImportError:
        mount_cmds = None  # type: ignore[assignment]
    for name in ("mount_command", "umount_command"):
        cmd = getattr(mount_cmds, name, None)
        if cmd is not None:
            cli.add_command(cmd)
    from modelfs.cli import ops_cmds

    for cmd in ops_cmds.COMMANDS:
        cli.add_command(cmd)


_register_plugins()


def _pipe_closed() -> NoReturn:
    """The reader went away (`modelfs log | head`): end quietly, as if killed by SIGPIPE.

    Python's documented way: point stdout at /dev/null so the flush at exit cannot fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(128 + 13)  # 141: what git, ls and yes end with when the pipe closes


def main() -> None:
    try:
        cli(prog_name="modelfs")
    except BrokenPipeError:  # raised outside a command (by click's own output)
        _pipe_closed()


if __name__ == "__main__":
    main()

"""`modelfs derive`, `commit`, `status`, `discard`: drafts, the store side of the mount's writes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from modelfs.cli.app import open_repo, progress
from modelfs.cli.lazy_status import fetch_lines, fetch_status
from modelfs.errors import Conflict, ModelfsError, NotFound
from modelfs.repo import Repo, Version


@click.command()
@click.argument("parent")
@click.argument("new")
@click.option("--how", default="derive", help="How NEW is derived from PARENT (finetune, lora, ...).")
@click.option("--recipe", "recipe_cmd", metavar="CMD",
              help="Make NEW@1 now by this command ({parent} {out} ...), kept as NEW's recipe.")
@click.option("--input", "inputs", multiple=True, type=click.Path(path_type=Path),
              help="With --recipe: a data file it reads (blake3 recorded; repeatable).")
@click.option("--timeout", type=float, default=None, help="With --recipe: seconds before it is killed.")
@click.pass_context
def derive(ctx: click.Context, parent: str, new: str, how: str, recipe_cmd: str | None,
           inputs: tuple[Path, ...], timeout: float | None) -> None:
    """Start model NEW from PARENT[@N]: its directory in the mount shows PARENT's files at once.

    With --recipe, NEW@1 is made at once by running the recipe on PARENT's files."""
    if recipe_cmd is not None:
        from modelfs.cli.recipe_cmds import derive_by_recipe

        derive_by_recipe(ctx, parent, new, how, recipe_cmd, inputs, timeout)
        return
    with open_repo(ctx) as repo:
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


def _mount_line(store: Path) -> str:
    """Which writable mount serves the store now (its daemon holds the mount lock)."""
    from modelfs import locks
    from modelfs.fs.control import mount_lock_path

    lock = mount_lock_path(store)
    if not locks.held(lock):
        return "no writable mount is running on this store"
    h = locks.holder(lock)
    return f"mounted writable at {h.get('mountpoint', '?')} (daemon pid {h.get('pid', '?')})"


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """What is not committed yet: the running mount, each model's head, pending changes per
    model (saves closed in the mount, being stored or stored), and saves that failed to store."""
    with open_repo(ctx) as repo:
        rows = _draft_rows(repo)
        heads = {m.name: repo.version(m.head) for m in repo.models() if m.head}
        for r in rows:
            r["head"] = heads[r["model"]].ref if r["model"] in heads else None
        if as_json:
            _print_drafts(rows, True)
            return
        click.echo(_mount_line(ctx.find_root().obj["store"]))
        for name, v in sorted(heads.items()):
            click.echo(f"head {name:<24} {v.ref:<20} {v.id}")
        _print_drafts(rows, False)
        if not as_json:  # a lazy store's remote, the mounts' fetches and cache hit rates
            for line in fetch_lines(fetch_status(repo)):
                click.echo(line)


@click.command()
@click.argument("model")
@click.pass_context
def discard(ctx: click.Context, model: str) -> None:
    """Drop MODEL's draft (pending changes, a held failed save); the head is left as it was."""
    with open_repo(ctx) as repo:
        if repo.drafts().get(model) is None:
            repo.model(model)  # raises NotFound for an unknown model
            click.echo(f"{model}: nothing to discard")
            return
        paths = repo.drafts().discard(model)
    click.echo(f"{model}: discarded {len(paths)} pending changes")


@click.command()
@click.argument("model", required=False)
@click.option("-m", "--message", default="", help="Message recorded with the version.")
@click.option("--force", is_flag=True,
              help="Commit a held draft (a save into it failed) with what was closed whole.")
@click.option("--wait", is_flag=True,
              help="Wait until the mount has stored every closed file, commit, and print the version "
                   "(or the one the mount committed meanwhile).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="With --wait: seconds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def commit(ctx: click.Context, model: str | None, message: str, force: bool, wait: bool,
           timeout: float, as_json: bool) -> None:
    """Commit MODEL's pending changes (files closed in the mount) now; without MODEL, list drafts."""
    from modelfs.ops import lossy

    with open_repo(ctx) as repo:
        lossy.install(repo)  # a model configured `lossy on` commits lossily (docs/lossy.md)
        drafts = repo.drafts()
        if model is None:
            _print_drafts(_draft_rows(repo), as_json)
            return
        if drafts.get(model) is None:
            repo.model(model)  # raises NotFound for an unknown model
        if wait and not force:
            v = _commit_waiting(repo, model, message, timeout)
        else:  # a bar while it stores what a killed mount left staged (none when that is nothing)
            total = drafts.to_recover(model)
            with progress(total, f"commit {model}", enabled=total > 0) as tick:
                v = drafts.commit(model, message=message, force=force, progress=tick)
        head = repo.resolve(model) if wait and v is None and repo.model(model).head else None
    if as_json:
        click.echo(json.dumps({"committed": v.ref if v else None, "id": v.id if v else None,
                               **({"head": head.ref, "head_id": head.id} if head else {})}))
    elif v is not None:
        click.echo(f"committed {v.ref} ({v.id})")
    elif head is not None:  # --wait: the mount had committed every save already
        click.echo(f"{model}: nothing pending; its head is {head.ref} ({head.id}), committed "
                   f"{max(0.0, time.time() - head.time):.1f} s ago")
    else:
        click.echo(f"{model}: nothing to commit")


WAIT_GRACE = 2.0  # seconds commit --wait gives a just-closed file to reach the mount as a draft


def _commit_waiting(repo: Repo, model: str, message: str, timeout: float) -> Version | None:
    """Commit once the mount stored every closed file of MODEL; a version the mount committed
    itself meanwhile (its settle rule) is the answer too. One line if it takes too long."""
    drafts = repo.drafts()
    start_head = _head_id(repo, model)
    start = time.monotonic()
    deadline = start + timeout
    while True:
        d = drafts.get(model)
        if d is not None and d.held:
            return drafts.commit(model, message=message)  # raises: says why and what to do
        if d is None or not d.pending_files:
            head = _head_id(repo, model)
            if head and head != start_head:
                return repo.version(head)
            if time.monotonic() - start >= WAIT_GRACE:
                return None
            time.sleep(0.1)  # a close the kernel has not handed to the mount yet (release is async)
            continue
        if not d.staged:
            try:
                v = drafts.commit(model, message=message)
            except Conflict:  # a file closed again just now: still being stored
                v = None
            else:
                head = _head_id(repo, model)  # None: the mount committed it first (settled)
                return v or (repo.version(head) if head and head != start_head else None)
        if time.monotonic() > deadline:
            raise ModelfsError(f"{model}: files still being stored after {timeout:.0f} s; "
                               "`modelfs status` shows them")
        time.sleep(0.1)


def _head_id(repo: Repo, model: str) -> str | None:
    try:
        return repo.model(model).head
    except NotFound:
        return None


COMMANDS: list[click.Command] = [derive, commit, status, discard]

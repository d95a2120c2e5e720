"""`modelfs remote`, `push`, `pull`, `clone`, `fetch` (and `gc --remote`): stores meeting at a bucket.

The verbs parse, open the store and the remote, show a transfer bar (bytes and rate) on a
terminal, and print one summary (``--json``: objects, bytes and requests moved). The work is
modelfs/remote/'s. The endpoint comes from ``--endpoint``, the remote's config or
``AWS_ENDPOINT_URL``; credentials from the standard AWS variables and files (boto3 reads them).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from modelfs.cli.app import open_repo
from modelfs.cli.render import human_bytes
from modelfs.errors import InvalidName, NotFound
from modelfs.remote import Options, Remote
from modelfs.remote.gc import GRACE, gc_remote
from modelfs.remote.pull import clone, fetch, pull
from modelfs.remote.push import Pusher, parse_targets
from modelfs.repo import Repo, Transfer

DEFAULT_REMOTE = "origin"


def _options(endpoint: str | None, timeout: float, retries: int = 4) -> Options:
    return Options(endpoint=endpoint or os.environ.get("AWS_ENDPOINT_URL") or None, read_timeout=timeout,
                   connect_timeout=min(timeout, 5.0), attempts=max(1, retries))


@contextmanager
def _bar(what: str, enabled: bool) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(advance, set_total) of a transfer bar on a terminal; no-ops elsewhere."""
    if not enabled or not sys.stderr.isatty():
        yield (lambda n: None), (lambda n: None)
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield (lambda n: bar.advance(task, n)), (lambda n: bar.update(task, total=n))


def _split(repo: Repo, args: tuple[str, ...]) -> tuple[str, list[str]]:
    """`[REMOTE] [NAMES...]`: the first argument is a remote if one has that name."""
    names = Transfer(repo).remotes()
    if args and args[0] in names:
        return args[0], list(args[1:])
    if DEFAULT_REMOTE in names:
        return DEFAULT_REMOTE, list(args)
    if len(names) == 1:
        return next(iter(names)), list(args)
    if not names:
        raise NotFound("this store has no remote: add one (modelfs remote add origin s3://bucket/prefix)")
    raise InvalidName(f"which remote? this store has {', '.join(sorted(names))}: name one first")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _say(out: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
    else:
        click.echo(f"{line} ({out['requests']} requests, {human_bytes(out['bytes_up'])} up, "
                   f"{human_bytes(out['bytes_down'])} down)")


_timeout = click.option("--timeout", type=float, default=30.0, show_default=True,
                        help="Seconds to wait for the server on each request.")
_retries = click.option("--retries", type=click.IntRange(1, 20), default=4, show_default=True,
                        help="Tries per request, with exponential backoff between them.")


def timeout_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return _timeout(_retries(f))
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON summary of what moved.")


@click.group()
def remote() -> None:
    """Remotes this store pushes to and pulls from (s3://bucket/prefix or file:///path)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL, else AWS itself).")
@click.pass_context
def remote_add(ctx: click.Context, name: str, url: str, endpoint: str | None) -> None:
    """Add a remote NAME at URL."""
    if not name or "\0" in name or "/" in name or name.startswith("-"):
        raise InvalidName(f"bad remote name {name!r}")
    Remote(name, url, Options(endpoint=endpoint))  # checks the URL; opening makes no request
    with open_repo(ctx) as repo:
        Transfer(repo).set_remote(name, {"url": url, "endpoint": endpoint})
    click.echo(f"remote {name}: {url}" + (f" at {endpoint}" if endpoint else ""))


@remote.command("list")
@json_option
@click.pass_context
def remote_list(ctx: click.Context, as_json: bool) -> None:
    """List the remotes."""
    with open_repo(ctx) as repo:
        remotes = Transfer(repo).remotes()
        lazy = repo.lazy_remote()
    if as_json:
        click.echo(json.dumps(remotes, sort_keys=True))
        return
    for name, c in sorted(remotes.items()):
        click.echo(f"{name}\t{c['url']}" + (f"\t{c['endpoint']}" if c.get("endpoint") else "")
                   + ("\t(lazy: chunks come from here)" if name == lazy else ""))


@remote.command("rm")
@click.argument("name")
@click.pass_context
def remote_rm(ctx: click.Context, name: str) -> None:
    """Remove remote NAME (nothing on the remote changes)."""
    with open_repo(ctx) as repo:
        if repo.lazy_remote() == name:
            raise InvalidName(f"this lazy store reads its chunks from {name}: fetch them first")
        Transfer(repo).remove_remote(name)
    click.echo(f"removed remote {name}")


@click.command()
@click.argument("args", nargs=-1, metavar="[REMOTE] [MODEL|MODEL@N...]")
@timeout_option
@json_option
@click.pass_context
def push(ctx: click.Context, args: tuple[str, ...], timeout: float, retries: int, as_json: bool) -> None:
    """Upload the versions the remote lacks, then move its refs."""
    with open_repo(ctx) as repo:
        name, given = _split(repo, args)
        r = Remote.of(repo, name, _options(None, timeout, retries))
        targets = parse_targets(repo, given)
        with _bar(f"push {name}", not as_json) as (advance, total):
            out = Pusher(repo, r, progress=advance, on_total=total).run(targets)
    _say(out, as_json, f"pushed {_n(out['versions'], 'version')}, {_n(out['chunks'], 'chunk')} in "
         f"{_n(out['packs'], 'pack')} "
         f"to {name}; refs moved: {', '.join(out['refs_moved']) or 'none'}")


@click.command("pull")
@click.argument("args", nargs=-1, metavar="[REMOTE] [MODEL...]")
@timeout_option
@json_option
@click.pass_context
def pull_(ctx: click.Context, args: tuple[str, ...], timeout: float, retries: int, as_json: bool) -> None:
    """Fetch the versions the store lacks and only the chunks it lacks (a lazy store: metadata)."""
    with open_repo(ctx) as repo:
        name, models = _split(repo, args)
        r = Remote.of(repo, name, _options(None, timeout, retries))
        with _bar(f"pull {name}", not as_json) as (advance, _):
            out = pull(repo, r, models, progress=advance)
    _say(out, as_json, f"pulled {_n(out['versions'], 'version')} and {_n(out['chunks'], 'chunk')} from {name}")


@click.command("clone")
@click.argument("url")
@click.argument("store", type=click.Path())
@click.option("--lazy", is_flag=True, help="Only metadata now; chunks come on first read.")
@click.option("--endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL).")
@timeout_option
@json_option
def clone_(url: str, store: str, lazy: bool, endpoint: str | None, timeout: float, retries: int,
           as_json: bool) -> None:
    """A new store at STORE from the remote at URL (its remote `origin`)."""
    with _bar("clone", not as_json) as (advance, _):
        out = clone(url, store, lazy=lazy, options=_options(endpoint, timeout, retries), progress=advance)
    _say(out, as_json, f"cloned {_n(out['versions'], 'version')} of {_n(len(out['models']), 'model')} into {store}"
         + (" (lazy: chunks come on first read)" if lazy else f", {_n(out['chunks'], 'chunk')}"))


@click.command("fetch")
@click.argument("ref")
@timeout_option
@json_option
@click.pass_context
def fetch_(ctx: click.Context, ref: str, timeout: float, retries: int, as_json: bool) -> None:
    """Bring every chunk of version REF into this lazy store (for offline use)."""
    with open_repo(ctx) as repo, _bar(f"fetch {ref}", not as_json) as (advance, _):
        out = fetch(repo, ref, _options(None, timeout, retries), progress=advance)
    _say(out, as_json, f"fetched {_n(out['chunks'], 'chunk')} of {out['version']}")


def gc_remote_run(ctx: click.Context, name: str, grace: float | None, dry_run: bool, as_json: bool) -> None:
    """`modelfs gc --remote NAME`: the packs no ref of remote NAME reaches."""
    with open_repo(ctx) as repo:
        r = Remote.of(repo, name)
    out = gc_remote(r, GRACE if grace is None else grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    _say(out, as_json, f"{verb} {_n(out['deleted'], 'object')} ({human_bytes(out['bytes_freed'])}) from {name}; "
         f"kept {_n(out['packs_kept'], 'pack')}, {out['too_young']} younger than the grace period")


COMMANDS: list[click.Command] = [remote, push, pull_, clone_, fetch_]

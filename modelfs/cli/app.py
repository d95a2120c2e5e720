"""The `modelfs` click group and what every command module shares.

Command modules (`store_cmds`, `history_cmds`, `draft_cmds`, `mount_cmds`, `ops_cmds`)
import this one; `main` adds their commands to `cli`. Nothing here imports them back.
Every user error becomes one clear line on stderr and a non-zero exit, here, once.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from modelfs.errors import ModelfsError
from modelfs.repo import ChunkSource, Repo

DEFAULT_STORE = Path.home() / ".modelfs" / "store"


def store_path(given: str | None) -> Path:
    """--store, else $MODELFS_STORE, else ~/.modelfs/store (the CLI alone reads the environment)."""
    if given:
        return Path(given)
    env = os.environ.get("MODELFS_STORE")
    return Path(env) if env else DEFAULT_STORE


def pipe_closed() -> NoReturn:
    """The reader went away (`modelfs log | head`): end quietly, as if killed by SIGPIPE.

    Python's documented way: point stdout at /dev/null so the flush at exit cannot fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(128 + 13)  # 141: what git, ls and yes end with when the pipe closes


class _Group(click.Group):
    """Turns every ModelfsError (and OSError) into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModelfsError as e:
            if _closed_pipe(e):
                pipe_closed()
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if _closed_pipe(e):  # BrokenPipeError, or an EPIPE some library re-raised as OSError
                pipe_closed()
            raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None


def _closed_pipe(e: BaseException) -> bool:
    """Whether `e` is (or was raised while handling) a write into a pipe whose reader left."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno == errno.EPIPE:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


@click.group(cls=_Group)
@click.option("--store", "store", metavar="DIR", help="Store directory (default: $MODELFS_STORE or ~/.modelfs/store).")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.pass_context
def cli(ctx: click.Context, store: str | None, verbose: bool) -> None:
    """Version control for ML model checkpoints, used as a filesystem."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="modelfs: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["store"] = store_path(store)


def _chunk_source(repo: Repo, remote: str) -> ChunkSource:
    from modelfs.remote import open_chunk_source  # the S3 client loads only when a chunk is fetched

    return open_chunk_source(repo, remote)


@contextmanager
def open_repo(ctx: click.Context, cache_bytes: int | None = None) -> Iterator[Repo]:
    """The store the group's --store names, closed when the command is done with it."""
    kw = {"cache_bytes": cache_bytes} if cache_bytes else {}
    repo = Repo.open(ctx.find_root().obj["store"], **kw)
    repo.attach_lazy_remote(_chunk_source)  # a lazy store reads missing chunks from its remote
    try:
        yield repo
    finally:
        repo.close()


@contextmanager
def progress(total: int, what: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A transfer bar on a terminal; a no-op callback when stderr is not one (scripts, tests)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)

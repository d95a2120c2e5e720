"""`modelfs mount` and `modelfs umount`.

The mount runs as a detached daemon (``python -m modelfs.fs.daemon``) with a log file in the
store, or in this process with ``--foreground``. Neither pyfuse3 nor trio is imported here:
the foreground path imports the daemon module only when it is used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from modelfs.errors import ModelfsError
from modelfs.fs import control
from modelfs.fs.config import MountConfig
from modelfs.repo import Repo


def _check_store(store: Path) -> None:
    """Fail here, with the store's own message, rather than in a detached daemon."""
    Repo.open(store).close()


@click.command("mount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("-f", "--foreground", is_flag=True,
              help="Stay attached and log to stderr; Ctrl-C unmounts.")
@click.option("--cache-mb", type=click.IntRange(min=16), default=MountConfig.cache_mb,
              show_default=True, help=MountConfig.help("cache_mb"))
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the mount to come up.")
@click.option("--settle", type=click.FloatRange(min=0.0), default=MountConfig.settle,
              show_default=True, help=MountConfig.help("settle"))
@click.option("--read-only", is_flag=True, help=MountConfig.help("read_only"))
@click.pass_context
def mount_command(ctx: click.Context, mountpoint: Path, foreground: bool, cache_mb: int,
                  timeout: float, settle: float, read_only: bool) -> None:
    """Mount the store at MOUNTPOINT (an empty directory).

    MOUNTPOINT/<model>/ is each model's head, writable: files saved there become its next
    version. MOUNTPOINT/<model>@<n>/ is every version (read-only), MOUNTPOINT/.versions/
    lists them and MOUNTPOINT/.lineage/ shows parents and children. A directory made at
    the root is a new model. See docs/mount.md.
    """
    store = Path(ctx.obj["store"]).absolute()
    mnt = mountpoint.absolute()
    config = MountConfig(cache_mb=cache_mb, settle=settle, read_only=read_only)
    try:
        _check_store(store)
        control.check_mountpoint(mnt)
        if foreground:
            from modelfs.fs.daemon import serve

            logging.getLogger("modelfs.fs").setLevel(logging.INFO)
            serve(store, mnt, config)
            return
        pid = control.start_daemon(store, mnt, config, timeout=timeout)
    except ModelfsError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"mounted {store} at {mnt} (daemon pid {pid}, log {control.log_path(store, mnt)})")


@click.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("-z", "--lazy", is_flag=True,
              help="Detach now even if files are open; the daemon stops when they close.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the daemon to exit.")
def umount_command(mountpoint: Path, lazy: bool, timeout: float) -> None:
    """Unmount a modelfs mount and wait for its daemon to exit.

    Exits non-zero, naming them, when drafts are left uncommitted (a save failed, or a
    closed file could not be stored): they stay pending, see ``modelfs status``.
    """
    try:
        store = control.mount_store(mountpoint)
        report = control.unmount(mountpoint, lazy=lazy, timeout=timeout)
        click.echo(report)
        left = [] if store is None or not report.startswith("unmounted") else _uncommitted(store)
    except ModelfsError as e:
        raise click.ClickException(str(e)) from None
    if left:
        raise click.ClickException("not committed: " + "; ".join(left)
                                   + " (they stay pending: modelfs status)")


def _uncommitted(store: Path) -> list[str]:
    """Drafts with files that a mount left behind instead of committing."""
    with Repo.open(store) as repo:
        drafts = repo.drafts()
        out = []
        for name in drafts.models():
            d = drafts.get(name)
            if d is None or not (d.pending_files or d.held):
                continue
            why = "; ".join(f"{p}: {r}" for p, r in sorted(d.held.items()))
            out.append(f"{name} ({why})" if why else f"{name} ({len(d.changes) + len(d.staged)}"
                       " pending changes)")
        return out

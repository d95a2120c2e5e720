"""The mount daemon: ``python -m modelfs.fs.daemon --store S [--cache-mb N] MOUNTPOINT``.

It always runs in the foreground; ``modelfs mount`` spawns it detached, with its output
in a log file, so no process ever forks while holding the LMDB environment open.

Stopping: ``fusermount3 -u`` (or ``modelfs umount``) ends it once the kernel lets go.
SIGTERM, SIGINT or SIGHUP detach the mount at once (lazy unmount: no new opens) and keep
serving files that are still open until they close, for at most ``--grace`` seconds; a
second signal stops at once. Either way, before it exits, every closed file is stored and
every draft it made is committed.

Starting: closed files a killed daemon left in ``<store>/staging/`` are stored and their
drafts committed (in the background, once the mount answers); staging files it never
closed are deleted, so they never reach a version.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import pyfuse3
import trio

from modelfs import locks
from modelfs.errors import ModelfsError
from modelfs.fs import control
from modelfs.fs.config import MountConfig
from modelfs.fs.draftsync import Recovery, plan_recovery
from modelfs.fs.ops import Operations
from modelfs.fs.staging import StagingArea
from modelfs.heap import keep_freed_memory
from modelfs.ops import lossy
from modelfs.repo import ChunkSource, Repo, set_file_mode, store_access

log = logging.getLogger("modelfs.fs")

READ_AHEAD_KB = 1024  # 1 MiB FUSE read requests instead of 128 KiB
# a lazy store: the kernel's read-around of one page fault (safe_open's mmap) must not pull
# in neighbouring tensors' chunks over the network; sequential reads are fetched ahead by
# the mount's own read-ahead (MountConfig.for_lazy_store), not the kernel's
LAZY_READ_AHEAD_KB = 128
SWITCH_INTERVAL = 0.0005


def mount_options() -> set[str]:
    # no max_read=: pyfuse3 cannot set the matching conn.max_read, and libfuse refuses the mismatch
    return set(pyfuse3.default_options) | {"fsname=modelfs", "subtype=modelfs"}


async def _tune_readahead(ops: Operations, mountpoint: Path, kb: int = READ_AHEAD_KB) -> None:
    """Raise the mount's read-ahead to 1 MiB (root only, best effort).

    Only after INIT: the kernel clamps read-ahead to what INIT negotiated. The INIT reply is
    written before ``init()``'s caller yields to trio, so waking up here is late enough, and
    early enough to come before the first request that ``wait_mounted`` sends.
    """
    await ops.initialized.wait()
    m = control.find_mount(mountpoint)
    ops.mounted(m)
    if m is None:
        return
    path = Path("/sys/class/bdi") / m.dev / "read_ahead_kb"
    try:
        path.write_text(str(kb))
        log.info("read-ahead of %s set to %s KiB", mountpoint, path.read_text().strip())
    except OSError as e:
        log.info("could not raise %s (%s): reads stay at the kernel default", path, e.strerror)


async def _unmount_lazily(mountpoint: Path) -> bool:
    try:
        r = await trio.run_process(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                                   capture_stdout=True, capture_stderr=True)
    except OSError as e:
        log.warning("fusermount3 -u -z %s: %s", mountpoint, e)
        return False
    if r.returncode != 0:
        log.warning("fusermount3 -u -z %s: %s", mountpoint, r.stderr.decode(errors="replace").strip())
    return r.returncode == 0


async def _handle_signals(mountpoint: Path, grace: float, nursery: trio.Nursery) -> None:
    async def deadline() -> None:
        await trio.sleep(grace)
        log.warning("files still open after %.0fs; stopping now", grace)
        pyfuse3.terminate()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        seen = 0
        async for signum in signals:
            seen += 1
            name = signal.Signals(signum).name
            if seen == 1:
                log.info("%s: detaching %s; open files are served until closed", name, mountpoint)
                if await _unmount_lazily(mountpoint):
                    nursery.start_soon(deadline)
                    continue
            log.info("%s: stopping now", name)
            pyfuse3.terminate()


async def _run(ops: Operations, mountpoint: Path, grace: float, recovery: Recovery) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(_handle_signals, mountpoint, grace, nursery)
        nursery.start_soon(ops.watch_repo)
        nursery.start_soon(ops.commit_loop)
        lazy = ops.repo.chunk_source is not None
        nursery.start_soon(_tune_readahead, ops, mountpoint, LAZY_READ_AHEAD_KB if lazy else READ_AHEAD_KB)
        ops.start_recovery(recovery)
        await pyfuse3.main()  # returns once the kernel drops the connection (unmounted)
        await ops.shutdown()  # store what was closed, commit every draft
        nursery.cancel_scope.cancel()


def _writer_lock(store: Path, mnt: Path) -> locks.ExclusiveLock:
    """One writable mount per store, held for the daemon's life (the kernel drops it on death).

    Two writable mounts would each commit their own view of a model and lose the other's
    closed files; read-only mounts need no lock.
    """
    try:
        access = store_access(store)  # a shared store's group may take the lock after us
        held = locks.ExclusiveLock(control.mount_lock_path(store),
                                   {"pid": os.getpid(), "mountpoint": str(mnt)}, mode=access.file_mode)
        set_file_mode(control.mount_lock_path(store), access)
        return held
    except BlockingIOError:
        raise ModelfsError(control.already_mounted(store)) from None
    except OSError as e:
        raise ModelfsError(f"cannot lock {store} for a writable mount: {e.strerror}") from None


# a read waiting on a stalled remote: EIO after this long per try and this many tries (the
# verbs wait longer; a process blocked in read() should learn soon), the next read tries again
LAZY_READ_TIMEOUT = 5.0
LAZY_ATTEMPTS = 2


def _chunk_source(repo: Repo, remote: str) -> ChunkSource:
    from modelfs.remote import Options, open_chunk_source  # the S3 client loads only when lazy

    return open_chunk_source(repo, remote, Options(connect_timeout=LAZY_READ_TIMEOUT,
                                                   read_timeout=LAZY_READ_TIMEOUT,
                                                   attempts=LAZY_ATTEMPTS))


def serve(store: Path, mountpoint: Path, config: MountConfig | None = None) -> None:
    """Mount ``store`` at ``mountpoint`` and serve until unmounted or signalled."""
    config = config or MountConfig()
    mnt = control.check_mountpoint(mountpoint)
    # every request is served by the one loop thread; while stage_file runs Python code in a
    # worker, the loop waits for the GIL up to this long per request (default 5 ms)
    sys.setswitchinterval(SWITCH_INTERVAL)
    lock = None if config.read_only else _writer_lock(store, mnt)
    repo = Repo.open(store, cache_bytes=config.cache_mb << 20)
    lossy.install(repo)  # models configured `lossy on` commit their writes lossily (docs/lossy.md)
    staging: StagingArea | None = None
    try:
        lazy = repo.attach_lazy_remote(_chunk_source)  # a lazy store: chunks on first read
        if lazy is not None:
            threading.Thread(target=repo.warm_chunk_source, name="modelfs-warm", daemon=True).start()
            config = config.for_lazy_store()
            log.info("lazy store: chunks not here are fetched from remote %s (read-ahead %d "
                     "MiB)", lazy, config.window >> 20)
        if not config.read_only:
            try:
                staging = StagingArea(store / "staging")
            except OSError as e:
                raise ModelfsError(f"cannot make a staging area in {store / 'staging'}: "
                                   f"{e.strerror}") from None
        recovery = plan_recovery(repo.drafts(), staging) if staging else Recovery()
        if recovery.removed:
            log.info("deleted %d staging files a previous mount never closed (never part of a "
                     "version)", len(recovery.removed))
        ops = Operations(repo, config, store_label=str(store), staging=staging)
        try:
            pyfuse3.init(ops, str(mnt), mount_options())
        except RuntimeError as e:
            raise ModelfsError(f"mounting {mnt} failed ({e}); see the messages above") from None
        log.info("mounted %s at %s (pid %d, cache %d MiB, settle %.1fs%s)", store, mnt,
                 os.getpid(), config.cache_mb, config.settle,
                 ", read-only" if config.read_only else "")
        try:
            trio.run(_run, ops, mnt, config.grace, recovery)
        except BaseException:
            pyfuse3.close(unmount=True)
            raise
        pyfuse3.close(unmount=True)
        log.info("unmounted %s; %s", mnt, json.dumps(ops.core.counters(), sort_keys=True))
    finally:
        if staging is not None:
            staging.close()
        repo.close()
        if lock is not None:
            lock.release()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modelfs.fs.daemon",
                                 description="Serve a modelfs store as a FUSE mount.")
    ap.add_argument("--store", required=True, type=Path)
    MountConfig.add_arguments(ap)
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("mountpoint", type=Path)
    args = ap.parse_args(argv)
    keep_freed_memory()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.store, args.mountpoint, MountConfig.from_args(args))
    except ModelfsError as e:
        print(f"modelfs mount: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which files a source directory holds: the walk that `import` trusts, symlinks checked.

A checkpoint directory is imported as what it holds, never as what its links reach: a
link such as ``p -> /etc/passwd`` would store (and `export` would write back) a file from
elsewhere on the machine. So every symlink is resolved before anything is stored, and one
whose target lies outside the directory is refused, naming the link, unless the caller
asks to follow links. Two kinds of link are the directory's own:

- a link whose target lies inside the directory (it imports as the file, or directory,
  it points to);
- in a Hugging Face cache (``hub/models--X/snapshots/REV/f -> ../../blobs/SHA``), a link of
  a snapshot into its repo's ``blobs/``: the cache stores every snapshot file that way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modelfs.errors import ModelfsError
from modelfs.names import check_file_path

HF_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


class SymlinkRefused(ModelfsError):
    """A link in a source directory points outside it, dangles or loops; nothing was stored."""


def hf_blobs_dir(root: Path) -> Path | None:
    """``<cache>/models--X/blobs`` when `root` (resolved) lies in a snapshot of that repo."""
    for p in (root, *root.parents):
        repo = p.parent.parent
        if p.parent.name == "snapshots" and repo.name.startswith(HF_REPO_PREFIXES) and p != p.parent:
            return repo / "blobs"
    return None


def source_files(src: str | os.PathLike[str], follow_symlinks: bool = False) -> dict[str, Path]:
    """Relative path -> the file to read, for every file under `src`, in path order.

    Raises before anything is read: SymlinkRefused for a link out of `src` (unless
    `follow_symlinks`), a dangling link or a directory loop; ModelfsError for a socket,
    device or fifo. Paths come back resolved, so storing them follows no link again.
    """
    shown = Path(src)
    root = Path(os.path.realpath(shown))
    if not root.is_dir():
        raise ModelfsError(f"{shown} is not a directory")
    blobs = hf_blobs_dir(root)
    files: dict[str, Path] = {}

    def allowed(target: Path) -> bool:
        return (follow_symlinks or target.is_relative_to(root)
                or (blobs is not None and target.is_relative_to(blobs)))

    def walk(real: Path, rel: str, stack: frozenset[Path]) -> None:
        with os.scandir(real) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            path = Path(e.path)
            if e.is_symlink():
                path = _resolve_link(shown / r, path)
                if not allowed(path):
                    raise SymlinkRefused(
                        f"{shown / r} is a symlink to {path}, outside {shown}; refusing to import "
                        "a file from elsewhere (--follow-symlinks to allow it)")
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                if path in stack:
                    raise SymlinkRefused(f"{shown / r} links back to {path}, a directory above it: a loop")
                walk(path, r, stack | {path})
            elif stat.S_ISREG(mode):
                files[check_file_path(r)] = path
            else:
                raise ModelfsError(f"{shown / r} is not a regular file "
                                   "(sockets, devices and fifos cannot be imported)")

    walk(root, "", frozenset({root}))
    return dict(sorted(files.items()))


def _resolve_link(shown: Path, link: Path) -> Path:
    """Where a link finally points; a clear error for one that dangles or loops."""
    try:
        return Path(os.path.realpath(link, strict=True))
    except FileNotFoundError:
        raise SymlinkRefused(f"{shown} is a dangling symlink (to {os.readlink(link)}): "
                             "its target does not exist") from None
    except OSError as e:  # ELOOP: a link that points to itself, or a cycle of links
        raise SymlinkRefused(f"{shown} is a symlink that cannot be resolved: {e.strerror}") from None

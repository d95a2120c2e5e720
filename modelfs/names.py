"""Validation of user-supplied names: model names, version refs and relative file paths."""

from __future__ import annotations

import re

from modelfs.errors import InvalidName, NameTooLong

NAME_MAX = 255  # bytes in one path component, as every local filesystem allows (and no more)
PATH_MAX = 4096  # bytes in a whole path

_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def check_model_name(name: str) -> str:
    """A model name is one path component users can type and the mount can show."""
    if not name:
        raise InvalidName("model name is empty")
    if "\0" in name:
        raise InvalidName(f"model name {name!r} contains a NUL byte")
    if "/" in name:
        raise InvalidName(f"model name {name!r} contains '/'")
    if name in (".", "..") or ".." in name:
        raise InvalidName(f"model name {name!r} contains '..'")
    if "@" in name:
        raise InvalidName(f"model name {name!r} contains '@' (reserved for versions: MODEL@N)")
    if name_bytes(name) > NAME_MAX:
        raise NameTooLong(f"model name {name[:40]!r}... is longer than {NAME_MAX} bytes")
    if not _MODEL_RE.match(name):
        raise InvalidName(
            f"model name {name!r} is not allowed: use letters, digits and . _ + - "
            "(starting with a letter or digit, at most 200 characters)"
        )
    return name


def check_file_path(path: str) -> str:
    """A file path inside a version: relative, '/'-separated, no '.', '..' or empty parts."""
    if not path:
        raise InvalidName("file path is empty")
    if "\0" in path:
        raise InvalidName(f"file path {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise InvalidName(f"file path {path!r} is absolute")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidName(f"file path {path!r} has an empty, '.' or '..' component")
        if name_bytes(part) > NAME_MAX:
            raise NameTooLong(f"file path {path[:60]!r}... has a name longer than {NAME_MAX} "
                              "bytes, which no local filesystem could export")
    if name_bytes(path) > PATH_MAX:
        raise NameTooLong(f"file path {path[:60]!r}... is longer than {PATH_MAX} bytes")
    return path


def name_bytes(name: str) -> int:
    """Length as the kernel counts it (names undecodable as UTF-8 arrive surrogate-escaped)."""
    return len(name.encode("utf-8", "surrogateescape"))

"""The one grammar of version references, shared by the CLI and the mount.

::

    MODEL           the model's head
    MODEL@N         version N of the model (N >= 1, decimal)
    MODEL@-K        K versions before the head (MODEL@-1 is the one before it; CLI only)
    MODEL:TAG       the version the tag names (`modelfs tag MODEL@N TAG`)
    HEX             a version id, or a unique prefix of 6 or more hex digits (CLI only)

`MODEL@0` is refused everywhere: numbers start at 1, and "0 back from the head" would be the
head itself under another name. The mount shows the refs that name one version for good
(``MODEL@N``) or that the user chose (``MODEL:TAG``); the relative and id forms move or are
ambiguous, so they are the CLI's alone. Model names never hold ``@`` or ``:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelfs.errors import InvalidName

_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class HeadRef:
    model: str


@dataclass(frozen=True, slots=True)
class NumberRef:
    model: str
    number: int  # >= 1


@dataclass(frozen=True, slots=True)
class BackRef:
    model: str
    back: int  # >= 1: versions before the head


@dataclass(frozen=True, slots=True)
class TagRef:
    model: str
    tag: str


@dataclass(frozen=True, slots=True)
class IdRef:
    prefix: str  # also a model name, possibly: resolution tries the model first


Ref = HeadRef | NumberRef | BackRef | TagRef | IdRef


def check_tag_name(tag: str) -> str:
    """A tag is one path component of letters, digits and . _ + -, not a plain number."""
    if not _TAG_RE.match(tag) or tag.isdigit() or ".." in tag:
        raise InvalidName(f"bad tag name {tag!r}: use letters, digits and . _ + - (not only digits, "
                          "starting with a letter or digit, at most 100 characters)")
    return tag


def parse_ref(text: str) -> Ref:
    """The typed form of a reference; InvalidName (one line) for anything outside the grammar."""
    if not text or "\0" in text or "/" in text:
        raise InvalidName(f"bad version reference {text!r}")
    if ":" in text:
        model, _, tag = text.partition(":")
        if not model:
            raise InvalidName(f"bad version reference {text!r}: want MODEL:TAG")
        return TagRef(model, check_tag_name(tag))
    if "@" in text:
        model, _, num = text.partition("@")
        if not model or not num:
            raise InvalidName(f"bad version reference {text!r}: want MODEL@N")
        try:
            n = int(num)
        except ValueError:
            raise InvalidName(f"bad version number {num!r} in {text!r}") from None
        if n == 0:
            raise InvalidName(f"{text!r}: version numbers start at 1 ({model}@1 is the first, "
                              f"{model}@-1 the one before the head, {model} the head)")
        return NumberRef(model, n) if n > 0 else BackRef(model, -n)
    if len(text) >= 6 and set(text) <= _HEX:
        return IdRef(text)
    return HeadRef(text)


def mount_ref(name: str) -> NumberRef | TagRef | None:
    """A root directory name that names a version in the mount: ``MODEL@N`` in canonical
    decimal (one name per version directory) or ``MODEL:TAG``; None for anything else."""
    try:
        ref = parse_ref(name)
    except InvalidName:
        return None
    if isinstance(ref, NumberRef) and name.rpartition("@")[2] == str(ref.number):
        return ref
    return ref if isinstance(ref, TagRef) else None

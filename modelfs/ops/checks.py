"""Test definitions over the lineage: a command, and the versions it applies to.

A test is attached the way MGit attaches them (to all nodes, or by model type), but by rules
evaluated when tests run, never by a list of versions made when the test was added: a glob on
the model name and/or the kind of derivation (the version's ``how``). A model imported later
that matches gets the test too.

A definition's *hash* (blake3 of its canonical JSON: the command and the timeout) keys its
results, so renaming a test or widening its rules keeps what is known, and changing what it
runs starts afresh.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from modelfs.errors import Conflict, InvalidName, ModelfsError, NotFound
from modelfs.ops.commands import placeholders_in
from modelfs.repo import Repo, Version

TABLE = "tests"
DEFAULT_TIMEOUT = 600.0  # seconds: a real held-out evaluation fits, a hung one is still killed
PLACEHOLDERS = ("path", "model", "version", "ref")  # {path}: the version's files, read-only
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def check_test_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidName(f"test name {name!r} is not allowed: use letters, digits and . _ + - "
                          "(starting with a letter or digit, at most 100 characters)")
    return name


def check_command(cmd: str, allowed: Sequence[str] = PLACEHOLDERS) -> list[str]:
    """The placeholders ``cmd`` uses; an unknown one (or a lone brace) is refused.

    Placeholders are str.format fields with nothing after the name (``{path}``, not
    ``{path!r}`` or ``{path:>9}``); ``{{`` and ``}}`` are literal braces.
    """
    return placeholders_in(cmd, allowed, "command")


def fill_command(cmd: str, values: Mapping[str, str]) -> str:
    """``cmd`` with each placeholder replaced by its value, shell-quoted (cmd runs in bash)."""
    return cmd.format_map({k: shlex.quote(v) for k, v in values.items()})


@dataclass(frozen=True, slots=True)
class Check:
    """One test over the lineage (called Check in code: pytest owns the word Test)."""

    name: str
    cmd: str
    timeout: float = DEFAULT_TIMEOUT
    models: str | None = None  # glob on the model name (fnmatch, case-sensitive)
    how: str | None = None  # the version's how (finetune, lora, cast ...)
    created: float = 0.0

    @property
    def hash(self) -> str:
        """What keys this test's results: what it runs, not what it is called or applies to."""
        canon = json.dumps({"cmd": self.cmd, "timeout": self.timeout}, sort_keys=True, separators=(",", ":"))
        return blake3.blake3(canon.encode()).hexdigest()

    def matches(self, v: Version) -> bool:
        if self.models is not None and not fnmatch.fnmatchcase(v.model, self.models):
            return False
        return self.how is None or v.how == self.how

    def command_for(self, v: Version, path: Path) -> str:
        return fill_command(self.cmd, {"path": str(path), "model": v.model, "version": v.id, "ref": v.ref})

    @property
    def applies_to(self) -> str:
        parts = ([f"models {self.models}"] if self.models is not None else []) + \
                ([f"how {self.how}"] if self.how is not None else [])
        return " and ".join(parts) or "all models"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "cmd": self.cmd, "timeout": self.timeout, "models": self.models,
                "how": self.how, "created": self.created}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Check:
        return cls(d["name"], d["cmd"], float(d["timeout"]), d.get("models"), d.get("how"),
                   float(d.get("created", 0.0)))


class Checks:
    """The store's test definitions (table ``tests``: name -> definition)."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._table = repo.table(TABLE)

    def add(self, name: str, cmd: str, models: str | None = None, how: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, replace: bool = False) -> Check:
        """Define a test; everything is checked before anything is stored."""
        check_test_name(name)
        check_command(cmd)
        if not timeout > 0:
            raise ModelfsError(f"--timeout must be more than 0 seconds, not {timeout}")
        if models is not None and not models:
            raise ModelfsError("--models needs a glob (leave it out for all models)")
        c = Check(name, cmd, float(timeout), models, how or None, time.time())
        if not self._table.put(name.encode(), c.to_json(), overwrite=replace):
            raise Conflict(f"test {name!r} already exists (modelfs test rm {name}, or --replace)")
        return c

    def get(self, name: str) -> Check:
        raw = self._table.get(name.encode())
        if raw is None:
            raise NotFound(f"unknown test {name!r} (modelfs test list shows the tests)")
        return Check.from_json(raw)

    def all(self) -> list[Check]:
        return [Check.from_json(v) for _, v in self._table.items()]

    def select(self, names: Iterable[str] = ()) -> list[Check]:
        """The named tests (each must exist), or every test; none defined is an error."""
        names = list(dict.fromkeys(names))
        if names:
            return [self.get(n) for n in names]
        every = self.all()
        if not every:
            raise NotFound("no tests are defined (modelfs test add NAME --cmd 'CMD {path}')")
        return every

    def remove(self, name: str) -> tuple[Check, bool]:
        """Drop a test; True when no other test runs the same definition (its results are
        orphans then: `results.remove_test` drops them too)."""
        c = self.get(name)
        shared = any(o.hash == c.hash for o in self.all() if o.name != name)
        self._table.delete(name.encode())
        return c, not shared

"""Searching versions by their metadata: how, provenance (annotations included), message, time.

One predicate for `modelfs log --grep/--since` and `modelfs find --how/--where`; it reads
effective versions (lineage/overlay.py), so an annotation is found like a recorded key.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelfs.errors import InvalidName
from modelfs.lineage.records import Version


def parse_since(text: str) -> float:
    """An ISO date or time (2026-12-01, 2026-12-01T10:00), or N[smhdw] ago (`2d`)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return dt.datetime.now().timestamp() - int(text[:-1]) * units[text[-1]]
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidName(f"--since {text!r}: want a date (2026-12-01), a time (2026-12-01T10:00) "
                          "or an age (30m, 2d)") from None


def parse_where(pairs: Iterable[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise InvalidName(f"--where {p!r}: want KEY=VALUE")
        out[k] = v
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _lookup(prov: Mapping[str, Any], key: str) -> Any:
    """`a.b` reaches into nested provenance (``merge.strategy``)."""
    cur: Any = prov
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


@dataclass(frozen=True)
class Query:
    how: str | None = None
    where: Mapping[str, str] = field(default_factory=dict)
    grep: str | None = None  # case-insensitive, in the message, how and provenance
    since: float | None = None

    def matches(self, v: Version) -> bool:
        if self.how is not None and (v.how or "") != self.how:
            return False
        if self.since is not None and v.time < self.since:
            return False
        for k, want in self.where.items():
            got = _lookup(v.provenance, k)
            if got is None or _text(got) != want:
                return False
        if self.grep is not None:
            hay = " ".join([v.message, v.how or "", json.dumps(dict(v.provenance), sort_keys=True)])
            if self.grep.lower() not in hay.lower():
                return False
        return True

"""When a burst of writes becomes one version: per-model activity and the commit rule."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Activity:
    """What one model's directory is doing, for the commit decision and the ``draft`` xattr."""

    writers: int = 0  # handles open for writing
    storing: int = 0  # closed files waiting for, or in, stage_file
    dirty: bool = False  # the store holds changes this mount made (or recovered)
    last: float = float("-inf")  # monotonic time of the last request in the directory
    last_change: float = float("-inf")  # ... of the last change (a write, close, rename)
    urgent: bool = False  # commit without waiting for the settle time
    retry_at: float = float("-inf")  # after a failed commit
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)  # path -> why its save failed
    held_stored: bool = False  # the hold is in the draft's record too (it survives the daemon)
    held_head: str | None = None  # the head version when the burst was held
    settle: float | None = None  # this burst's settle time (read when the burst starts)
    settle_known: bool = False  # read for this burst already
    burst: set[str] = field(default_factory=set)  # paths closed whole since the last commit
    renamed: set[str] = field(default_factory=set)  # ... of them, put in place by a rename
    last_commit: dict[str, object] = field(default_factory=dict)  # for the head's xattr

    def to_json(self) -> dict[str, object]:
        return {"open_for_writing": self.writers, "storing": self.storing,
                "pending": self.dirty, "errors": len(self.errors), "held": dict(self.held)}


class Settler:
    """Per-model activity and the rule for when a burst of writes becomes one version.

    A model commits once nothing is open for writing, every closed file is stored, and
    its directory has been quiet for ``settle`` seconds. Lookups and listings count as
    activity too: a saver that looks around between two files (``save_pretrained`` lists
    the directory before it writes the weights) is still in its burst. A directory that is
    looked at forever still commits ``patience`` seconds after its last change.
    """

    MAX_ERRORS = 50

    def __init__(self, settle: float, clock: Callable[[], float] = time.monotonic,
                 settle_of: Callable[[str], float | None] | None = None) -> None:
        self.settle = settle
        self.clock = clock
        self.settle_of = settle_of
        self.models: dict[str, Activity] = {}

    def settle_for(self, a: Activity) -> float:
        return self.settle if a.settle is None else a.settle

    def patience(self, a: Activity) -> float:
        return max(10 * self.settle_for(a), 5.0)

    def of(self, model: str) -> Activity:
        a = self.models.get(model)
        if a is None:
            a = self.models[model] = Activity()
        return a

    def touch(self, model: str, dirty: bool = False, change: bool = True) -> None:
        a = self.of(model)
        a.last = self.clock()
        if change:
            if not a.settle_known:  # the first change of a new burst
                a.settle, a.settle_known = self._settle_of(model), True
            a.last_change = a.last
        a.dirty = a.dirty or dirty

    def _settle_of(self, model: str) -> float | None:
        if self.settle_of is None:
            return None
        try:
            return self.settle_of(model)
        except Exception:  # a setting that cannot be read: the mount's default, never a stop
            return None

    def error(self, model: str, message: str) -> None:
        a = self.of(model)
        a.errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}")
        del a.errors[: -self.MAX_ERRORS]

    def _ready(self, a: Activity) -> bool:
        """Held drafts never commit by themselves: a save into them failed (see ``hold``)."""
        return a.dirty and a.writers == 0 and a.storing == 0 and not a.held

    def _at(self, a: Activity) -> float:
        """When a ready model becomes due."""
        if a.urgent:
            return a.retry_at
        return max(a.retry_at, min(a.last + self.settle_for(a),
                                   a.last_change + self.patience(a)))

    def due(self) -> list[str]:
        """Models to commit now."""
        now = self.clock()
        return [m for m, a in sorted(self.models.items()) if self._ready(a) and now >= self._at(a)]

    def next_check(self) -> float | None:
        """Seconds until a model may become due (None: nothing pending but writes)."""
        now = self.clock()
        waits = [self._at(a) - now for a in self.models.values() if self._ready(a)]
        return max(0.0, min(waits)) if waits else None

    def committed(self, model: str) -> None:
        a = self.of(model)
        a.dirty = a.urgent = False
        a.burst.clear()
        a.renamed.clear()
        a.settle_known = False
        a.failures = 0
        a.retry_at = float("-inf")

    def failed(self, model: str) -> float:
        """Back off after a failed commit (5 s, doubling, at most a minute); returns the wait."""
        a = self.of(model)
        a.failures += 1
        wait = min(60.0, 5.0 * 2 ** (a.failures - 1))
        a.retry_at = self.clock() + wait
        return wait

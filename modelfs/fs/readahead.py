"""Sequential-read detection per open file, deciding what to decode ahead of the reader.

The kernel already reads ahead in the page cache; this decides which *chunks* a worker
thread should decode before the kernel asks for them, so decoding overlaps with serving
(goofys / gcsfuse style). Random access (``safe_open`` reading one tensor) must not
trigger it, so a handle has to read ``trigger`` bytes in sequence first. Synchronous and
free of trio so it is unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable


class ReadAhead:
    """Tracks one handle's reads and hands out ranges to prefetch."""

    def __init__(self, size: int, window: int = 16 << 20, trigger: int = 8 << 20,
                 slack: int = 4 << 20) -> None:
        self.size = size
        self.window = window  # how far ahead of the reader to keep decoded
        self.trigger = trigger  # bytes read in sequence before prefetching starts
        self.slack = slack  # reordering tolerated between concurrent kernel requests
        self._next = 0  # where a sequential reader reads next
        self._run = 0  # bytes read in sequence so far
        self._ahead = 0  # prefetch has been asked up to here

    def on_read(self, offset: int, length: int) -> tuple[int, int] | None:
        """Record a read; return a ``(start, end)`` range to prefetch, or None."""
        end = min(offset + length, self.size)
        if abs(offset - self._next) <= self.slack:
            self._run += length
            self._next = max(self._next, end)
        else:
            self._run = length
            self._next = end
            self._ahead = end
        if self._run < self.trigger:
            return None
        start = max(self._ahead, self._next)
        target = min(self.size, self._next + self.window)
        # ask for more only once half the window has been consumed, so each request is big
        if target - start < self.window // 2 and target < self.size:
            return None
        if start >= target:
            return None
        self._ahead = target
        return start, target


def merge_spans(spans: Iterable[tuple[int, int]], piece: int) -> list[tuple[int, int]]:
    """Chunk spans in file order, runs of small ones merged up to ``piece`` bytes a call."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and out[-1][1] == a and b - out[-1][0] <= piece:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out

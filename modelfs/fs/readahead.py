"""Sequential-read detection per open file, deciding what to decode ahead of the reader.

The kernel already reads ahead in the page cache; this decides which *chunks* a worker
thread should decode before the kernel asks for them, so decoding overlaps with serving
(goofys / gcsfuse style). Two patterns are predicted, and nothing beyond them:

- a tensor: a safetensors reader (``get_tensor`` then its values, ``from_pretrained``'s
  page faults in any order) reads a tensor whole once it touches it, so a read that starts
  a new run inside a tensor asks for the rest of that tensor (at most ``tensor_cap``
  bytes), its chunks decoded in parallel rather than one page fault after another;
- a stream: once a handle has read on ``trigger`` bytes past the end of the tensor its run
  started in, keep ``window`` bytes decoded ahead of it. Until then the run may be one
  tensor read whole (with the kernel's own read-ahead a little past its end), and
  read-ahead stops at that tensor's end.

Synchronous and free of trio so it is unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable


class ReadAhead:
    """Tracks one handle's reads and hands out ranges to prefetch."""

    def __init__(self, size: int, window: int = 16 << 20, trigger: int = 8 << 20,
                 slack: int = 4 << 20, tensor_cap: int = 32 << 20) -> None:
        self.size = size
        self.tensor_cap = tensor_cap  # the most a read into a tensor asks for at once
        self._run_end: int | None = None  # end of the tensor the run started in; None once crossed
        self.window = window  # how far ahead of the reader to keep decoded
        self.trigger = trigger  # bytes read in sequence before prefetching starts
        self.slack = slack  # reordering tolerated between concurrent kernel requests
        self._next = 0  # where a sequential reader reads next
        self._run = 0  # bytes read in sequence so far
        self._ahead = 0  # prefetch has been asked up to here

    def on_read(self, offset: int, length: int, tensor_end: int | None = None) -> tuple[int, int] | None:
        """Record a read; return a ``(start, end)`` range to prefetch, or None.

        ``tensor_end``: where the tensor holding ``offset`` ends (None: bytes outside tensors).
        """
        end = min(offset + length, self.size)
        if self._run and abs(offset - self._next) <= self.slack:
            self._run += length
            self._next = max(self._next, end)
            if self._run_end is not None and end > self._run_end:
                # read on past the tensor's end: a stream, if it goes on for `trigger` bytes
                # (the kernel's own read-ahead crosses the end of a tensor read whole)
                self._run = end - self._run_end
                self._run_end = None
        else:  # a new run: the handle's first read, or a jump
            self._run = length
            self._next = end
            self._ahead = end
            self._run_end = tensor_end
            if tensor_end is not None and tensor_end > end:
                self._ahead = min(tensor_end, end + self.tensor_cap, self.size)
                return end, self._ahead
        if self._run < self.trigger:
            return None
        start = max(self._ahead, self._next)
        target = min(self.size, self._next + self.window)
        if self._run_end is not None:  # perhaps one tensor read whole: not past its end
            target = min(target, self._run_end)
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

"""Sequential-read detection: prefetch for streams, nothing for random access."""

from __future__ import annotations

from modelfs.fs.readahead import ReadAhead, merge_spans

MiB = 1 << 20


def test_sequential_reads_prefetch_ahead_in_big_steps() -> None:
    ra = ReadAhead(size=100 * MiB, window=16 * MiB, trigger=4 * MiB)
    asked = []
    for off in range(0, 100 * MiB, MiB):
        span = ra.on_read(off, MiB)
        if span:
            asked.append(span)
    assert asked, "a stream must trigger prefetch"
    assert asked[0][0] == 4 * MiB  # starts right after what was read when it triggered
    # contiguous, never overlapping, and each (but the last) at least half a window
    for (_, e1), (s2, _) in zip(asked, asked[1:], strict=False):
        assert s2 == e1
    assert all(e - s >= 8 * MiB for s, e in asked[:-1])
    assert asked[-1][1] == 100 * MiB  # never past the end
    assert len(asked) < 20


def test_random_reads_do_not_prefetch() -> None:
    ra = ReadAhead(size=1000 * MiB, window=16 * MiB, trigger=4 * MiB, slack=4 * MiB)
    for off in [0, 500 * MiB, 20 * MiB, 900 * MiB, 100 * MiB, 300 * MiB]:
        assert ra.on_read(off, MiB) is None


def test_reading_one_small_tensor_asks_for_the_rest_of_it_and_nothing_more() -> None:
    # safe_open: the header at 0 (not a tensor), then one 2.4 MB tensor read in 1 MiB requests
    ra = ReadAhead(size=90 * MiB, window=16 * MiB, trigger=4 * MiB)
    assert ra.on_read(0, 16 << 10) is None
    start, end = 40 * MiB, 40 * MiB + 2_400_000
    spans = [ra.on_read(off, MiB, end) for off in range(start, end, MiB)]
    assert spans == [(start + MiB, end), None, None]  # decoded in parallel, not fault by fault


def test_a_jump_into_a_big_tensor_asks_for_at_most_tensor_cap() -> None:
    ra = ReadAhead(size=1000 * MiB, window=16 * MiB, trigger=4 * MiB, tensor_cap=32 * MiB)
    assert ra.on_read(100 * MiB, MiB, 500 * MiB) == (101 * MiB, 133 * MiB)
    assert ra.on_read(700 * MiB, MiB, None) is None  # a jump to bytes outside tensors


def test_one_tensor_read_whole_is_not_a_stream_even_with_the_kernels_read_ahead_past_it() -> None:
    """A 12 MiB tensor read in 1 MiB requests, the kernel reading 2 MiB past its end: nothing is
    prefetched beyond the tensor, though more than `trigger` bytes were read in sequence."""
    ra = ReadAhead(size=1000 * MiB, window=16 * MiB, trigger=8 * MiB, tensor_cap=32 * MiB)
    t0, t1 = 100 * MiB, 112 * MiB
    asked = [ra.on_read(off, MiB, t1 if off < t1 else t1 + 4 * MiB) for off in range(t0, t1 + 2 * MiB, MiB)]
    assert asked[0] == (t0 + MiB, t1)
    assert all(a is None for a in asked[1:])


def test_a_stream_across_tensors_still_reads_ahead_once_past_the_first_tensor() -> None:
    ra = ReadAhead(size=1000 * MiB, window=16 * MiB, trigger=4 * MiB, tensor_cap=32 * MiB)
    ends = [10 * MiB * (i + 1) for i in range(100)]  # 10 MiB tensors back to back
    spans = [ra.on_read(off, MiB, next(e for e in ends if e > off)) for off in range(0, 60 * MiB, MiB)]
    assert spans[0] == (MiB, 10 * MiB)  # the first tensor's rest
    later = [s for s in spans[1:] if s]
    assert later and later[0][0] >= 10 * MiB and later[0][1] - later[0][0] >= 8 * MiB


def test_reordered_concurrent_requests_still_count_as_sequential() -> None:
    """Requests the kernel sends out of order within `slack` keep the run going: prefetch starts
    once `trigger` bytes were read, right after the furthest byte read, and is asked once."""
    ra = ReadAhead(size=64 * MiB, window=16 * MiB, trigger=2 * MiB, slack=4 * MiB)
    order = [0, 2, 1, 3, 5, 4, 6, 7]
    spans = [ra.on_read(i * MiB, MiB) for i in order]
    assert spans == [None, (3 * MiB, 19 * MiB), None, None, None, None, None, None]
    # a jump beyond the slack is random access: the run starts over, nothing is prefetched
    assert ra.on_read(40 * MiB, MiB) is None


def test_small_chunks_are_merged_big_ones_kept() -> None:
    spans = [(0, 100), (100, 300), (300, 2 * MiB + 300), (2 * MiB + 300, 4 * MiB + 300)]
    assert merge_spans(spans, 2 * MiB) == [(0, 300), (300, 2 * MiB + 300),
                                           (2 * MiB + 300, 4 * MiB + 300)]
    assert merge_spans([(0, 10), (20, 30)], MiB) == [(0, 10), (20, 30)]  # never across a gap

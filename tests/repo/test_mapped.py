"""The importer's file map: an error inside it is the error the caller sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfs.repo import mapped


def test_a_slice_still_alive_does_not_hide_the_real_error(tmp_path: Path) -> None:
    """A worker's slice of the map can outlive its future for a moment (found by the
    durability campaign: storing failed with `BufferError: cannot close exported pointers
    exist` instead of the error that happened)."""
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 4096)
    kept = []
    with pytest.raises(ValueError, match="the real one"), mapped(f) as mv:
        kept.append(mv[10:20])
        raise ValueError("the real one")
    with mapped(f) as mv:  # and the file maps again, its bytes intact
        assert bytes(mv[:4]) == b"xxxx"
    kept.clear()

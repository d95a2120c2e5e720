"""Helpers the durability tests share."""

from __future__ import annotations

from typing import Any


def one_line_error(r: Any, *words: str) -> str:
    """`r` failed with exit 1 and exactly one line on stderr holding every word; no traceback."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]

"""A version committed without moving the head (a gated cascade's failing version)."""

from __future__ import annotations

from pathlib import Path

from modelfs.repo import Repo


def _dir(tmp: Path, name: str, data: bytes) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "w.bin").write_bytes(data)
    return d


def test_a_version_beside_the_head_is_numbered_and_reachable(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "store")
    v1 = repo.import_dir(_dir(tmp_path, "a", b"one"), "m")
    v2 = repo.import_dir(_dir(tmp_path, "b", b"two"), "m", move_head=False)
    assert repo.resolve("m").id == v1.id  # the head stays
    assert repo.resolve("m@2").id == v2.id and v2.previous == v1.id
    v3 = repo.import_dir(_dir(tmp_path, "c", b"three"), "m")
    assert (v3.number, v3.previous) == (3, v1.id)  # numbered after it, built on the head
    assert repo.resolve("m").id == v3.id
    assert repo.maintenance().fsck().ok
    repo.close()

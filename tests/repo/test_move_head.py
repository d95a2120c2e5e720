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


def test_advance_head_moves_only_onto_the_version_it_was_built_on(tmp_path: Path) -> None:
    import pytest

    from modelfs.errors import Conflict

    repo = Repo.init(tmp_path / "store")
    v1 = repo.import_dir(_dir(tmp_path, "a", b"one"), "m")
    v2 = repo.import_dir(_dir(tmp_path, "b", b"two"), "m", move_head=False)
    dv = repo.data_version()
    assert repo.advance_head(v2.id).id == v2.id
    assert repo.resolve("m").id == v2.id and repo.data_version() > dv  # mounts refresh
    assert repo.advance_head(v2.id).id == v2.id  # already the head: nothing to do
    v3 = repo.import_dir(_dir(tmp_path, "c", b"three"), "m", move_head=False)
    repo.import_dir(_dir(tmp_path, "d", b"four"), "m")  # the head moves on meanwhile
    with pytest.raises(Conflict, match="moved on"):
        repo.advance_head(v3.id)
    assert repo.resolve("m").number == 4 and v1.number == 1
    repo.close()

"""The synchronous core of the mount, tested without FUSE over a real repo (in-memory store)."""

from __future__ import annotations

import errno
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from repohelp import commit, names, walk

from modelfs.fs.tree import (
    LONG_TIMEOUT,
    ROOT_INO,
    SHORT_TIMEOUT,
    FsError,
    Kind,
    Tree,
    build_dir_index,
    split_ref,
)
from modelfs.repo import Repo
from modelfs.store import MemoryStore

FILES = {
    "config.json": b"0123456789",
    "model.safetensors": bytes(range(200)) * 5,
    "1_Pooling/config.json": b"pool______",
    "deep/a/b.txt": b"bbbbbbbbbb",
    "run.sh": (b"#!/bin/sh\n", 0o755),
}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    r = Repo.init(store=MemoryStore())
    commit(r, tmp_path, "base", FILES)
    commit(r, tmp_path, "base", {**FILES, "model.safetensors": bytes(1200)}, how="finetune")
    commit(r, tmp_path, "child", {"model.safetensors": bytes(range(100)) * 9},
           parents=["base@1"], how="prune")
    yield r
    r.close()


@pytest.fixture
def tree(repo: Repo) -> Tree:
    return Tree(repo, refresh_interval=0.0)




def test_dir_index_has_every_intermediate_directory(repo: Repo) -> None:
    files = repo.resolve("base@1").files
    idx = build_dir_index(files)
    assert idx[""] == {"1_Pooling": None, "config.json": files["config.json"], "deep": None,
                       "model.safetensors": files["model.safetensors"], "run.sh": files["run.sh"]}
    assert idx["deep"] == {"a": None}
    assert list(idx["deep/a"]) == ["b.txt"]


@pytest.mark.parametrize(("name", "want"), [
    ("m@1", ("m", 1)), ("a@b@12", None), ("m@01", None), ("m@0", None), ("m@", None),
    ("@1", None), ("m", None), ("m@-1", None), ("m@x", None), ("m:best", None),
])
def test_split_ref_accepts_only_canonical_numbers(name: str, want: tuple[str, int] | None) -> None:
    assert split_ref(name) == want


def test_root_lists_heads_and_the_two_views(tree: Tree) -> None:
    assert names(tree, "/") == [".versions", ".lineage", "base", "child"]  # `ls -a` shows them
    a = tree.getattr(ROOT_INO)
    assert stat.S_ISDIR(a.mode) and a.mode & 0o777 == 0o555  # read-only: no staging area
    assert a.nlink == 2 + 2 + 2  # two model dirs, .versions, .lineage
    assert a.attr_timeout == SHORT_TIMEOUT


def test_head_and_versions_show_the_right_files(tree: Tree) -> None:
    assert names(tree, "/base") == ["1_Pooling", "config.json", "deep", "model.safetensors",
                                    "run.sh"]
    head_model = tree.lookup(walk(tree, "/base"), "model.safetensors")
    assert head_model.size == 1200
    assert tree.lookup(walk(tree, "/base@1"), "model.safetensors").size == 1000
    assert tree.lookup(walk(tree, "/base@2"), "model.safetensors").size == 1200
    assert names(tree, "/base@1/deep/a") == ["b.txt"]
    content = tree.content(walk(tree, "/base@1/deep/a/b.txt"))
    assert content == tree.repo.resolve("base@1").files["deep/a/b.txt"]


def test_unknown_names_are_enoent(tree: Tree) -> None:
    for path in ["/nope", "/base@3", "/base@0", "/base@01", "/nope@1", "/base/nope",
                 "/base@1/deep/nope", "/.versions/nope", "/.versions/base/3",
                 "/.versions/base/01", "/.lineage/base@9", "/.lineage/base",
                 "/.lineage/base@1/nope", "/.lineage/base@1/parents/x@1"]:
        with pytest.raises(FsError) as e:
            walk(tree, path)
        assert e.value.errno == errno.ENOENT, path


def test_lookup_under_a_file_is_enotdir(tree: Tree) -> None:
    ino = walk(tree, "/base@1/config.json")
    with pytest.raises(FsError) as e:
        tree.lookup(ino, "x")
    assert e.value.errno == errno.ENOTDIR
    with pytest.raises(FsError) as e:
        tree.readdir(ino)
    assert e.value.errno == errno.ENOTDIR


def test_attributes_of_versions(tree: Tree, repo: Repo) -> None:
    v1 = repo.resolve("base@1")
    d = tree.lookup(ROOT_INO, "base@1")
    assert d.mode == stat.S_IFDIR | 0o555
    assert d.nlink == 2 + 2  # 1_Pooling and deep
    assert d.mtime_ns == int(v1.time * 1e9)
    assert d.entry_timeout == LONG_TIMEOUT and d.attr_timeout == LONG_TIMEOUT
    f = tree.lookup(d.ino, "config.json")
    assert f.mode == stat.S_IFREG | 0o444 and f.nlink == 1 and f.size == 10
    assert f.mtime_ns == int(v1.time * 1e9)
    assert tree.lookup(d.ino, "run.sh").mode == stat.S_IFREG | 0o555


def test_names_under_a_head_have_short_entry_timeouts(tree: Tree) -> None:
    head = tree.lookup(ROOT_INO, "base")
    assert head.entry_timeout == SHORT_TIMEOUT and head.attr_timeout == SHORT_TIMEOUT
    f = tree.lookup(head.ino, "model.safetensors")
    assert f.entry_timeout == SHORT_TIMEOUT  # the name moves with the head ...
    assert f.attr_timeout == LONG_TIMEOUT  # ... but a stored file's attributes do not
    sub = tree.lookup(head.ino, "deep")
    assert tree.lookup(sub.ino, "a").entry_timeout == SHORT_TIMEOUT  # heads are writable
    assert tree.lookup(walk(tree, "/base@1/deep"), "a").entry_timeout == LONG_TIMEOUT


def test_inodes_are_stable_and_distinct(tree: Tree) -> None:
    a = walk(tree, "/base@1/config.json")
    assert walk(tree, "/base@1/config.json") == a
    assert tree.readdir(walk(tree, "/base@1"))[1][1].ino == a
    assert walk(tree, "/base@2/config.json") != a
    assert walk(tree, "/base/config.json") not in (a, walk(tree, "/base@2/config.json"))
    assert tree.lookup(walk(tree, "/base@1/deep"), "..").ino == walk(tree, "/base@1")
    assert tree.lookup(ROOT_INO, "..").ino == ROOT_INO
    assert tree.lookup(walk(tree, "/base@1"), ".").ino == walk(tree, "/base@1")


def test_versions_view(tree: Tree) -> None:
    assert names(tree, "/.versions") == ["base", "child"]
    assert names(tree, "/.versions/base") == ["1", "2"]
    link = walk(tree, "/.versions/base/2")
    assert tree.node(link).kind is Kind.LINK
    assert tree.readlink(link) == "../../base@2"
    assert stat.S_ISLNK(tree.getattr(link).mode)


def test_lineage_view(tree: Tree) -> None:
    assert names(tree, "/.lineage") == ["base@1", "base@2", "child@1"]
    assert names(tree, "/.lineage/base@1") == ["version", "parents", "children", "how",
                                               "info.json"]
    assert names(tree, "/.lineage/base@1/parents") == []
    assert sorted(names(tree, "/.lineage/base@1/children")) == ["base@2", "child@1"]
    assert names(tree, "/.lineage/base@2/parents") == ["base@1"]
    assert names(tree, "/.lineage/child@1/parents") == ["base@1"]
    assert tree.readlink(walk(tree, "/.lineage/child@1/parents/base@1")) == "../../base@1"
    assert tree.readlink(walk(tree, "/.lineage/child@1/version")) == "../../child@1"
    assert tree.content(walk(tree, "/.lineage/child@1/how")) == b"prune\n"
    text = tree.content(walk(tree, "/.lineage/child@1/info.json"))
    assert isinstance(text, bytes)
    info = json.loads(text)
    assert info["ref"] == "child@1" and info["derived_from_refs"] == ["base@1"]
    assert info["files"]["model.safetensors"]["size"] == 900
    assert tree.getattr(walk(tree, "/.lineage/child@1/info.json")).size == len(text)


def test_xattrs(tree: Tree, repo: Repo) -> None:
    v2 = repo.resolve("base@2")
    x = tree.xattrs(walk(tree, "/base/model.safetensors"))
    assert x["user.modelfs.version"] == v2.id.encode()
    assert x["user.modelfs.parents"] == repo.resolve("base@1").id.encode()
    assert x["user.modelfs.parent_refs"] == b"base@1"
    assert x["user.modelfs.how"] == b"finetune"
    assert x["user.modelfs.blake3"] == v2.files["model.safetensors"].blake3_hex.encode()
    assert x["user.modelfs.format"] == v2.files["model.safetensors"].format.encode()
    d = tree.xattrs(walk(tree, "/base@1/deep"))
    assert d["user.modelfs.version"] == repo.resolve("base@1").id.encode()
    assert "user.modelfs.blake3" not in d
    assert tree.xattrs(walk(tree, "/.lineage/child@1"))["user.modelfs.how"] == b"prune"


def test_root_xattrs_come_from_the_adapter(repo: Repo) -> None:
    t = Tree(repo, root_xattrs=lambda: {"user.modelfs.pid": b"42"})
    assert t.xattrs(ROOT_INO) == {"user.modelfs.pid": b"42"}


def test_files_are_content_dirs_are_not(tree: Tree) -> None:
    with pytest.raises(FsError) as e:
        tree.content(walk(tree, "/base@1"))
    assert e.value.errno == errno.EISDIR
    with pytest.raises(FsError):
        tree.readlink(walk(tree, "/base@1/config.json"))
    assert not tree.is_writable(walk(tree, "/base"))  # no staging area: a read-only tree
    with pytest.raises(FsError):
        tree.node(10_000)


def test_commit_moves_the_head_and_queues_invalidations(tree: Tree, repo: Repo,
                                                        tmp_path: Path) -> None:
    head = walk(tree, "/base")
    old_file = walk(tree, "/base/model.safetensors")
    walk(tree, "/base/config.json")
    walk(tree, "/.versions/base")
    tree.take_pending()
    v3 = commit(repo, tmp_path, "base", {"model.safetensors": bytes(1300)})
    inv = tree.refresh(force=True)
    assert head in inv.inodes
    assert (head, "model.safetensors") in inv.entries and (head, "config.json") in inv.entries
    assert tree.take_pending().entries == inv.entries
    new_file = walk(tree, "/base/model.safetensors")
    assert new_file != old_file
    assert tree.getattr(new_file).size == 1300
    assert tree.getattr(old_file).size == 1200  # an open handle on the old inode still works
    assert names(tree, "/base") == ["model.safetensors"]
    assert tree.lookup(ROOT_INO, "base@3").ino == walk(tree, "/base@3")
    assert names(tree, "/.versions/base") == ["1", "2", "3"]
    assert tree.xattrs(head)["user.modelfs.version"] == v3.id.encode()
    assert walk(tree, "/base") == head  # the head directory keeps its inode


def test_new_model_appears(tree: Tree, repo: Repo, tmp_path: Path) -> None:
    commit(repo, tmp_path, "zeta", {"a": b"z"})
    inv = tree.refresh(force=True)
    assert ROOT_INO in inv.inodes
    assert names(tree, "/")[2:] == ["base", "child", "zeta"]


def test_refresh_is_throttled(repo: Repo, tmp_path: Path) -> None:
    now = [0.0]
    t = Tree(repo, refresh_interval=10.0, clock=lambda: now[0])
    commit(repo, tmp_path, "zeta", {"a": b"z"})
    assert "zeta" not in names(t, "/")
    now[0] = 11.0
    assert "zeta" in names(t, "/")


def test_versions_are_cached(tree: Tree, repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    walk(tree, "/base@1/config.json")
    calls = []
    real = repo.version
    monkeypatch.setattr(repo, "version", lambda vid: calls.append(vid) or real(vid))
    for _ in range(10):
        tree.getattr(walk(tree, "/base@1/config.json"))
    assert calls == []

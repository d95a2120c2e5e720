"""Everyday changes to the lineage (repo/history.py) on a real LMDB store: the ref grammar,
tags, checkout, annotate/reparent, rm, mv and prune, with fsck and gc after each."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkhelp import seeded

from modelfs.errors import Conflict, InvalidName, NotFound
from modelfs.lineage.refs import BackRef, HeadRef, IdRef, NumberRef, TagRef, mount_ref, parse_ref
from modelfs.lineage.search import Query
from modelfs.repo import Repo


@pytest.fixture
def lin(repo: Repo, tmp_path: Path) -> Repo:
    """m@1..m@4; kid@1 derived from m@2 (another model); solo@1."""
    for i in range(1, 5):
        repo.import_dir(seeded(tmp_path / f"m{i}", i), "m", infer_parent=False, message=f"step {i}")
    repo.import_dir(seeded(tmp_path / "kid", 10), "kid", parents=["m@2"], how="finetune")
    repo.import_dir(seeded(tmp_path / "solo", 20), "solo", infer_parent=False)
    return repo


@pytest.mark.parametrize(("text", "want"), [
    ("m", HeadRef("m")), ("m@3", NumberRef("m", 3)), ("m@-1", BackRef("m", 1)),
    ("m:best", TagRef("m", "best")), ("abcdef12", IdRef("abcdef12")),
])
def test_the_grammar_parses_every_form(text: str, want: object) -> None:
    assert parse_ref(text) == want


@pytest.mark.parametrize("text", ["m@0", "m@-0", "m@", "@1", "m@x", "m:", ":t", "m:12", "m/x", "", "m:a b"])
def test_the_grammar_refuses_the_rest_with_one_line(text: str) -> None:
    with pytest.raises(InvalidName) as e:
        parse_ref(text)
    assert "\n" not in str(e.value)
    assert mount_ref(text) is None  # and the mount does not show it either


def test_at_zero_is_refused_by_the_cli_and_absent_from_the_mount_alike(lin: Repo) -> None:
    with pytest.raises(InvalidName, match="start at 1"):
        lin.resolve("m@0")
    assert lin.resolve_mount("m@0") is None and lin.resolve_mount("m@-1") is None
    assert lin.resolve_mount("m@2") == lin.resolve("m@2")
    assert lin.resolve("m@-1").ref == "m@3"


def test_tags_name_versions_everywhere_a_ref_goes(lin: Repo) -> None:
    h = lin.history()
    v2 = lin.resolve("m@2")
    h.tag(v2, "best")
    assert lin.resolve("m:best") == v2 and lin.resolve_mount("m:best") == v2
    with pytest.raises(Conflict, match="already names m@2"):
        h.tag(lin.resolve("m@3"), "best")
    assert h.tag(lin.resolve("m@3"), "best", force=True) == v2.id
    assert [(m, t, v.ref) for m, t, v in h.tags()] == [("m", "best", "m@3")]
    h.untag("m", "best")
    with pytest.raises(NotFound, match="no tag 'best'"):
        lin.resolve("m:best")
    with pytest.raises(InvalidName):
        h.tag(v2, "12")


def test_checkout_makes_an_old_version_the_head_again_and_loses_nothing(lin: Repo, tmp_path: Path) -> None:
    old_head = lin.resolve("m")
    new = lin.history().checkout(lin.resolve("m@2"))
    assert new.ref == "m@5" and new.previous == old_head.id and new.how == "checkout"
    assert dict(new.files) == dict(lin.resolve("m@2").files)
    assert lin.resolve("m") == new and lin.resolve("m@4") == old_head
    with pytest.raises(Conflict, match="already holds"):
        lin.history().checkout(lin.resolve("m@2"))
    lin.drafts().stage_file("m", "extra.bin", seeded(tmp_path / "x", 99) / "config.json")
    with pytest.raises(Conflict, match="not committed yet"):
        lin.history().checkout(lin.resolve("m@1"))
    assert lin.maintenance().fsck().ok


def test_annotate_and_reparent_change_what_every_reader_sees_not_the_record(lin: Repo) -> None:
    h = lin.history()
    solo = lin.resolve("solo")
    h.annotate(solo, {"parents": [lin.resolve("m@4").id], "how": "finetune", "note": "reparent"})
    h.annotate(solo, {"set": {"lr": 0.001, "data": "wiki"}, "message": "found its parent"})
    for v in (lin.resolve("solo"), lin.version(solo.id),
              next(x for x in lin.all_versions() if x.id == solo.id)):
        assert v.derived_from == (lin.resolve("m@4").id,) and v.how == "finetune"
        assert v.provenance["lr"] == 0.001 and v.message == "found its parent"
        assert len(v.provenance["annotations"]) == 2
    assert solo.id in {c.id for c in lin.children(lin.resolve("m@4").id)}
    with lin.read_txn() as txn:
        assert lin.graph.record(txn, solo.id) == solo  # the record stays as it was
    assert Query(how="finetune", where={"data": "wiki"}).matches(lin.resolve("solo"))
    assert not Query(where={"lr": "0.01"}).matches(lin.resolve("solo"))
    with pytest.raises(Conflict, match="loop"):
        h.annotate(lin.resolve("m@1"), {"parents": [solo.id]})
    assert lin.maintenance().fsck().ok


def test_rm_refuses_to_orphan_and_force_keeps_history(lin: Repo) -> None:
    h = lin.history()
    with pytest.raises(Conflict, match="would orphan m@2: kid@1 derive"):
        h.remove("m")
    assert lin.resolve("m@4")  # nothing changed
    r = h.remove("m", force=True)
    assert sorted(r.removed) == ["m@1", "m@3", "m@4"] and list(r.kept_as_history) == ["m@2"]
    with pytest.raises(NotFound):
        lin.resolve("m")
    kid = lin.resolve("kid")
    kept = lin.version(kid.derived_from[0])  # still readable by id, as history
    assert kept.provenance["removed"] == "rm of m@2" and kept.previous is None
    report = lin.maintenance().fsck()
    assert report.ok and report.unreferenced_chunks > 0
    assert lin.maintenance().gc()["bytes_freed"] > 0
    assert lin.maintenance().fsck().ok and lin.maintenance().fsck().unreferenced_chunks == 0


def test_prune_keeps_the_last_and_the_tagged_and_splices_the_chain(lin: Repo) -> None:
    h = lin.history()
    h.tag(lin.resolve("m@1"), "first")
    with pytest.raises(Conflict, match="orphan m@2"):
        h.prune("m", keep_last=1, keep_tagged=True)
    r = h.prune("m", keep_last=1, keep_tagged=True, force=True)
    assert r.removed == ["m@3"] and list(r.kept_as_history) == ["m@2"]
    assert [v.ref for v in lin.versions("m")] == ["m@1", "m@4"]
    assert lin.resolve("m@4").previous == lin.resolve("kid").derived_from[0]  # m@2, kept as history
    assert lin.resolve("m:first").ref == "m@1"
    assert lin.maintenance().fsck().ok
    assert lin.maintenance().gc()["chunks_removed"] > 0
    with pytest.raises(Conflict, match="at least 1"):
        h.prune("m", keep_last=0)


def test_prune_without_dependents_and_without_tags(lin: Repo) -> None:
    r = lin.history().prune("solo", keep_last=1)
    assert r.removed == []
    lin.history().prune("kid", keep_last=1)
    h = lin.history()
    h.remove("kid")  # nobody derives from kid: removed outright
    r = h.prune("m", keep_last=2)
    assert sorted(r.removed) == ["m@1", "m@2"]
    assert [v.ref for v in lin.versions("m")] == ["m@3", "m@4"] and lin.resolve("m@3").previous is None
    assert lin.maintenance().fsck().ok


def test_mv_moves_names_numbers_and_tags(lin: Repo) -> None:
    h = lin.history()
    h.tag(lin.resolve("m@2"), "best")
    v4 = lin.resolve("m@4")
    assert h.rename("m", "model") == 4
    assert lin.resolve("model@4").id == v4.id and lin.resolve("model@4").ref == "model@4"
    assert lin.resolve("model:best").ref == "model@2"
    assert lin.version(lin.resolve("kid").derived_from[0]).ref == "model@2"
    with pytest.raises(NotFound):
        lin.resolve("m")
    with pytest.raises(Conflict, match="already exists"):
        h.rename("model", "kid")
    with pytest.raises(InvalidName):
        h.rename("model", "a@b")
    assert lin.maintenance().fsck().ok


def test_removed_versions_leave_no_index_entries_and_inference_still_works(lin: Repo, tmp_path: Path) -> None:
    solo = lin.resolve("solo")
    lin.history().remove("solo")
    with lin.read_txn() as txn:
        assert not [k for k in txn.keys("tsig") if bytes(k).endswith(solo.id.encode())]
        assert txn.get("sketch", b"v" + solo.id.encode()) is None
        assert not [k for k in txn.keys("children") if solo.id.encode() in bytes(k)]
    # a new import whose weights are solo's: inference must not reach the removed version
    v = lin.import_dir(seeded(tmp_path / "again", 20), "again")
    assert v.derived_from == () or all(p != solo.id for p in v.derived_from)
    lin.history().prune("m", keep_last=1, force=True)
    w = lin.import_dir(seeded(tmp_path / "again3", 3), "again3")
    assert all(lin.version(p) for p in w.derived_from)

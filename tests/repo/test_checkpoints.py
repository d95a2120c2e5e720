"""Trainer checkpoints in a draft become versions of the model, in step order (issue 14).

Through the repo's drafts (what the mount calls): Lightning's ``epoch=E-step=S.ckpt`` files
and transformers' ``checkpoint-N/`` directories, a changed checkpoint versioned again, a
removed one leaving its version, and files outside checkpoints over the newest one.
"""

from __future__ import annotations

from pathlib import Path

from modelfs.repo import Repo
from modelfs.repo.checkpoints import find, unit_of


def stage(repo: Repo, tmp_path: Path, model: str, path: str, data: bytes) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    repo.drafts().stage_file(model, path, src)


def test_unit_names() -> None:
    assert unit_of("checkpoint-500/model.safetensors") == ("checkpoint-500", 500)
    assert unit_of("checkpoint-500") is None  # a file of that name is no checkpoint directory
    assert unit_of("lightning_logs/version_0/checkpoints/epoch=1-step=20.ckpt") == (
        "lightning_logs/version_0/checkpoints/epoch=1-step=20.ckpt", 20)
    assert unit_of("sub/checkpoint-5/x") is None and unit_of("config.json") is None


def test_checkpoints_become_versions_in_step_order(repo: Repo, tmp_path: Path) -> None:
    d = repo.drafts()
    stage(repo, tmp_path, "run", "checkpoint-10/w.bin", b"ten")
    stage(repo, tmp_path, "run", "checkpoint-2/w.bin", b"two")
    stage(repo, tmp_path, "run", "checkpoint-2/config.json", b"{}")
    made = d.commit_versions("run")
    assert [(v.ref, v.provenance["step"]) for v in made] == [("run@1", 2), ("run@2", 10)]
    assert sorted(made[0].files) == ["config.json", "w.bin"] and sorted(made[1].files) == ["w.bin"]
    # versioned checkpoints stay in the directory as written, and are nothing pending
    draft = d.get("run")
    assert draft is not None and not draft.pending_files
    assert sorted(d.view("run")) == ["checkpoint-10/w.bin", "checkpoint-2/config.json",
                                     "checkpoint-2/w.bin", "w.bin"]
    assert d.commit_versions("run") == []
    assert "run" not in d.models()  # nothing pending: no draft to list (status, umount)
    with repo.read_txn() as txn:  # what gc keeps and fsck checks: the kept files too
        kept = dict(next(files for label, files in d.manifests(txn) if label == "draft run"))
    assert sorted(kept) == ["checkpoint-10/w.bin", "checkpoint-2/config.json", "checkpoint-2/w.bin"]
    # save_total_limit removes the old one: no version goes, none is made
    d.stage_remove("run", "checkpoint-2/w.bin")
    d.stage_remove("run", "checkpoint-2/config.json")
    assert d.commit_versions("run") == [] and len(repo.versions("run")) == 2
    assert sorted(d.view("run")) == ["checkpoint-10/w.bin", "w.bin"]
    # a file outside the checkpoints goes over the newest one; a Lightning checkpoint file
    stage(repo, tmp_path, "run", "README.md", b"notes")
    stage(repo, tmp_path, "run", "ckpts/epoch=0-step=30.ckpt", b"thirty")
    made = d.commit_versions("run")
    assert [v.provenance.get("step") for v in made] == [30, None]
    assert sorted(made[0].files) == ["epoch=0-step=30.ckpt"]
    assert sorted(made[1].files) == ["README.md", "epoch=0-step=30.ckpt"]
    # a checkpoint written again is versioned again
    stage(repo, tmp_path, "run", "checkpoint-10/w.bin", b"ten, again")
    (v,) = d.commit_versions("run")
    assert v.provenance["checkpoint"] == "checkpoint-10" and v.ref == "run@5"
    stage(repo, tmp_path, "run", "notes.txt", b"more")  # over a head holding a .ckpt file
    (v,) = d.commit_versions("run")
    assert v.ref == "run@6" and "step" not in v.provenance
    assert find(d.view("run")).keys() == {"checkpoint-10", "ckpts/epoch=0-step=30.ckpt"}

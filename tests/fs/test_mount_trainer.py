"""Checkpoints of a real ``transformers.Trainer`` become versions; a PEFT adapter gets its base.

A tiny BERT (made here: hidden 32, 2 layers) is trained for 6 steps on CPU by a real
``Trainer`` whose ``output_dir`` is a model directory in the mount (``save_steps=2``,
``save_total_limit=2``): ``run@1..@3`` are its checkpoints in step order, each loadable by
``from_pretrained(<mnt>/run@<n>)``, with the step in their provenance, and the checkpoint
the trainer deleted is still a version.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mounthelp import Mounted, empty_store, module_mount, wait_for, wait_ref
from safetensors.torch import save_file

from modelfs.repo import Repo

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def tstore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return empty_store(tmp_path_factory, "tstore")


@pytest.fixture(scope="module")
def tmount(tstore: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    yield from module_mount(tstore, tmp_path_factory, "tmnt")


class Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A fixed toy classification set: token ids and labels, the same every run."""

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 100, (n, 12), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                "labels": self.labels[i]}


def test_trainer_checkpoints_become_versions_in_step_order(tmount: Mounted, tstore: Path) -> None:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    model = BertForSequenceClassification(cfg)
    out = tmount.path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=6, save_steps=2, save_total_limit=2,
                             per_device_train_batch_size=8, learning_rate=1e-3, report_to="none",
                             logging_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0,
                             disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Tokens()).train()
    wait_ref(out, "run@3", timeout=30)
    # the trainer kept its two newest checkpoints; the head shows them as it wrote them
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-4", "checkpoint-6"]
    with Repo.open(tstore) as repo:
        vs = repo.versions("run")
        assert [(v.provenance.get("step"), v.provenance.get("checkpoint")) for v in vs] == [
            (2, "checkpoint-2"), (4, "checkpoint-4"), (6, "checkpoint-6")]
        assert all("model.safetensors" in v.files and "config.json" in v.files for v in vs)
        assert not any("/" in p for v in vs for p in v.files)  # the checkpoint's own files
        head = repo.resolve("run")
    assert head.ref == "run@3"
    # checkpoint-2 was deleted by save_total_limit; its version loads, with step 2's weights
    first = BertForSequenceClassification.from_pretrained(tmount.path / "run@1")
    again = BertForSequenceClassification.from_pretrained(tmount.path / "run@3")
    last = BertForSequenceClassification.from_pretrained(out / "checkpoint-6")
    w = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(again.state_dict()[w], last.state_dict()[w])
    assert not torch.equal(first.state_dict()[w], last.state_dict()[w])
    state = json.loads((tmount.path / "run@2" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (out / "model.safetensors").exists()  # the head's top shows the newest checkpoint


def test_a_peft_adapter_saved_into_the_mount_gets_its_base(tmount: Mounted, tstore: Path) -> None:
    base = tmount.path / "basebert"
    base.mkdir()
    save_file({"encoder.q.weight": torch.randn(16, 16)}, str(base / "model.safetensors"))
    wait_ref(base, "basebert@1")
    ad = tmount.path / "my-adapter"
    ad.mkdir()
    # what peft's save_pretrained writes: the weights, then the config naming the base by path
    save_file({"base_model.model.encoder.q.lora_A.weight": torch.randn(4, 16),
               "base_model.model.encoder.q.lora_B.weight": torch.zeros(16, 4)},
              str(ad / "adapter_model.safetensors"))
    (ad / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q"],
        "base_model_name_or_path": str(base) + "/"}))
    wait_ref(ad, "my-adapter@1")
    with Repo.open(tstore) as repo:
        v = repo.resolve("my-adapter")
        b = repo.resolve("basebert@1")
        assert v.derived_from == (b.id,) and v.how == "lora"
    # a name that is no model of the store leaves the parent to inference
    other = tmount.path / "other-adapter"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"}))
    assert wait_for(lambda: (other / "adapter_config.json").exists(), 2)
    wait_ref(other, "other-adapter@1")
    with Repo.open(tstore) as repo:
        assert repo.resolve("other-adapter").how != "lora"

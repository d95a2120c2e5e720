"""The demo lineage builder makes real, loadable, correctly derived checkpoints.

Benchmarks and end-to-end tests trust these directories to be what their names say
(a fine-tune changed the weights, a cast is exactly ``parent.half()``, LoRA factors
reproduce the merged weights), so this checks those properties on a small real build.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

from modelfs.demo import lineage  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[lineage.LineageStep]:
    try:
        lineage.minilm_dir()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.fail(str(e))
    out = tmp_path_factory.mktemp("lineage")
    return lineage.build_lineage(out, steps=2, kinds={"minilm-ft@1", "minilm-fp16", "lora"}, seed=0)


def _by_ref(steps: list[lineage.LineageStep]) -> dict[str, lineage.LineageStep]:
    return {s.ref: s for s in steps}


def _weights(step: lineage.LineageStep) -> dict[str, torch.Tensor]:
    return st.load_file(str(step.dir / "model.safetensors"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_subset_pulls_in_parents_in_lineage_order(built: list[lineage.LineageStep]) -> None:
    assert [s.ref for s in built] == ["minilm@1", "minilm-ft@1", "minilm-lora@1", "minilm-fp16@1"]
    steps = _by_ref(built)
    assert steps["minilm@1"].parents == () and steps["minilm@1"].how == "import"
    assert steps["minilm-ft@1"].parents == ("minilm@1",)
    assert steps["minilm-fp16@1"].how == "cast"
    assert all(s.how in lineage.HOWS for s in built)


def test_base_is_a_byte_identical_copy(built: list[lineage.LineageStep]) -> None:
    base = _by_ref(built)["minilm@1"].dir
    shipped = lineage.minilm_dir()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt"):
        assert _digest(base / name) == _digest(shipped / name)


def test_finetune_changes_most_weights(built: list[lineage.LineageStep]) -> None:
    steps = _by_ref(built)
    base, ft = _weights(steps["minilm@1"]), _weights(steps["minilm-ft@1"])
    assert set(ft) <= set(base)
    changed = sum(int((ft[k] != base[k]).sum()) for k in ft)
    total = sum(t.numel() for t in ft.values())
    # AdamW with weight decay touches every trainable element: a real full fine-tune.
    assert changed / total > 0.9
    for name in lineage.TOKENIZER_FILES:
        assert (steps["minilm-ft@1"].dir / name).is_file()


def test_fp16_cast_is_base_half_bit_exact(built: list[lineage.LineageStep]) -> None:
    steps = _by_ref(built)
    base, half = _weights(steps["minilm@1"]), _weights(steps["minilm-fp16@1"])
    assert half and set(half) <= set(base)
    for name, tensor in half.items():
        assert tensor.dtype == torch.float16
        expected = base[name].half()
        assert torch.equal(tensor.view(torch.int16), expected.view(torch.int16)), name


def test_lora_factors_reproduce_the_merged_weights(built: list[lineage.LineageStep]) -> None:
    steps = _by_ref(built)
    lora = steps["minilm-lora@1"]
    assert lora.adapter_dir is not None
    factors = st.load_file(str(lora.adapter_dir / "adapter_model.safetensors"))
    base, merged = _weights(steps["minilm@1"]), _weights(lora)
    scale = lineage.LORA_ALPHA / lineage.LORA_RANK
    targets = [k for k in base if k.endswith((".query.weight", ".value.weight"))]
    assert len(targets) == 12
    for name in targets:
        stem = "base_model.model." + name.removesuffix(".weight")
        a, b = factors[f"{stem}.lora_A.weight"], factors[f"{stem}.lora_B.weight"]
        assert a.shape[0] == lineage.LORA_RANK and b.shape[1] == lineage.LORA_RANK
        assert torch.equal(merged[name], base[name] + (b @ a) * scale), name
        assert not torch.equal(merged[name], base[name])
    untouched = [k for k in merged if k not in targets]
    assert all(torch.equal(merged[k], base[k]) for k in untouched)


def test_built_dir_loads_with_from_pretrained(built: list[lineage.LineageStep]) -> None:
    from transformers import AutoModel, AutoTokenizer

    step = _by_ref(built)["minilm-ft@1"]
    model = AutoModel.from_pretrained(str(step.dir), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(step.dir), local_files_only=True)
    with torch.no_grad():
        out = model(**tok(["a checkpoint is a directory"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384
    expected = _weights(step)["encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(model.encoder.layer[0].attention.self.query.weight, expected)


def test_build_is_deterministic(built: list[lineage.LineageStep], tmp_path: Path) -> None:
    again = lineage.build_lineage(tmp_path / "again", steps=2, kinds={"minilm-ft@1"}, seed=0)
    first = _by_ref(built)["minilm-ft@1"].dir / "model.safetensors"
    second = _by_ref(again)["minilm-ft@1"].dir / "model.safetensors"
    assert st.load_file(str(first)).keys() == st.load_file(str(second)).keys()
    a, b = st.load_file(str(first)), st.load_file(str(second))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown lineage kind"):
        lineage.select({"no-such-kind"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        lineage.build_lineage(tmp_path / "full", kinds={"import"})
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_select_closes_over_parents() -> None:
    assert lineage.select({"minilm-avg"}) == [
        "minilm@1",
        "minilm-ft@1",
        "minilm-seed2@1",
        "minilm-avg@1",
    ]
    assert lineage.select({"minilm-bf16"})[-1] == "minilm-bf16@1"
    assert "minilm-ft@3" in lineage.select({"minilm-bf16"})
    assert len(lineage.select(None)) == 12

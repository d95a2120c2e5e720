"""The GPT-2 lineage builder (modelfs.demo.gpt) makes what the mount benchmark says it measures:
a model of the asked size whose every child is a real training step away from its parent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as st_numpy

from modelfs.demo.gpt import GptTrainer, gpt_config, gpt_lineage


@pytest.mark.parametrize("size_gb", [0.2, 1.1, 2.0])
def test_the_config_comes_to_the_asked_size(size_gb: float) -> None:
    c = gpt_config(size_gb)
    d, layers = c.n_embd, c.n_layer
    params = (c.vocab_size + c.n_positions) * d + layers * (12 * d * d + 13 * d) + 2 * d
    assert abs(params * 4 / 1e9 - size_gb) < 0.1 * size_gb


@pytest.mark.slow
def test_each_child_is_a_training_step_from_its_parent(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tr = GptTrainer(0.05)  # the smallest config: one layer, ~27 M parameters
    try:
        versions = list(gpt_lineage(tr, tmp_path, depth=1))
    finally:
        tr.close()
    assert [v.index for v in versions] == [0, 1] and versions[0].loss is None and versions[1].loss
    v0, v1 = (st_numpy.load_file(str(v.weights)) for v in versions)
    assert set(v0) == set(v1) and len(tr.step_s) == 2
    changed = sum(int(np.count_nonzero(v0[k] != v1[k])) for k in v0)
    total = sum(v.size for v in v0.values())
    assert changed > 0.9 * total  # AdamW moves (nearly) every weight, as a full fine-tune does

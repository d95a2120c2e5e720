"""A GPT-2 lineage of any size, built on the CPU: random init, then real AdamW steps.

The mount benchmark needs checkpoints of a gigabyte or more, larger than any real weights on
PyPI, changed the way a full fine-tune changes them (every element moves). So the base is a
GPT-2 model from a ``transformers`` config sized to the request (random init, fixed seed) and
each child is its parent after real optimiser steps on a tiny random-token batch, saved with
``save_pretrained`` as one safetensors file. Builds are deterministic for a seed on a given
machine (CPU kernels, same thread count).
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 0
LR = 5e-5
WEIGHT_DECAY = 0.01
BATCH = (2, 32)  # sequences x tokens of random ids, causal-LM loss
STEPS = 2  # real AdamW steps per derived version (~3 s each at 1.1 GB on 2 idle cores)
WEIGHTS = "model.safetensors"


def gpt_config(size_gb: float) -> Any:
    """A GPT-2 config whose fp32 weights come to about `size_gb` GB."""
    from transformers import GPT2Config

    vocab = 50257
    d = 1024 if size_gb >= 0.6 else 512
    pos = 1024
    per_layer = 12 * d * d + 13 * d
    target = size_gb * 1e9 / 4
    layers = max(1, round((target - (vocab + pos) * d - 2 * d) / per_layer))
    return GPT2Config(vocab_size=vocab, n_positions=pos, n_embd=d, n_layer=layers, n_head=d // 64,
                      tie_word_embeddings=True)


class GptTrainer:
    """A GPT-2 LM and its AdamW optimiser; `step()` is `STEPS` real training steps."""

    def __init__(self, size_gb: float) -> None:
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.manual_seed(SEED)
        self.torch = torch
        self.config = gpt_config(size_gb)
        self.model = GPT2LMHeadModel(self.config)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.gen = torch.Generator().manual_seed(SEED + 1)
        self.step_s: list[float] = []  # seconds of every optimiser step taken

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        c = self.config
        return (f"GPT2LMHeadModel n_layer={c.n_layer} n_embd={c.n_embd} n_head={c.n_head} "
                f"vocab={c.vocab_size} n_positions={c.n_positions} (tied lm_head)")

    @staticmethod
    def derivation() -> str:
        return (f"each child = previous after {STEPS} real AdamW steps (lr {LR}, wd {WEIGHT_DECAY}, batch "
                f"{BATCH[0]}x{BATCH[1]} random tokens, causal-LM loss); base = random init seed {SEED}")

    def step(self) -> float:
        """STEPS real AdamW steps; returns the last loss."""
        loss = 0.0
        for _ in range(STEPS):
            t0 = time.perf_counter()
            ids = self.torch.randint(0, self.config.vocab_size, BATCH, generator=self.gen)
            out = self.model(input_ids=ids, labels=ids)
            out.loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            loss = out.loss.item()
            self.step_s.append(time.perf_counter() - t0)
        return loss

    def save(self, dest: Path) -> float:
        """`save_pretrained` into `dest` (replaced), one safetensors file; returns the seconds."""
        if dest.exists():
            shutil.rmtree(dest)
        t0 = time.perf_counter()
        self.model.save_pretrained(dest, max_shard_size="1000GB")
        return time.perf_counter() - t0

    def close(self) -> None:
        del self.model, self.opt
        gc.collect()


@dataclass(frozen=True)
class GptVersion:
    """One saved version: v0 is the random init, v<i> is i rounds of `STEPS` steps later."""

    index: int
    dir: Path
    save_s: float
    loss: float | None  # the last training loss (None for the base)

    @property
    def weights(self) -> Path:
        return self.dir / WEIGHTS


def gpt_lineage(trainer: GptTrainer, out: Path, depth: int) -> Iterator[GptVersion]:
    """Save v0 .. v<depth> under `out` one after another; the caller may delete each once used."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(depth + 1):
        loss = trainer.step() if i else None
        d = out / f"v{i}"
        yield GptVersion(i, d, trainer.save(d), loss)

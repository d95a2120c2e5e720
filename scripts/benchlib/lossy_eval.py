"""Held-out evaluation of a MiniLM checkpoint for the lossy benchmark (and its gate's test).

The held-out metric is a contrastive loss on sentence pairs the lineage never trained on:
mean-pooled embeddings of each sentence and its paraphrase, cosine similarity over the
batch at temperature 0.05, cross entropy with the pairs as targets (the lineage's own
SimCSE-style objective, in eval mode so it is deterministic). ``embeddings`` gives the
sentence embeddings for the cosine-with-the-original check.

    python scripts/benchlib/lossy_eval.py DIR     # prints {"heldout_loss": ...}, the gate's test
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PAIRS = (
    ("The river burst its banks after a week of storms.", "Days of heavy storms made the river flood."),
    ("She baked a lemon cake for her grandmother.", "A lemon cake was made for the grandmother."),
    ("The train to the airport leaves every ten minutes.", "Airport trains depart at ten-minute intervals."),
    ("Quantum computers use qubits instead of bits.", "Instead of bits, quantum machines rely on qubits."),
    ("The goalkeeper saved a penalty in the final minute.", "In the last minute the keeper stopped a penalty."),
    ("Glaciers are retreating faster than expected.", "Ice sheets are melting more quickly than forecast."),
    ("He repaired the bicycle with an old spanner.", "Using an old wrench, he fixed the bike."),
    ("The orchestra rehearsed the symphony all afternoon.", "All afternoon the musicians practised the symphony."),
    ("Bees pollinate many of the crops we eat.", "Much of our food depends on bees for pollination."),
    ("The server crashed because the disk was full.", "A full disk brought the server down."),
    ("Tourists crowded the old square at noon.", "At midday the historic square was packed with visitors."),
    ("The novel won a prize for its first chapter.", "Its opening chapter earned the book an award."),
)


def load(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32).eval()
    tok_dir = path if (path / "tokenizer.json").is_file() else _base_dir()
    return model, AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


def _base_dir() -> Path:
    from modelfs.demo.lineage import minilm_dir

    return minilm_dir()


def embeddings(model: Any, tok: Any) -> Any:
    """Mean-pooled embeddings of every held-out sentence (both halves of each pair), float64."""
    import torch

    texts = [a for a, _ in PAIRS] + [b for _, b in PAIRS]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).double()


def heldout_loss(emb: Any) -> float:
    import torch
    import torch.nn.functional as F

    n = len(PAIRS)
    a, b = emb[:n], emb[n:]
    sim = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1) / 0.05
    return float(F.cross_entropy(sim, torch.arange(n)))


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    model, tok = load(Path(argv[0]))
    print(json.dumps({"heldout_loss": heldout_loss(embeddings(model, tok))}))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The demo's tests-over-the-lineage part: a real check run on every version, then a
regression brought into the middle of a chain of real training steps, found by bisect.

Called by scripts/demo.py on its store (after its real MiniLM lineage is imported); runs on
its own too: `python scripts/demo_checks.py --workdir DIR` imports the shipped MiniLM into a
new store there first. Every step is the real `modelfs` command line.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from demo_support import run, standalone  # beside this script, on sys.path

# The check: an embedding-similarity test on the version's own files ({path}, read-only in a
# mount of the store): a paraphrase pair must be closer than an unrelated sentence by a margin.
CHECK = r'''
import json, sys
import torch
from transformers import AutoModel, AutoTokenizer
path = sys.argv[1]
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
s = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "Stock markets fell sharply today."]
x = tok(s, padding=True, return_tensors="pt")
with torch.no_grad():
    h = model(**x).last_hidden_state
m = x["attention_mask"].unsqueeze(-1).float()
e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
pair, other = float(e[0] @ e[1]), float(e[0] @ e[2])
print(json.dumps({"margin": round(pair - other, 4), "pair": round(pair, 4)}))
sys.exit(0 if pair - other > 0.2 else 1)
'''

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
BROKEN_AT = 3  # chain version that brings the regression in (1-based)


def train_step(src: Path, dest: Path, seed: int, broken: bool) -> None:
    """One real AdamW step (contrastive, on mean-pooled embeddings) saved with save_pretrained.

    ``broken`` is the regression: a "conversion" that zeroes the last LayerNorm's weights,
    so every token leaves the encoder as the same vector (it still loads and runs).
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    tok = transformers.AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(src, local_files_only=True, dtype=torch.float32)
    batch = tok(["checkpoints under version control", "versions of a model, tested",
                 "a lineage that finds its own bugs", "the weather was fine"],
                return_tensors="pt", padding=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    a = model(**batch).last_hidden_state.mean(1)
    b = model(**batch).last_hidden_state.mean(1)
    sim = torch.nn.functional.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1) / 0.05
    torch.nn.functional.cross_entropy(sim, torch.arange(len(a))).backward()
    opt.step()
    if broken:
        with torch.no_grad():
            model.encoder.layer[-1].output.LayerNorm.weight.zero_()
    model.save_pretrained(dest)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)


def tests_and_bisect(work: Path, env: dict[str, str], base_model: str = "minilm-ft") -> None:
    """Add a real test, run it over the lineage (a table), then bisect a regression."""
    print("\n== tests over the lineage: an embedding-similarity check on every version, through a mount")
    check = work / "similarity_check.py"
    check.write_text(CHECK)
    run("test", "add", "similar", "--cmd", f"{shlex.quote(sys.executable)} {shlex.quote(str(check))} {{path}}",
        "--timeout", "300", env=env)
    run("test", "run", "--jobs", "2", env=env, ok=(0, 1))
    run("test", "run", env=env, ok=(0, 1))  # everything known: nothing runs again

    print(f"\n== a chain of real training steps on {base_model}; step {BROKEN_AT} brings a regression in")
    chain = work / "chain"
    chain.mkdir(exist_ok=True)
    src = work / "export-base"
    if src.exists():
        shutil.rmtree(src)
    run("export", base_model, str(src), env=env)
    for i in range(1, 6):
        dest = chain / f"v{i}"
        if dest.exists():
            shutil.rmtree(dest)
        train_step(src, dest, seed=i, broken=i == BROKEN_AT)
        how, msg = ("convert", "fuse LayerNorm for export") if i == BROKEN_AT else ("finetune", f"step {i}")
        extra = ["--parent", base_model] if i == 1 else []
        run("import", str(dest), "--model", "minilm-chain", "--how", how, "-m", msg, *extra, env=env)
        src = dest
    run("bisect", "similar", "minilm-chain", env=env)
    run("test", "results", env=env)
    run("lineage", env=env)
    svg = work / "lineage.svg"
    run("lineage", "--svg", str(svg), env=env)


def main() -> int:
    work, env = standalone(__doc__, "modelfs-demo-checks-")
    store = work / "store"
    from modelfs.demo.lineage import minilm_dir

    if store.exists():
        shutil.rmtree(store)
    run("init", env=env)
    run("import", str(minilm_dir()), "--model", "minilm", "--how", "import", env=env)
    tests_and_bisect(work, env, base_model="minilm")
    print(f"\ndone; store in {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

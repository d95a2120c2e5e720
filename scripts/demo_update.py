"""The demo's cascading-update part: recipes on descendants of the base model, a new base
version, then `modelfs update` re-deriving every descendant that has a recipe by real CPU
training (a fine-tune, a partial fine-tune, and a merge below the fine-tune: depth 2).

Called by scripts/demo.py on its store (after its real MiniLM lineage is imported and the
checks part has run, so the lineage's test runs on every new version); runs on its own too:
`python scripts/demo_update.py --workdir DIR` imports the shipped MiniLM and a small real
lineage below it into a new store there first. Every step is the real `modelfs` command line.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from demo_support import BIN, standalone  # beside this script, on sys.path
from demo_support import run as run_shown

# The fine-tune recipe: loads {parent} (a read-only directory of a mount of the store) with
# transformers, takes a few real AdamW steps of unsupervised SimCSE with a fixed seed, and
# save_pretrained()s into {out}. Deterministic for a given parent, seed and thread count.
FINETUNE = r'''
import argparse, shutil, time
from pathlib import Path
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser(description="a few AdamW steps (SimCSE) from PARENT into OUT")
ap.add_argument("parent", type=Path)
ap.add_argument("out", type=Path)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--steps", type=int, default=2)
ap.add_argument("--lr", type=float, default=5e-5)
ap.add_argument("--last-layers", type=int, default=0, help="train only the last N encoder layers")
a = ap.parse_args()
t0 = time.time()
torch.set_num_threads(1)
torch.manual_seed(a.seed)
tok = AutoTokenizer.from_pretrained(a.parent, local_files_only=True)
model = AutoModel.from_pretrained(a.parent, local_files_only=True, dtype=torch.float32)
if a.last_layers:
    n = model.config.num_hidden_layers
    keep = tuple(f"encoder.layer.{i}." for i in range(n - a.last_layers, n))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(keep))
params = [p for p in model.parameters() if p.requires_grad]
sentences = ["The cat sat quietly on the warm windowsill.",
             "Stock markets fell sharply after the interest rate announcement.",
             "She tuned the old guitar before the evening concert.",
             "The compiler reported an error on line forty two.",
             "The spacecraft entered orbit around the red planet.",
             "A checkpoint stores the weights of a trained neural network."]
x = tok(sentences, padding=True, return_tensors="pt")
m = x["attention_mask"].unsqueeze(-1).float()
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
model.train()
for step in range(a.steps):
    e1 = (model(**x).last_hidden_state * m).sum(1) / m.sum(1)
    e2 = (model(**x).last_hidden_state * m).sum(1) / m.sum(1)
    sim = F.cosine_similarity(e1.unsqueeze(1), e2.unsqueeze(0), dim=-1) / 0.05
    loss = F.cross_entropy(sim, torch.arange(len(sentences)))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    print(f"step {step + 1}: loss {loss.item():.4f}")
model.save_pretrained(a.out)
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (a.parent / name).is_file():
        shutil.copyfile(a.parent / name, a.out / name)
print(f"fine-tuned {a.parent.name} -> {a.out} ({len(params)} tensors trained) in {time.time() - t0:.1f} s")
'''

# The merge recipe: a uniform weight average of its parents ({parents}, in the order of the
# model's provenance edges), tensor by tensor in float32, config and tokenizer from the first.
AVERAGE = r'''
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file

out, parents = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
states = [load_file(str(p / "model.safetensors")) for p in parents]
avg = {}
for name, t in states[0].items():
    if t.is_floating_point():
        avg[name] = (sum(s[name].float() for s in states) / len(states)).to(t.dtype).contiguous()
    else:
        avg[name] = t.contiguous()
save_file(avg, str(out / "model.safetensors"), metadata={"format": "pt"})
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (parents[0] / name).is_file():
        shutil.copyfile(parents[0] / name, out / name)
print(f"averaged {len(avg)} tensors of {', '.join(p.name for p in parents)}")
'''


def run(*args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> str:
    """stdout and stderr together, in the order written (progress lines between report lines)."""
    return run_shown(*args, env=env, ok=ok, merged=True)


def quiet(*args: str, env: dict[str, str]) -> str:
    """A modelfs command whose output the demo reads rather than shows."""
    return subprocess.run([str(BIN), *args], env=env, check=True, capture_output=True, text=True).stdout


def cascading_update(work: Path, env: dict[str, str], base_model: str = "minilm",
                     finetune: str = "minilm-seed2", partial: str = "minilm-partial",
                     merged: str = "minilm-avg") -> None:
    """Recipes for three descendants of `base_model`, a new version of it, and `update`."""
    print(f"\n== cascading update: recipes for {finetune}, {partial} and {merged}, a new {base_model}, "
          f"then `modelfs update {base_model}` re-derives them by real CPU training")
    recipes = work / "recipes"
    recipes.mkdir(exist_ok=True)
    (recipes / "finetune.py").write_text(FINETUNE)
    (recipes / "average.py").write_text(AVERAGE)
    py = shlex.quote(sys.executable)
    ft = f"{py} {shlex.quote(str(recipes / 'finetune.py'))}"
    run("recipe", "set", finetune, "--cmd", f"{ft} {{parent}} {{out}} --seed 2", "--timeout", "600", env=env)
    run("recipe", "set", partial, "--cmd", f"{ft} {{parent}} {{out}} --seed 4 --last-layers 2 --lr 1e-4",
        "--timeout", "600", env=env)
    run("recipe", "set", merged, "--cmd", f"{py} {shlex.quote(str(recipes / 'average.py'))} {{out}} {{parents}}",
        "--timeout", "600", env=env)
    run("recipe", "list", env=env)

    print(f"\n== a new version of {base_model}: one real AdamW step on its head, imported as its next version")
    from demo_checks import train_step  # beside this script, on sys.path
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    src, dest = work / "update-base", work / "update-base-new"
    for d in (src, dest):
        if d.exists():
            shutil.rmtree(d)
    run("export", base_model, str(src), env=env)
    t = time.time()
    train_step(src, dest, seed=7, broken=False)
    print(f"one AdamW step on {base_model}: {time.time() - t:.1f} s")
    run("import", str(dest), "--model", base_model, "--how", "finetune", "-m", "upstream: one more step", env=env)

    run("update", base_model, "--dry-run", env=env)
    run("update", base_model, "--jobs", "2", "--gate", env=env)
    run("update", base_model, "--dry-run", env=env)  # right after: everything is up to date
    run("lineage", env=env)
    run("log", merged, env=env)
    head = json.loads(quiet("show", merged, "--json", env=env))
    run("show", head["ref"], env=env)  # its provenance: the recipe as run, the cascade
    run("diff", f"{finetune}@-1", finetune, "--stat", env=env)


def main() -> int:
    work, env = standalone(__doc__, "modelfs-demo-update-")
    store = work / "store"
    from modelfs.demo.lineage import build_lineage

    lineage = work / "lineage"
    if lineage.exists():
        shutil.rmtree(lineage)
    steps = build_lineage(lineage, steps=1, kinds=["minilm-partial", "minilm-avg"])
    if store.exists():
        shutil.rmtree(store)
    run("init", env=env)
    for s in steps:
        extra = [a for p in s.parents for a in ("--parent", p)]
        run("import", str(s.dir), "--model", s.model, "--how", s.how, *extra, env=env)
    from demo_checks import CHECK  # the demo's embedding-similarity test gates the update

    check = work / "similarity_check.py"
    check.write_text(CHECK)
    run("test", "add", "similar", "--cmd", f"{shlex.quote(sys.executable)} {shlex.quote(str(check))} {{path}}",
        "--timeout", "300", env=env)
    cascading_update(work, env)
    print(f"\ndone; store in {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

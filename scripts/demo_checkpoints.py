"""The demo's checkpoints part: a real transformers Trainer writes its checkpoints into the
mount, and each checkpoint is a version of the run (docs/mount.md, "Trainer checkpoints").

Called by scripts/demo.py on its store: ``checkpoints_into_mount(work, env, base="minilm")``
fine-tunes the mounted ``minilm`` head for 6 steps on CPU with ``save_steps=2`` and
``save_total_limit=2`` into ``<mnt>/minilm-run``; then ``modelfs log`` lists run@1..@3 with
their steps, ``modelfs lineage`` shows the run as one line, and ``modelfs lineage --png``
draws the picture. Runs on its own too: ``python scripts/demo_checkpoints.py --workdir DIR``
makes a store there holding a tiny BERT (made from a config) and trains that instead.
Every step is the real ``modelfs`` command line; the trainer runs in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from demo_support import run, standalone  # beside this script, on sys.path

# Fine-tunes BASE (a directory: a head in the mount) as a sequence classifier on a fixed toy
# task with a real transformers Trainer whose output_dir is OUT (a model directory in the mount).
TRAIN = r'''
import sys, torch
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments
from transformers.utils import logging
logging.set_verbosity_error()
base, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
vocab = model.config.vocab_size
class Toy(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1000 % vocab, vocab, (32, 16), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(16, dtype=torch.long),
                "labels": self.labels[i]}
args = TrainingArguments(output_dir=out, max_steps=6, save_steps=2, save_total_limit=2,
                         per_device_train_batch_size=8, learning_rate=5e-5, report_to="none",
                         logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=Toy()).train()
print("trained; checkpoints kept by the trainer:",
      sorted(p for p in __import__("os").listdir(out) if p.startswith("checkpoint-")))
'''


def wait_ref(head: Path, ref: str, timeout: float = 120.0) -> None:
    """Until the head shows ``ref`` (its user.modelfs.ref xattr): the checkpoints are versions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.getxattr(head, "user.modelfs.ref").decode() == ref:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{head} did not become {ref} within {timeout:.0f}s")


def checkpoints_into_mount(work: Path, env: dict[str, str], base: str = "minilm",
                           run_model: str | None = None) -> Path:
    """A Trainer checkpointing into the mount; the versions it made; the picture (returned)."""
    name = run_model or f"{base}-run"
    print(f"\n== checkpoints as versions: a real transformers Trainer fine-tunes {base} "
          f"(6 steps, save_steps=2, save_total_limit=2) with output_dir in the mount")
    mnt = work / "mnt-checkpoints"
    mnt.mkdir(exist_ok=True)
    run("mount", str(mnt), env=env)
    try:
        n = 2
        while (mnt / name).exists():  # a rerun on the same store: a new run model
            name = f"{run_model or f'{base}-run'}-{n}"
            n += 1
        t = time.time()
        r = subprocess.run([sys.executable, "-c", TRAIN, str(mnt / base), str(mnt / name)],
                           env=env, capture_output=True, text=True)
        print(r.stdout, end="")
        if r.returncode != 0:
            raise SystemExit(f"the trainer failed: {r.stderr.strip()[-2000:]}")
        wait_ref(mnt / name, f"{name}@3")
        print(f"   trained and committed in {time.time() - t:.1f} s")
        print(f"$ ls {mnt / name}")
        print("  ".join(sorted(os.listdir(mnt / name))))
        info = json.loads(os.getxattr(mnt / name, "user.modelfs.committed"))
        print(f"user.modelfs.committed: {info['ref']} [{info['why']}], versions {info['versions']}")
        run("log", name, env=env)
        run("show", f"{name}@1", env=env)
    finally:
        run("umount", str(mnt), env=env)
    run("lineage", env=env)
    png = work / "lineage.png"
    run("lineage", "--png", str(png), "--svg", str(work / "lineage.svg"), env=env)
    return png


def _tiny_store(work: Path, env: dict[str, str]) -> None:
    """A store holding a tiny BERT made from a config (standalone runs need no download)."""
    from transformers import BertConfig, BertModel

    src = work / "tiny-bert"
    cfg = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(src)
    run("init", env=env)
    run("import", str(src), "--model", "tiny-bert", "-m", "a tiny BERT from a config", env=env)


def main() -> int:
    work, env = standalone(__doc__, "modelfs-demo-ckpt-")
    _tiny_store(work, env)
    png = checkpoints_into_mount(work, env, base="tiny-bert", run_model="run")
    print(f"\ndemo done; store and picture in {work} ({png.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job: a real model's lineage built by CPU training, imported, mounted and used.

Run through `bash scripts/demo.sh` (which installs everything first). Every step uses the
real `modelfs` command line, as a user would.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3
from demo_support import demo_env, run  # beside this script, on sys.path


def sh(cmd: str) -> None:
    print(f"\n$ {cmd}", flush=True)
    subprocess.run(cmd, shell=True, check=True)


def file_hash(p: Path) -> str:
    return blake3.blake3(p.read_bytes()).hexdigest()


def fine_tune_into(head: Path) -> None:
    """Load the head through the mount, take one AdamW step, save_pretrained back into it."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(head)
    model = transformers.AutoModel.from_pretrained(head)
    batch = tok(["a mounted checkpoint", "versions on write", "lineage as a filesystem"],
                return_tensors="pt", padding=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    emb = model(**batch).last_hidden_state.mean(1)
    loss = -torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)
    loss.backward()
    opt.step()
    t = time.time()
    model.save_pretrained(head)
    print(f"save_pretrained into {head}: {time.time() - t:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, help="where to build (default: a new temp dir)")
    ap.add_argument("--no-mount", action="store_true", help="skip the mounted part")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelfs-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    env = demo_env(store)

    from modelfs.demo.lineage import build_lineage

    print(f"== building a lineage of all-MiniLM-L6-v2 by real CPU training in {work}/lineage")
    t = time.time()
    steps = build_lineage(work / "lineage")
    print(f"   {len(steps)} versions in {time.time() - t:.0f} s")

    if store.exists():
        shutil.rmtree(store)
    run("init", env=env)
    for s in steps:
        extra = [a for p in s.parents for a in ("--parent", p)]
        run("import", str(s.dir), "--model", s.model, "--how", s.how, "-m", f"demo: {s.how}", *extra, env=env)
    run("lineage", env=env)
    run("du", env=env)
    run("log", "minilm-ft", env=env)

    if args.no_mount:
        return 0
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    run("mount", str(mnt), env=env)
    try:
        sh(f"ls -l {mnt}")
        sh(f"ls -l {mnt}/minilm-ft@1")
        sh(f"cat {mnt}/minilm-ft/config.json | head -5")
        first = next(s for s in steps if s.model == "minilm-ft")
        for name in ("model.safetensors", "config.json"):
            a, b = file_hash(first.dir / name), file_hash(mnt / "minilm-ft@1" / name)
            print(f"blake3 {name}: original {a[:16]} mounted {b[:16]} {'equal' if a == b else 'DIFFERENT'}")
            if a != b:
                return 1
        code = (
            "import torch, transformers as T;"
            f"tok=T.AutoTokenizer.from_pretrained('{mnt}/minilm-ft');"
            f"m=T.AutoModel.from_pretrained('{mnt}/minilm-ft');"
            "x=tok(['modelfs mounts every version'],return_tensors='pt');"
            "print('embedding from the mounted head:', m(**x).last_hidden_state.mean(1)[0,:4])"
        )
        sh(f"{sys.executable} -c \"{code}\"")

        print("\n== snapshot-on-write: one real training step, saved into the mounted head")
        fine_tune_into(mnt / "minilm-ft")
        time.sleep(2.5)  # the model commits once it has been quiet for the settle time (1 s)
        run("log", "minilm-ft", env=env)
        run("diff", "minilm-ft@3", "minilm-ft@4", "--stat", env=env)
        sh(f"ls -l {mnt}/.lineage/minilm-ft@4/parents")
    finally:
        run("umount", str(mnt), env=env)

    from demo_checkpoints import checkpoints_into_mount  # beside this script, on sys.path
    from demo_checks import tests_and_bisect
    from demo_everyday import everyday_use
    from demo_lossy import lossy_import
    from demo_remote import remote_demo
    from demo_update import cascading_update

    print("\n== checkpoints as versions: a real transformers Trainer writing into the mount")
    picture = checkpoints_into_mount(work, env, base="minilm")
    tests_and_bisect(work, env)  # a test run over the lineage, a regression found by bisect
    cascading_update(work, env)  # recipes on minilm's descendants, a new minilm, `modelfs update`
    print("\n== lossy storage, opt-in, behind an accuracy gate")
    lossy_import(work, env)
    print("\n== everyday verbs: tags, log filters, annotate and find, checkout")
    everyday_use(work, env)
    print("\n== a remote: push to S3 (SeaweedFS on loopback), lazy clone, mount, from_pretrained")
    remote_demo(work, env)
    print(f"\ndemo done; store and lineage in {work}; the lineage picture: {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

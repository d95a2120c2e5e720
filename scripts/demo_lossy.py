"""The demo's lossy part (issue 13): one real fine-tune imported lossily behind the accuracy gate.

`lossy_import(work, env)` runs on the demo's store after its lineage is imported: it defines a
held-out test (a contrastive loss on sentence pairs the lineage never trained on,
scripts/benchlib/lossy_eval.py), imports the lineage's first fine-tune again as a new model
`minilm-ft-lossy` with `--lossy --gate heldout`, and shows what the gate decided and the error
figures (`show`, `log`, `du`, `fsck`). Runs on its own too:
`python scripts/demo_lossy.py --workdir DIR` builds the two versions it needs there first.
Every step is the real `modelfs` command line.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from demo_support import run as run_shown
from demo_support import standalone

EVAL = Path(__file__).resolve().parent / "benchlib" / "lossy_eval.py"


def run(*args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> str:
    """stdout and stderr together, in the order written (progress lines between report lines)."""
    return run_shown(*args, env=env, ok=ok, merged=True)


def lossy_import(work: Path, env: dict[str, str], base: str = "minilm@1", finetune: str = "minilm-ft@1",
                 model: str = "minilm-ft-lossy") -> None:
    """Import `work/lineage/<finetune>` lossily as `model` below `base`, gated by a held-out loss."""
    print(f"\n== lossy storage behind an accuracy gate: {finetune} again, as {model}, stored lossily "
          f"only if its held-out loss moves < 0.5% and every tensor keeps > 90% of its change")
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(EVAL))} {{path}}"
    run("test", "add", "heldout", "--cmd", cmd, "--models", model, env=env)
    run("import", str(work / "lineage" / finetune), "--model", model, "--parent", base, "--how", "finetune",
        "--lossy", "--gate", "heldout", "-m", f"demo: {finetune}, lossy", env=env)
    run("show", model, env=env)
    run("log", model, env=env)
    run("du", env=env)
    run("fsck", env=env)


def main() -> int:
    work, env = standalone(__doc__, "modelfs-demo-lossy-")
    from modelfs.demo.lineage import build_lineage

    steps = build_lineage(work / "lineage", kinds={"minilm-ft@1"})
    run("init", env=env)
    for s in steps:
        run("import", str(s.dir), "--model", s.model, "--how", s.how,
            *[a for p in s.parents for a in ("--parent", p)], env=env)
    lossy_import(work, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())

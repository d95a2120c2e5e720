"""PEFT LoRA adapters: import a LoRA-derived version as its factors, losslessly.

`modelfs import --lora ADAPTER_DIR --parent BASE` reads a PEFT adapter directory
(`adapter_config.json` + `adapter_model.safetensors`) and either

- rebuilds the merged checkpoint from the base version (W + B @ A * scale, computed by the
  `lowrank` codec's deterministic order, which is also what CPU BLAS computes for small
  ranks), writes it to a staging file and commits it; or
- with a checkpoint directory SRC as well, imports SRC as saved (byte-exact, as always),
  offering the adapter's factors as hints for the adapted matrices.

Either way each adapted matrix is stored as its factors plus a residual (none when the
rebuild order matches), instead of a dense delta: what Git-Theta calls a low-rank update.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelfs.codecs.lowrank import predict
from modelfs.errors import ModelfsError, NotFound
from modelfs.lineage import FileEntry, Version
from modelfs.ops.commit import staging_dir
from modelfs.ops.updates import LowRankUpdate, UpdatePlan
from modelfs.repo import Repo, StoredInline, StoredTensor, source_files

PEFT_PREFIX = "base_model.model."
REBUILD_VARIANT = "fma"  # fused multiply-add in rank order: what CPU sgemm gives for small ranks


@dataclass(frozen=True)
class LoraFactor:
    module: str  # e.g. "encoder.layer.0.attention.self.query"
    a: np.ndarray  # rank x in
    b: np.ndarray  # out x rank


@dataclass
class Adapter:
    config: Mapping[str, Any]
    scale: float
    fan_in_fan_out: bool
    factors: dict[str, LoraFactor] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        keys = ("peft_type", "r", "lora_alpha", "target_modules", "use_rslora", "base_model_name_or_path")
        return {k: self.config[k] for k in keys if k in self.config} | {
            "scale": self.scale, "modules": len(self.factors)}


def _to_numpy(t: Any) -> np.ndarray:
    """A float32 numpy array from a torch tensor (any float dtype)."""
    import torch

    return t.detach().to(torch.float32).contiguous().numpy()


def read_adapter(path: Path) -> Adapter:
    """The adapter's config and factors; a clear error for anything this does not support."""
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise NotFound(f"{path} is not a PEFT adapter directory (no adapter_config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelfsError(f"{cfg_path}: not valid JSON ({e})") from None
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ModelfsError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("use_dora"):
        raise ModelfsError(f"{path}: DoRA adapters are not supported (they rescale weights)")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, int | float):
        raise ModelfsError(f"{path}: adapter_config.json needs integer r > 0 and lora_alpha")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ModelfsError(f"{path}: per-module rank_pattern/alpha_pattern are not supported")
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(weights))
    elif (path / "adapter_model.bin").is_file():
        import torch

        tensors = torch.load(str(path / "adapter_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise NotFound(f"{path}: no adapter_model.safetensors (or adapter_model.bin)")
    adapter = Adapter(cfg, float(scale), bool(cfg.get("fan_in_fan_out")))
    pending: dict[str, dict[str, np.ndarray]] = {}
    for key, t in tensors.items():
        for side in ("lora_A", "lora_B"):
            marker = f".{side}."
            if marker in key and key.endswith("weight"):
                module = key.split(marker)[0]
                module = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
                pending.setdefault(module, {})[side] = _to_numpy(t)
                break
        else:
            raise ModelfsError(f"{path}: adapter tensor {key!r} is not a LoRA A/B factor (embedding "
                               "adapters, trained biases and modules_to_save are not supported)")
    for module, ab in sorted(pending.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise ModelfsError(f"{path}: module {module!r} has only {', '.join(ab)}")
        a, b = ab["lora_A"], ab["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ModelfsError(f"{path}: {module}: factor shapes {a.shape} and {b.shape} do not chain")
        adapter.factors[module] = LoraFactor(module, a, b)
    if not adapter.factors:
        raise ModelfsError(f"{path}: the adapter holds no LoRA factors")
    return adapter


@dataclass(frozen=True)
class Target:
    path: str
    tensor: StoredTensor
    factor: LoraFactor

    def update(self, scale: float, fan_in_fan_out: bool, variant: str | None) -> LowRankUpdate:
        """Factors of the weight's change, oriented like the stored weight (rows x cols)."""
        b, a = self.factor.b, self.factor.a
        if fan_in_fan_out:  # Conv1D-style weights are stored (in, out): the change is (B A)^T
            b, a = a.T.copy(), b.T.copy()
        return LowRankUpdate(np.ascontiguousarray(b), np.ascontiguousarray(a), scale, variant, "adapter")


def find_targets(repo: Repo, base: Version, adapter: Adapter) -> list[Target]:
    """The base tensor each adapted module changes: `<module>.weight`, by name or dotted suffix."""
    tensors: list[tuple[str, StoredTensor]] = []
    for path, entry in sorted(base.files.items()):
        if entry.format == "safetensors":
            tensors += [(path, t) for t in repo.file_record(entry).tensors()]
    targets = []
    for module, f in adapter.factors.items():
        want = f"{module}.weight"
        hits = [(p, t) for p, t in tensors if t.name == want]
        if not hits:
            hits = [(p, t) for p, t in tensors if t.name.endswith("." + want) or want.endswith("." + t.name)]
        if len(hits) != 1:
            what = "no" if not hits else f"{len(hits)} ambiguous"
            raise ModelfsError(f"adapter module {module!r}: {what} matching tensor {want!r} in {base.ref}")
        path, t = hits[0]
        rows, cols = (f.a.shape[1], f.b.shape[0]) if adapter.fan_in_fan_out else (f.b.shape[0], f.a.shape[1])
        if len(t.shape) != 2 or t.shape != (rows, cols):
            raise ModelfsError(f"adapter module {module!r}: factors make {rows}x{cols}, but {base.ref}:"
                               f"{t.name} is {list(t.shape)}")
        if t.dtype.name not in ("F32", "F16", "BF16", "F64"):
            raise ModelfsError(f"{base.ref}:{t.name} is {t.dtype.name}; LoRA merges need float weights")
        targets.append(Target(path, t, f))
    return targets


def _rebuild_file(repo: Repo, entry: FileEntry, targets: dict[str, Target], adapter: Adapter,
                  dest: Path) -> None:
    """The base file with each target tensor replaced by W + B @ A * scale (header verbatim)."""
    rec = repo.file_record(entry)
    reader = repo.reader(rec)
    with open(dest, "wb") as f:
        for part in rec.parts:
            if isinstance(part, StoredInline):
                f.write(part.data)
                continue
            data = reader.read(part.offset, part.nbytes)
            tgt = targets.get(part.name)
            if tgt is not None:
                u = tgt.update(adapter.scale, adapter.fan_in_fan_out, REBUILD_VARIANT)
                data = predict(data, part.dtype, u.b, u.a, u.scale, 0, REBUILD_VARIANT).tobytes()
            f.write(data)


def import_lora(repo: Repo, adapter_dir: Path, parent: str, model: str, *, src: Path | None = None,
                message: str = "", how: str = "lora", provenance: Mapping[str, Any] | None = None,
                follow_symlinks: bool = False) -> Version:
    """A new version of `model` derived from `parent` by the adapter in `adapter_dir`.

    Without `src` the merged checkpoint is rebuilt from the parent; with `src` (the merged
    checkpoint as the user saved it) that directory is imported byte-exact and the adapter
    only tells the store how each adapted matrix was made.
    """
    base = repo.resolve(parent)
    adapter = read_adapter(Path(adapter_dir))
    targets = find_targets(repo, base, adapter)
    plan = UpdatePlan(repo.settings.chunk_elems)
    variant = REBUILD_VARIANT if src is None else None
    for t in targets:
        plan.add(t.path, t.tensor.name, t.update(adapter.scale, adapter.fan_in_fan_out, variant), t.tensor)
    prov = dict(provenance or {})
    prov["lora"] = adapter.summary() | {"adapter_dir": str(adapter_dir), "rebuilt": src is None}
    msg = message or f"LoRA adapter {Path(adapter_dir).name} on {base.ref}"
    with staging_dir(repo, "lora-") as tmp:
        if src is None:
            files: dict[str, Path] = {}
            keep = dict(base.files)
            by_path: dict[str, dict[str, Target]] = {}
            for t in targets:
                by_path.setdefault(t.path, {})[t.tensor.name] = t
            for i, (path, tmap) in enumerate(sorted(by_path.items())):
                dest = Path(tmp) / f"{i}"
                _rebuild_file(repo, base.files[path], tmap, adapter, dest)
                files[path] = dest
                keep.pop(path)
        else:
            files = source_files(src, follow_symlinks)  # links out of src refused, as in import
            keep = {}
            if not files:
                raise NotFound(f"{src} holds no files")
        return repo.commit_files(model, files, hints=plan.hint, parents=[base.id], how=how, message=msg,
                                 provenance=prov, infer_parent=False, keep=keep)

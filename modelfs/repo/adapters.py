"""A PEFT adapter saved as a new model names its base: that base is the model's parent.

``peft``'s ``save_pretrained`` writes ``adapter_config.json`` (with
``base_model_name_or_path``) beside ``adapter_model.safetensors``. When that name is a model
of this store (``bert``, ``bert@2``) or a path of one in a mount (``/mnt/models/bert@2``,
``/mnt/models/bert/``), the new model is derived from that version by ``lora``, instead of
from whatever parent inference would guess from the adapter's (unrelated-shaped) tensors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from modelfs.errors import ModelfsError
from modelfs.lineage import Version

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def base_name(src: Path) -> str | None:
    """``base_model_name_or_path`` of an adapter config file, or None (not one, unreadable)."""
    try:
        cfg = json.loads(src.read_bytes())
    except (OSError, ValueError):
        return None
    name = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    return name if isinstance(name, str) and name.strip() else None


def candidates(name: str) -> list[str]:
    """Refs ``name`` may mean: itself, and the last part of a (mount) path."""
    out = [name.strip()]
    last = Path(name.strip().rstrip("/")).name
    if last and last not in out:
        out.append(last)
    return out


def adapter_base(src: Path, resolve: Callable[[str], Version]) -> Version | None:
    """The store version an adapter config names as its base, or None."""
    name = base_name(src)
    if name is None:
        return None
    for ref in candidates(name):
        try:
            return resolve(ref)
        except (ModelfsError, ValueError):
            continue
    log.info("adapter base %r is not a model of this store; the parent is inferred", name)
    return None

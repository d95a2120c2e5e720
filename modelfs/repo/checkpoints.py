"""Checkpoints a trainer writes into a model's directory, each one a version of that model.

A training loop saves into ``<model>/checkpoint-<step>/`` (transformers' ``Trainer``,
``save_steps``) or ``<model>/.../epoch=<e>-step=<step>.ckpt`` (Lightning's
``ModelCheckpoint``). Each such checkpoint is a complete model of its own, so each becomes a
version of ``<model>`` whose files are the checkpoint's files (a Trainer checkpoint's
``config.json``, ``model.safetensors`` ... at the top of the version, so
``from_pretrained(<mnt>/<model>@<n>)`` loads it), in step order, with
``{"step": N, "checkpoint": "checkpoint-N"}`` in its provenance. The directory itself stays
in the model's draft, as the trainer wrote it (it reads its checkpoints back to rotate and
resume), and deleting it (``save_total_limit``) deletes no version.

Which names are checkpoints is a registry of patterns, not an if-chain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from modelfs.lineage import FileEntry
from modelfs.registry import Registry


@dataclass(frozen=True, slots=True)
class CheckpointPattern:
    """A naming scheme: ``pattern`` matches a checkpoint's unit (a directory or a file)."""

    name: str
    pattern: re.Pattern[str]
    is_dir: bool  # a directory of files (Trainer) or a single file (Lightning)


PATTERNS: Registry[CheckpointPattern] = Registry(
    "modelfs.checkpoints", "checkpoint naming", lambda p: p.name)
PATTERNS.register(CheckpointPattern("transformers", re.compile(r"checkpoint-(?P<step>\d+)"), True))
PATTERNS.register(CheckpointPattern(
    "lightning", re.compile(r"(?:.+/)?epoch=\d+-step=(?P<step>\d+)\.ckpt"), False))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    unit: str  # "checkpoint-500", or the path of a Lightning .ckpt file
    step: int
    files: dict[str, FileEntry]  # the version's files: paths inside the unit
    paths: dict[str, FileEntry]  # the same, by their paths in the model's directory


def unit_of(path: str) -> tuple[str, int] | None:
    """The checkpoint ``path`` belongs to (its unit and step), or None."""
    top = path.split("/", 1)
    for p in PATTERNS.all().values():
        if p.is_dir:
            m = p.pattern.fullmatch(top[0]) if len(top) == 2 else None
        else:
            m = p.pattern.fullmatch(path)
        if m is not None:
            return (top[0] if p.is_dir else path), int(m.group("step"))
    return None


def inside(unit: str, path: str) -> str:
    """``path`` as the checkpoint's version holds it."""
    return path[len(unit) + 1:] if path.startswith(unit + "/") else path.rsplit("/", 1)[-1]


def find(files: Mapping[str, FileEntry]) -> dict[str, Checkpoint]:
    """Every checkpoint among a directory's files, by unit."""
    units: dict[str, Checkpoint] = {}
    for path, entry in files.items():
        got = unit_of(path)
        if got is not None:
            c = units.setdefault(got[0], Checkpoint(got[0], got[1], {}, {}))
            c.files[inside(got[0], path)] = entry
            c.paths[path] = entry
    return units


def in_step_order(cps: list[Checkpoint]) -> list[Checkpoint]:
    return sorted(cps, key=lambda c: (c.step, c.unit))

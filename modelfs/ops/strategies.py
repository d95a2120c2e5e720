"""Merge strategies: a registry of named per-tensor functions (entry point group `modelfs.merges`).

A strategy sees one tensor at a time (A's, B's and the base's bytes, all of one dtype and
shape) and returns the merged bytes. The linear ones (weighted average, average of three,
task arithmetic) are defined by `modelfs.codecs.mix.combine`, the same function the `mix`
codec recomputes at decode, so their results are stored as a few weights and an all-zero
residual; they also report those weights (`mix_weights`) so the committer can say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from modelfs import numerics
from modelfs.codecs.mix import MixHint, TiesHint, can_combine, combine, task_vector, ties_combine
from modelfs.dtypes import DType
from modelfs.errors import ModelfsError
from modelfs.registry import Registry


@dataclass(frozen=True)
class TensorInputs:
    """One tensor's inputs: raw bytes of A, B and (if any) the base, all of `dtype` x `shape`."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    a: bytes
    b: bytes
    base: bytes | None
    # set by a strategy whose result a codec can recompute from the inputs' chunks:
    # (codec id, input sides in base order, EncodeContext.hint); the merge passes it on
    codec_hint: list[tuple[str, tuple[str, ...], Any]] = field(default_factory=list)

    def floats(self, which: str) -> np.ndarray:
        """float32 values (float64 for F64) of 'a', 'b' or 'base', shaped like the tensor."""
        raw = getattr(self, which)
        if raw is None:
            raise ModelfsError(f"{self.name}: no base tensor")
        return numerics.widen(raw, self.dtype, quiet_nans=True).reshape(self.shape)

    def to_bytes(self, values: np.ndarray) -> bytes:
        """float values rounded to the tensor's dtype (round to nearest even, as torch casts)."""
        v = np.ascontiguousarray(values, dtype=numerics.float_type(self.dtype))
        return numerics.narrow(v, self.dtype, quiet_nans=True).tobytes()


class MergeStrategy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_base(self) -> bool:
        """Whether the base version must hold the tensor."""
        ...

    @property
    def takes(self) -> str | None:
        """The side ("a", "b" or "base") a strategy copies unchanged; None for value merges."""
        ...

    def merge(self, t: TensorInputs, params: Mapping[str, float]) -> bytes:
        """The merged tensor's bytes (only called for float tensors whose inputs differ)."""
        ...


@dataclass(frozen=True)
class Take:
    """take-a / take-b / take-base: one side's tensor, bytes unchanged."""

    name: str
    takes: str
    needs_base: bool = False

    def merge(self, t: TensorInputs, params: Mapping[str, float]) -> bytes:
        raw = getattr(t, self.takes)
        if raw is None:
            raise ModelfsError(f"{t.name}: not in the base version")
        return bytes(raw)


class Linear(Protocol):
    def mix_weights(self, params: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """Which inputs, in which order, with which weights: the merge is sum(w_i * x_i)."""
        ...


@dataclass(frozen=True)
class WeightedAverage:
    """(1 - alpha) * A + alpha * B; alpha defaults to 0.5 (a uniform 'model soup')."""

    name: str = "weighted-average"
    needs_base: bool = False
    takes: str | None = None

    def mix_weights(self, params: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
        alpha = float(params.get("alpha", 0.5))
        return ("a", "b"), (1.0 - alpha, alpha)

    def merge(self, t: TensorInputs, params: Mapping[str, float]) -> bytes:
        return _linear(self, t, params)


@dataclass(frozen=True)
class Average3:
    """(A + B + base) / 3."""

    name: str = "average-3"
    needs_base: bool = True
    takes: str | None = None

    def mix_weights(self, params: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
        return ("a", "b", "base"), (1 / 3, 1 / 3, 1 / 3)

    def merge(self, t: TensorInputs, params: Mapping[str, float]) -> bytes:
        return _linear(self, t, params)


@dataclass(frozen=True)
class TaskArithmetic:
    """base + l * (A - base) + l * (B - base), computed as (1 - 2l) base + l A + l B; l = alpha, default 1."""

    name: str = "task-arithmetic"
    needs_base: bool = True
    takes: str | None = None

    def mix_weights(self, params: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
        lam = float(params.get("alpha", 1.0))
        return ("base", "a", "b"), (1.0 - 2.0 * lam, lam, lam)

    def merge(self, t: TensorInputs, params: Mapping[str, float]) -> bytes:
        return _linear(self, t, params)


def _linear(s: Linear, t: TensorInputs, params: Mapping[str, float]) -> bytes:
    names, weights = s.mix_weights(params)
    parts = [getattr(t, n) for n in names]
    if any(p is None for p in parts):
        raise ModelfsError(f"{t.name}: no base tensor")
    t.codec_hint.append(("mix", names, MixHint(tuple(weights))))
    return combine(parts, t.dtype, weights).tobytes()


@dataclass(frozen=True)
class Ties:
    """TIES-merging (Yadav et al. 2023): trim each task vector to its top `density` share by
    magnitude, elect a sign per element by the summed trimmed values, average the values
    that agree with it, add `alpha` times that to the base. density 0.2, alpha 1 by default."""

    name: str = "ties"
    needs_base: bool = True
    takes: str | None = None

    def merge(self, t: TensorInputs, params: Mapping[str, float]) -> bytes:
        density = float(params.get("density", 0.2))
        lam = float(params.get("alpha", 1.0))
        if not 0 < density <= 1:
            raise ModelfsError(f"ties: density must be in (0, 1], not {density}")
        if t.base is None:
            raise ModelfsError(f"{t.name}: no base tensor")
        thresholds = (trim_threshold(task_vector(t.a, t.base, t.dtype), density),
                      trim_threshold(task_vector(t.b, t.base, t.dtype), density))
        t.codec_hint.append(("ties", ("base", "a", "b"), TiesHint(thresholds, lam)))
        return ties_combine((t.base, t.a, t.b), t.dtype, thresholds, lam).tobytes()


def trim_threshold(tau: np.ndarray, density: float) -> float:
    """The magnitude of the ceil(density * n)-th largest |tau|: trimming keeps |tau| >= it."""
    flat = np.abs(tau).ravel()
    k = max(1, math.ceil(density * flat.size))
    if k >= flat.size:
        return 0.0
    return float(np.partition(flat, flat.size - k)[flat.size - k])


MERGES: Registry[MergeStrategy] = Registry("modelfs.merges", "merge strategy", lambda m: m.name)
register_merge = MERGES.register
get_merge = MERGES.get
registered_merges = MERGES.all


def is_numeric(dtype: DType) -> bool:
    """Whether value-merging strategies apply to this element type."""
    return can_combine(dtype)


for _s in (Take("take-a", "a"), Take("take-b", "b"), Take("take-base", "base", needs_base=True),
           WeightedAverage(), Average3(), TaskArithmetic(), Ties()):
    register_merge(_s)

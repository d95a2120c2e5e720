"""Lossy planning: the reconstruction a version's files become, and the figures the gate checks.

Lossy mode (docs/lossy.md) stores each changed float tensor as a quantised delta against its
parent's *reconstruction* (the parent chunks as stored, which are what a reader gets back),
with a step chosen per tensor from the data: the largest step whose reconstruction error stays
below ``aim`` times the tensor's own change from its parent (relative L2). The plan writes the
reconstructed files into a work directory; importing them with the plan's chunk hints stores
chunks whose decoded bytes are exactly those files, so file records, blake3 keys, `export`,
the mount and `fsck` all see the reconstruction and nothing else. Nothing is committed here:
the gate (ops/lossy.py) decides.

Kept exact, always: integer and fp8 tensors, blobs, tensors with no parent tensor of the same
type and chunking, unchanged tensors, and any tensor whose quantised delta would be no smaller
than its lossless delta.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import numpy as np

from modelfs import numerics
from modelfs.codecs import EncodeContext, choose_encoding
from modelfs.codecs.qdelta import QuantHint, lossy_dtype, new_zeros, quantise
from modelfs.dtypes import DType
from modelfs.formats import TensorPart, parse_file
from modelfs.repo.chunks import ChunkCache
from modelfs.repo.files import StoredTensor
from modelfs.repo.importer import ParentTensors, StoreSettings, chunk_bytes_for, mapped

CHANGE_LIMIT = 0.10  # check 2: a tensor's error must stay below this share of its change
SAMPLE = 1 << 15  # changed elements the step search looks at
SEARCH_STEPS = 11  # bisections of the bracket (a factor 256): the step to within 0.3%
MARGIN = 0.97  # the search aims this far under `aim`, so the full tensor lands below it
SHRINK = 0.7  # a step whose full error missed `aim` is retried this much finer
PRUNED = 100  # a child that zeroed at least 1 in this many elements is coded as a prune


@dataclass(frozen=True, slots=True)
class LossyHint:
    """A chunk hint for the importer (its ChunkHints shape: codec, bases, hint)."""

    codec: str
    bases: tuple[bytes, ...]
    hint: QuantHint


@dataclass(slots=True)
class TensorFigures:
    """What lossy mode did to one tensor, and by how much it moved it."""

    path: str
    name: str
    dtype: str
    numel: int
    stored: str  # "lossy", "exact" (kept bit for bit), "unchanged" or "inherited" (see `_tensor`)
    why: str = ""  # for "exact": the reason
    change: float = 0.0  # ||original - parent reconstruction||, L2
    error: float = 0.0  # ||reconstruction - original||, L2
    step: float | None = None
    lossy_bytes: int = 0  # quantised payloads (estimate of what is stored)
    exact_bytes: int = 0  # the lossless delta's payloads
    original: str = ""  # blake3 (128 bits, hex) of the original tensor bytes: a child equal to it inherits

    @property
    def key(self) -> str:
        """How figures name the tensor: its name, with its file's path unless model.safetensors."""
        return self.name if self.path == "model.safetensors" else f"{self.path}:{self.name}"

    @property
    def ratio(self) -> float:
        """error / change (0 for an exact tensor): what check 2 bounds."""
        return self.error / self.change if self.change > 0 else 0.0


@dataclass
class LossyPlan:
    """The files to store (reconstructions where a tensor went lossy) and the figures."""

    aim: float
    files: dict[str, Path] = field(default_factory=dict)
    hints: dict[tuple[str, str, int], tuple[LossyHint, ...]] = field(default_factory=dict)
    tensors: list[TensorFigures] = field(default_factory=list)

    def chunk_hints(self, path: str, name: str, index: int) -> Sequence[LossyHint]:
        return self.hints.get((path, name, index), ())

    @property
    def lossy(self) -> list[TensorFigures]:
        return [t for t in self.tensors if t.stored == "lossy"]

    @property
    def is_lossy(self) -> bool:
        """Whether any stored tensor differs from the original (lossy, or inherited from a lossy parent)."""
        return any(t.stored in ("lossy", "inherited") for t in self.tensors)

    def worst(self) -> TensorFigures | None:
        """The lossy tensor with the largest error / change."""
        return max(self.lossy, key=lambda t: t.ratio, default=None)

    def check_change(self, limit: float = CHANGE_LIMIT) -> bool:
        """Check 2 of the gate: every changed tensor's error below `limit` of its change."""
        return all(t.ratio < limit for t in self.lossy)

    def exact_note(self) -> str | None:
        """One line on what was kept exact and why (said once per import), or None."""
        why = Counter(t.why for t in self.tensors if t.stored == "exact")
        if not why:
            return None
        return "kept exact: " + "; ".join(f"{n} {w}" for w, n in sorted(why.items()))

    def figures(self) -> dict[str, Any]:
        """The plan's summary for the provenance: steps, errors, sizes, per-tensor figures."""
        lossy = self.lossy
        worst = self.worst()
        err2 = sum(t.error ** 2 for t in lossy)
        chg2 = sum(t.change ** 2 for t in lossy)
        steps = [t.step for t in lossy if t.step is not None]
        return {
            "aim": self.aim,
            "tensors_lossy": len(lossy),
            "tensors_exact": sum(t.stored == "exact" for t in self.tensors),
            "tensors_unchanged": sum(t.stored == "unchanged" for t in self.tensors),
            "tensors_inherited": sum(t.stored == "inherited" for t in self.tensors),
            "max_error_ratio": _r(worst.ratio) if worst else 0.0,
            "worst_tensor": worst.name if worst else None,
            "error_ratio": _r(math.sqrt(err2 / chg2)) if chg2 > 0 else 0.0,
            "step_min": _r(min(steps)) if steps else None,
            "step_max": _r(max(steps)) if steps else None,
            "lossy_bytes": sum(t.lossy_bytes for t in lossy),
            "exact_delta_bytes": sum(t.exact_bytes for t in lossy),
            "kept_exact": self.exact_note(),
            "per_tensor": {t.key: [_r(t.ratio), _r(t.step or 0.0)] for t in lossy},
            "originals": {t.key: t.original for t in self.tensors if t.original},
            "errors": {t.key: t.error for t in self.tensors if t.stored in ("lossy", "inherited") and t.error},
        }


def _r(x: float) -> float:
    return float(f"{x:.4g}")


def _values(buf: bytes | memoryview, dt: DType) -> np.ndarray:
    return numerics.widen(buf, dt).astype(np.float64)


@dataclass(frozen=True, slots=True)
class _Base:
    """A tensor's parent(s) matched for lossy coding: the first parent, and a merge's second."""

    first: StoredTensor
    second: StoredTensor | None


class LossyPlanner:
    """Plans a lossy version: per-tensor steps, reconstructions written into a work directory."""

    def __init__(self, cache: ChunkCache, settings: StoreSettings, workers: int | None = None) -> None:
        self._cache = cache
        self._settings = settings
        self._workers = workers or max(2, os.cpu_count() or 2)
        self._originals: dict[str, str] = {}
        self._errors: dict[str, float] = {}

    def plan(self, files: Mapping[str, Path], parents: list[ParentTensors], aim: float,
             workdir: Path, parent: Mapping[str, Any] | None = None) -> LossyPlan:
        """The reconstruction of `files` (written under `workdir`) at error ratio `aim`.

        `parent`: the first parent's lossy figures when it is lossy: its ``originals`` (tensor ->
        blake3 of the original bytes) and ``errors`` (tensor -> L2 of its reconstruction error).
        """
        plan = LossyPlan(aim)
        self._originals = dict((parent or {}).get("originals") or {})
        self._errors = {k: float(v) for k, v in ((parent or {}).get("errors") or {}).items()}
        for path, src in sorted(files.items()):
            with mapped(src) as mv:
                layout, _ = parse_file(path, mv)
                tensors = [p for p in layout.parts if isinstance(p, TensorPart)]
                if not tensors:
                    plan.tensors.append(TensorFigures(path, "", "blob", len(mv), "exact", "files that are not tensors"))
                    plan.files[path] = src
                    continue
                buf = bytearray(mv)
            with ThreadPoolExecutor(max_workers=self._workers) as pool:
                figs = list(pool.map(lambda p, b=buf, f=path: self._tensor(plan, f, p, b, parents, aim),
                                     tensors))
            plan.tensors.extend(figs)
            if any(f.stored in ("lossy", "inherited") for f in figs):
                dest = workdir / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(bytes(buf))
                os.chmod(dest, os.stat(src).st_mode & 0o777)
                plan.files[path] = dest
            else:
                plan.files[path] = src
        return plan

    # -- one tensor -------------------------------------------------------------------------
    def _match(self, path: str, part: TensorPart, parents: list[ParentTensors]) -> _Base | None:
        """Parent tensors of the same type and chunking (what a chunk-wise delta needs)."""
        cb = chunk_bytes_for(part, self._settings)
        n = -(-part.nbytes // cb) if part.nbytes else 0

        def ok(t: StoredTensor | None) -> bool:
            return (t is not None and t.dtype.name == part.dtype.name and t.nbytes == part.nbytes
                    and t.chunk_bytes == cb and len(t.chunks) == n)

        found = [t for t in (p.match(path, part) for p in parents[:2]) if ok(t)]
        if not found:
            return None
        second = found[1] if len(found) > 1 and found[1].chunks != found[0].chunks else None
        return _Base(found[0], second)

    def _tensor(self, plan: LossyPlan, path: str, part: TensorPart, buf: bytearray,
                parents: list[ParentTensors], aim: float) -> TensorFigures:
        dt = part.dtype
        numel = part.nbytes // dt.itemsize
        fig = TensorFigures(path, part.name, dt.name, numel, "exact")
        if not lossy_dtype(dt):
            fig.why = f"{'integer' if not dt.is_float else dt.name} tensors (only F64/F32/F16/BF16 go lossy)"
            return fig
        base = self._match(path, part, parents)
        if base is None:
            fig.why = "tensors with no parent tensor of the same type"
            return fig
        data = bytes(buf[part.offset:part.offset + part.nbytes])
        first = b"".join(self._cache.get(k) for k in base.first.chunks)
        if data == first:
            fig.stored = "unchanged"
            return fig
        fig.original = blake3.blake3(data).hexdigest()[:32]
        if self._originals.get(fig.key) == fig.original:
            # the parent's original tensor, unchanged (a bias-only or partial fine-tune of a lossy
            # parent, a prune's untouched tensors): it is the parent's reconstruction, as the
            # parent's gate accepted it, and costs nothing (the same chunks)
            buf[part.offset:part.offset + part.nbytes] = first
            fig.stored = "inherited"
            fig.error = self._errors.get(fig.key, 0.0)  # the parent's, as its gate accepted it
            return fig
        second = b"".join(self._cache.get(k) for k in base.second.chunks) if base.second else None
        x, p1 = _values(data, dt), _values(first, dt)
        pred = p1 if second is None else (p1 + _values(second, dt)) / 2
        zeroed = new_zeros(data, first, dt) if second is None else None
        prune = zeroed is not None and int(zeroed.sum()) >= max(1, numel // PRUNED)
        if prune:  # a magnitude prune: its new zeros stay exact, the rest is predicted from the parent
            pred = np.where(zeroed, 0.0, p1)
        fin = np.isfinite(x) & np.isfinite(p1) & np.isfinite(pred)
        raw = float(np.linalg.norm((x - p1)[fin]))
        if raw == 0.0:
            fig.why = "tensors changed only in non-finite values or signs of zero"
            return fig
        # the change from the parent's *original*, conservatively: the parent's reconstruction
        # is off by its own recorded error, so the true change is at least raw - that error
        fig.change = raw - self._errors.get(fig.key, 0.0)
        if fig.change <= 0.0:
            fig.why = "tensors that moved less than their lossy parent's own error"
            return fig
        resid = np.abs(x - pred)[fin]
        if float(np.linalg.norm(resid)) < MARGIN * aim * fig.change:
            # the prediction alone is close enough (a prune's kept weights, a merge of two
            # reconstructions): a step no residual reaches, so every code is zero
            step: float | None = 4 * float(resid.max()) or None
        else:
            step = self._search(x, p1, pred, fin, dt, aim * fig.change / raw)
        if step is None:
            fig.why = "tensors too small to quantise"
            return fig
        cb = chunk_bytes_for(part, self._settings)
        for _ in range(8):
            recon, payloads = self._quantise(data, dt, first, second, cb, step, prune)
            err = float(np.linalg.norm((_values(recon, dt) - x)[fin]))
            if err < aim * fig.change:
                break
            step *= SHRINK
        else:
            fig.why = "tensors the grid could not bring under the error aim"
            return fig
        fig.error, fig.step, fig.lossy_bytes = err, step, sum(payloads)
        fig.exact_bytes = self._exact_size(data, dt, first, cb)
        if fig.lossy_bytes >= fig.exact_bytes:
            fig.why = "tensors whose quantised delta was no smaller than the lossless one"
            fig.error, fig.step = 0.0, None
            return fig
        fig.stored = "lossy"
        buf[part.offset:part.offset + part.nbytes] = recon
        codec = "qdelta-avg" if second is not None else "qdelta-prune" if prune else "qdelta"
        for ci in range(len(base.first.chunks)):
            keys = (base.first.chunks[ci],) + ((base.second.chunks[ci],) if base.second else ())
            plan.hints[(path, part.name, ci)] = (LossyHint(codec, keys, QuantHint(step)),)
        return fig

    @staticmethod
    def _search(x: np.ndarray, p1: np.ndarray, pred: np.ndarray, fin: np.ndarray, dt: DType,
                aim: float) -> float | None:
        """The largest step (bisection in log space) whose error on a sample of the changed
        elements is under MARGIN * aim of their change; the error of unchanged elements is 0
        (a zero code rebuilds the prediction exactly), so the sample's ratio is the tensor's."""
        moved = np.flatnonzero(fin & ((x != p1) | (x != pred)))
        if len(moved) == 0:
            return None
        pick = moved[np.linspace(0, len(moved) - 1, min(SAMPLE, len(moved))).astype(np.int64)]
        xs, ps, cs = x[pick], pred[pick], x[pick] - p1[pick]
        chg = float(np.linalg.norm(cs))
        ft = numerics.float_type(dt)
        xs_t, ps_t = xs.astype(ft), ps.astype(ft)

        def ratio(step: float) -> float:
            with np.errstate(over="ignore", invalid="ignore"):
                k = np.rint((ps_t - xs_t) / ft(step))
                r = numerics.widen(numerics.narrow(ps_t + k.astype(ft) * ft(-step), dt), dt)
            return float(np.linalg.norm(r.astype(np.float64) - xs)) / chg

        rms = float(np.sqrt(np.mean((xs - ps) ** 2))) or float(np.sqrt(np.mean(cs ** 2)))
        if not rms > 0:
            return None
        # uniform rounding errs by step / sqrt(12): start there, bracket a factor 16 either way
        guess = math.log(aim * math.sqrt(12) * rms * chg / max(float(np.linalg.norm(xs - ps)), 1e-300))
        lo, hi = guess - math.log(16), guess + math.log(16)
        target = MARGIN * aim
        if ratio(math.exp(lo)) > target:
            return math.exp(lo)
        for _ in range(SEARCH_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ratio(math.exp(mid)) <= target else (lo, mid)
        return math.exp(lo)

    @staticmethod
    def _quantise(data: bytes, dt: DType, first: bytes, second: bytes | None, cb: int,
                  step: float, prune: bool = False) -> tuple[bytes, list[int]]:
        parts, sizes = [], []
        for s in range(0, len(data), cb):
            bases = [first[s:s + cb]] + ([second[s:s + cb]] if second is not None else [])
            payload, recon = quantise(data[s:s + cb], EncodeContext(dt, bases, [dt] * len(bases)), step, prune)
            parts.append(recon)
            sizes.append(len(payload))
        return b"".join(parts), sizes

    @staticmethod
    def _exact_size(data: bytes, dt: DType, first: bytes, cb: int) -> int:
        """Bytes of the lossless delta of the original against the first parent."""
        return sum(len(choose_encoding(data[s:s + cb], dt, [([first[s:s + cb]], [dt])], [1]).payload)
                   for s in range(0, len(data), cb))

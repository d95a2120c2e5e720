"""Nearest in weight space: a new model's sketch against the stored ones, and merges of two.

Distance is the relative L2 distance ``||child - candidate|| / ||child||`` over the tensors
the two share (matched by name, else by dotted suffix, always by shape), estimated from the
sketches: each sample of a tensor stands for ``numel / samples`` elements, so the estimate is
of the whole model's distance, not of a per-tensor average (on real fine-tunes the small
tensors, LayerNorms and biases, move alike in sibling runs and would pull a sibling towards
its sibling instead of their base). Sketches are float32 whatever the stored dtype, so an fp16
cast sits next to its fp32 parent (rounding only) and far from a sibling fine-tune.

Ranking is two passes: the digests of every version of the layouts the index names (one
cursor pass per layout, a few floats per tensor), then the full sketches of a short list.
A merge is the child being much closer to ``alpha * a + (1 - alpha) * b`` (alpha fitted in
[0, 1]) than to either a or b.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelfs.repo import sketches
from modelfs.repo.sketches import Layout, TensorSketch, name_suffixes
from modelfs.store import ReadTxn

INDEX_SHARE = 0.5  # a layout must have this share of the best layout's index keys in common
COVERAGE_SHARE = 0.5  # and match this share of the best candidate's matched elements
SHORTLIST = 16  # versions whose full sketch is read
MERGE_POOL = 8  # the nearest this many are paired for a merge
MERGE_MARGIN = 0.5  # a merge: combination distance below this fraction of the nearest parent's
ALPHA_EDGE = 0.02  # alpha this close to 0 or 1 is one parent, not a merge
MAX_DISTANCE = 0.5  # farther than this from every candidate: unrelated (two random inits are ~1.4 apart)
NEAR_TIE = 0.01  # candidates this close to the nearest are told apart by dtype (a cast of the parent
# and the parent are equally near a fine-tune of either: the one of the child's dtype is chosen)

Tensors = Sequence[tuple[str, str, tuple[int, ...]]]


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate version: its distance to the child and the share of the child it matched."""

    vid: str
    distance: float
    coverage: float


@dataclass(frozen=True, slots=True)
class MergeFit:
    """The child as ``alpha * a + (1 - alpha) * b``: distance to that, and to the nearer of a, b."""

    a: str
    b: str
    alpha: float
    distance: float
    nearest: float


def _wsum(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    """sum(a * b * w) without BLAS: a threaded BLAS dot stalls for tens of ms on a busy machine."""
    return float(np.einsum("i,i,i->", a, b, w))


def match(child: Sequence[TensorSketch], tensors: Tensors) -> list[tuple[int, int]]:
    """(child index, candidate index) pairs: same name, else an unambiguous dotted suffix
    of either name (a ``bert.`` prefix added or dropped); the shape always equal."""
    by_name: dict[str, int] = {}
    by_suffix: dict[str, int] = {}
    for j, (name, _, _) in enumerate(tensors):
        by_name.setdefault(name, j)
        for s in name_suffixes(name):
            by_suffix[s] = -1 if s in by_suffix else j
    used: set[int] = set()
    pairs = []
    for ci, t in enumerate(child):
        for s in name_suffixes(t.name):
            hit = next((j for j in (by_name.get(s, -1), by_suffix.get(s, -1))
                        if j >= 0 and j not in used and tensors[j][2] == t.shape), None)
            if hit is not None:
                used.add(hit)
                pairs.append((ci, hit))
                break
    return pairs


def _coverage(child: Sequence[TensorSketch], pairs: list[tuple[int, int]]) -> float:
    total = sum(t.numel for t in child)
    return sum(child[ci].numel for ci, _ in pairs) / total if total else 0.0


def _layout_scores(child: Sequence[TensorSketch], lay: Layout, pairs: list[tuple[int, int]],
                   digests: np.ndarray) -> np.ndarray:
    """Digest distances of every member of one layout (a row each), in one matrix operation."""
    offs = lay.digest_offsets()
    xs, cols, ws = [], [], []
    for ci, j in pairs:
        k = offs[j + 1] - offs[j]
        xs.append(child[ci].samples[:k])
        cols.append(np.arange(offs[j], offs[j + 1]))
        ws.append(np.full(k, child[ci].numel / k, dtype=np.float64))
    x = np.concatenate(xs).astype(np.float64)
    col = np.concatenate(cols)
    w = np.concatenate(ws)
    d = digests[:, col].astype(np.float64) - x
    num = np.einsum("ij,ij,j->i", d, d, w)  # not `@`: see _wsum
    den = _wsum(x, x, w)
    return np.sqrt(num / den) if den > 0 else np.where(num > 0, np.inf, 0.0)


def shortlist(txn: ReadTxn, child: Sequence[TensorSketch], limit: int = SHORTLIST) -> list[Scored]:
    """The `limit` versions nearest by digest, among those of layouts sharing many tensor keys."""
    counts = sketches.layouts_sharing(txn, (sketches.index_key(t.name, t.shape) for t in child))
    if not counts:
        return []
    top = max(counts.values())
    found: list[tuple[Layout, list[tuple[int, int]], float]] = []
    for lid, c in counts.items():
        lay = sketches.layout(txn, lid) if c >= INDEX_SHARE * top else None
        if lay is not None:
            pairs = match(child, lay.tensors)
            if pairs:
                found.append((lay, pairs, _coverage(child, pairs)))
    if not found:
        return []
    best = max(cov for _, _, cov in found)
    scored: list[Scored] = []
    for lay, pairs, cov in found:
        if cov < COVERAGE_SHARE * best:
            continue
        vids, digests = sketches.members(txn, lay)
        if vids:
            dist = _layout_scores(child, lay, pairs, digests)
            top = np.argpartition(dist, limit)[:limit] if len(dist) > limit else range(len(dist))
            scored += [Scored(vids[i].decode(), float(dist[i]), cov) for i in top]
    scored.sort(key=lambda s: (s.distance, -s.coverage, s.vid))
    return scored[:limit]


Aligned = dict[int, np.ndarray]  # child tensor index -> the candidate's samples of that tensor


def align(child: Sequence[TensorSketch], tensors: Sequence[TensorSketch]) -> Aligned:
    return {ci: tensors[j].samples for ci, j in match(child, [(t.name, t.dtype, t.shape) for t in tensors])}


def _vectors(child: Sequence[TensorSketch], sides: Sequence[Aligned]
             ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """The child's samples, each side's, and the per-sample weights, over the shared tensors."""
    common = sorted(set.intersection(*(set(a) for a in sides))) if sides else []
    xs: list[np.ndarray] = []
    ys: list[list[np.ndarray]] = [[] for _ in sides]
    ws: list[np.ndarray] = []
    for ci in common:
        k = min(len(child[ci].samples), *(len(a[ci]) for a in sides))
        if k == 0:
            continue
        xs.append(child[ci].samples[:k])
        for y, a in zip(ys, sides, strict=True):
            y.append(a[ci][:k])
        ws.append(np.full(k, child[ci].numel / k, dtype=np.float64))
    if not xs:
        empty = np.zeros(0)
        return empty, [empty for _ in sides], empty
    return (np.concatenate(xs).astype(np.float64), [np.concatenate(y).astype(np.float64) for y in ys],
            np.concatenate(ws))


def _relative(num: float, den: float) -> float:
    if den > 0:
        return float(np.sqrt(num / den))
    return 0.0 if num == 0 else float("inf")


def distance(child: Sequence[TensorSketch], cand: Aligned) -> float:
    x, (y,), w = _vectors(child, [cand])
    d = x - y
    return _relative(_wsum(d, d, w), _wsum(x, x, w))


def coverage(child: Sequence[TensorSketch], cand: Aligned) -> float:
    total = sum(t.numel for t in child)
    return sum(child[ci].numel for ci in cand) / total if total else 0.0


def fit_merge(child: Sequence[TensorSketch], a: Aligned, b: Aligned) -> tuple[float, float, float, float]:
    """(alpha, distance to alpha*a + (1-alpha)*b, distance to a, distance to b) on shared tensors."""
    x, (ya, yb), w = _vectors(child, [a, b])
    den = _wsum(x, x, w)
    e, u = ya - yb, x - yb
    ee = _wsum(e, e, w)
    alpha = min(1.0, max(0.0, _wsum(u, e, w) / ee)) if ee > 0 else 1.0
    r = u - alpha * e
    da = x - ya
    return (alpha, _relative(_wsum(r, r, w), den), _relative(_wsum(da, da, w), den),
            _relative(_wsum(u, u, w), den))


def same_dtype_share(child: Sequence[TensorSketch], tensors: Sequence[TensorSketch]) -> float:
    """The share of matched elements stored in the same dtype in the child and the candidate."""
    pairs = match(child, [(t.name, t.dtype, t.shape) for t in tensors])
    total = sum(child[ci].numel for ci, _ in pairs)
    same = sum(child[ci].numel for ci, j in pairs if child[ci].dtype == tensors[j].dtype)
    return same / total if total else 0.0


def best_merge(child: Sequence[TensorSketch], aligned: dict[str, Aligned], order: Sequence[str],
               nearest_single: float, pool: int = MERGE_POOL) -> MergeFit | None:
    """The pair among the nearest `pool` whose fitted combination explains the child far better
    (MERGE_MARGIN) than either parent alone and than the nearest single candidate, or None.
    Ties go to the pair listed first."""
    best: MergeFit | None = None
    near = list(order)[:pool]
    for i, va in enumerate(near):
        for vb in near[i + 1:]:
            alpha, r, da, db = fit_merge(child, aligned[va], aligned[vb])
            single = min(da, db)
            if (not (ALPHA_EDGE < alpha < 1 - ALPHA_EDGE) or not r < MERGE_MARGIN * min(single, nearest_single)
                    or r > MAX_DISTANCE):
                continue
            fit = (MergeFit(va, vb, alpha, r, single) if alpha >= 0.5
                   else MergeFit(vb, va, 1 - alpha, r, single))
            if best is None or fit.distance < best.distance:
                best = fit
    return best

"""Human output: the lineage as a tree (by model, or by version), sizes, test badges.

The picture (Graphviz) is ``cli/picture.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from modelfs.lineage import Version
from modelfs.lineage.groups import ModelNode, children, group, number_ranges


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _label(v: Version) -> str:
    how = f" [{v.how}]" if v.how else ""
    msg = f" {v.message}" if v.message else ""
    return f"{v.ref} {v.id[:10]}{how}{msg}"


def test_badge(passed: int, failed: int) -> str:
    """A version's test status: how many tests pass and fail on it (`modelfs test run`)."""
    return f"✓{passed}" + (f" ✗{failed}" if failed else "")


def lineage_tree(versions: Iterable[Version], status: Mapping[str, tuple[int, int]] | None = None) -> list[str]:
    """Each version under its first parent (``lineage --versions``); more parents listed.

    `status`: version id -> (tests passed, failed), shown after a version that has results.
    """
    vs = {v.id: v for v in versions}
    kids: dict[str | None, list[Version]] = {}
    for v in sorted(vs.values(), key=lambda v: v.time):
        first = next((p for p in v.parents if p in vs), None)
        kids.setdefault(first, []).append(v)
    lines: list[str] = []

    def walk(v: Version, prefix: str, last: bool, root: bool) -> None:
        others = [vs[p].ref for p in v.parents[1:] if p in vs]
        extra = f"  (+ parents {', '.join(others)})" if others else ""
        if status and v.id in status:
            extra += f"  [tests {test_badge(*status[v.id])}]"
        lines.append(("" if root else prefix + ("└── " if last else "├── ")) + _label(v) + extra)
        children = kids.get(v.id, [])
        for i, c in enumerate(children):
            walk(c, "" if root else prefix + ("    " if last else "│   "), i == len(children) - 1, False)

    for r in kids.get(None, []):
        walk(r, "", True, True)
    return lines


def _derivations(n: ModelNode) -> str:
    """``← finetune of minilm@2``, or per version when several were derived."""
    per: dict[int, tuple[str, list[str]]] = {}
    for e in n.incoming:
        how, refs = per.setdefault(e.child.number, (e.how, []))
        refs.append(e.parent.ref)
    if not per:
        return ""
    if list(per) == [n.versions[0].number]:
        how, refs = per[n.versions[0].number]
        return f"  ← {how} of {' + '.join(refs)}"
    return "  ← " + "; ".join(f"@{k}: {how} of {' + '.join(refs)}" for k, (how, refs) in per.items())


def _model_status(n: ModelNode, status: Mapping[str, tuple[int, int]]) -> str:
    """The newest tested version's badge, and which versions fail."""
    tested = [v for v in n.versions if v.id in status]
    if not tested:
        return ""
    newest = tested[-1]
    out = f"  [tests @{newest.number} {test_badge(*status[newest.id])}"
    failing = [v.number for v in tested if status[v.id][1] and v is not newest]
    return out + (f"; failing {number_ranges(failing)}]" if failing else "]")


def model_tree(versions: Iterable[Version], status: Mapping[str, tuple[int, int]] | None = None
               ) -> list[str]:
    """One line per model (``minilm-ft @1..@3``) under the model it was derived from.

    Each line says how the model was derived (from which versions), its test status, and
    which versions are lossy; ``lineage --versions`` shows every version instead.
    """
    nodes = group(versions)
    kids = children(nodes)
    lines: list[str] = []
    seen: set[str] = set()

    def walk(n: ModelNode, prefix: str, last: bool, root: bool) -> None:
        seen.add(n.model)
        count = f" ({len(n.versions)} versions)" if len(n.versions) > 1 else ""
        lossy = [v.number for v in n.versions if isinstance(v.provenance.get("lossy"), dict)]
        text = (f"{n.model} {n.numbers}{count}{_derivations(n)}{_model_status(n, status or {})}"
                + (f"  (lossy {number_ranges(lossy)})" if lossy else ""))
        lines.append(("" if root else prefix + ("└── " if last else "├── ")) + text)
        below = [c for c in kids.get(n.model, []) if c.model not in seen]
        for i, c in enumerate(below):
            walk(c, "" if root else prefix + ("    " if last else "│   "), i == len(below) - 1, False)

    for r in [*kids.get(None, []), *nodes.values()]:  # then models in a cycle of derivations
        if r.model not in seen:
            walk(r, "", True, True)
    return lines

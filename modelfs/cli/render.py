"""Human output: the lineage as a tree and as DOT, sizes, tables."""

from __future__ import annotations

from collections.abc import Iterable

from modelfs.lineage import Version


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


def lineage_tree(versions: Iterable[Version]) -> list[str]:
    """Each version under its first parent; versions with more parents list the others."""
    vs = {v.id: v for v in versions}
    kids: dict[str | None, list[Version]] = {}
    for v in sorted(vs.values(), key=lambda v: v.time):
        first = next((p for p in v.parents if p in vs), None)
        kids.setdefault(first, []).append(v)
    lines: list[str] = []

    def walk(v: Version, prefix: str, last: bool, root: bool) -> None:
        others = [vs[p].ref for p in v.parents[1:] if p in vs]
        extra = f"  (+ parents {', '.join(others)})" if others else ""
        lines.append(("" if root else prefix + ("└── " if last else "├── ")) + _label(v) + extra)
        children = kids.get(v.id, [])
        for i, c in enumerate(children):
            walk(c, "" if root else prefix + ("    " if last else "│   "), i == len(children) - 1, False)

    for r in kids.get(None, []):
        walk(r, "", True, True)
    return lines


def lineage_dot(versions: Iterable[Version]) -> str:
    vs = list(versions)
    out = ["digraph lineage {", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    for v in vs:
        label = v.ref + (f"\\n{v.how}" if v.how else "")
        out.append(f'  "{v.id}" [label="{label}"];')
    for v in vs:
        if v.previous:
            out.append(f'  "{v.previous}" -> "{v.id}" [style=dashed, label="version"];')
        for p in v.derived_from:
            out.append(f'  "{p}" -> "{v.id}" [label="{v.how or "derived"}"];')
    out.append("}")
    return "\n".join(out) + "\n"

"""Human output: the lineage as a tree and as DOT, sizes, tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def test_badge(passed: int, failed: int) -> str:
    """A version's test status: how many tests pass and fail on it (`modelfs test run`)."""
    return f"✓{passed}" + (f" ✗{failed}" if failed else "")


def lineage_tree(versions: Iterable[Version], status: Mapping[str, tuple[int, int]] | None = None) -> list[str]:
    """Each version under its first parent; versions with more parents list the others.

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


def _dot(s: str) -> str:
    """A DOT double-quoted string body: backslashes and quotes escaped."""
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def lineage_dot(versions: Iterable[Version]) -> str:
    vs = list(versions)
    out = ["digraph lineage {", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    for v in vs:
        label = _dot(v.ref) + (f"\\n{_dot(v.how)}" if v.how else "")
        out.append(f'  "{v.id}" [label="{label}"];')
    for v in vs:
        if v.previous:
            out.append(f'  "{v.previous}" -> "{v.id}" [style=dashed, label="version"];')
        for p in v.derived_from:
            out.append(f'  "{p}" -> "{v.id}" [label="{_dot(v.how or "derived")}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def lineage_svg(versions: Iterable[Version], status: Mapping[str, tuple[int, int]] | None = None) -> str:
    """A layered picture of the graph with no external tool: one row per generation.

    Solid arrows are provenance edges, dashed ones versioning edges; each box says how, and
    with `status` (version id -> tests passed, failed) its test results, red when one fails.
    """
    vs = sorted(versions, key=lambda v: v.time)
    ids = {v.id for v in vs}
    depth: dict[str, int] = {}
    for v in vs:  # parents are always older, so one pass in time order suffices
        depth[v.id] = 1 + max((depth[p] for p in v.parents if p in ids), default=-1)
    rows: dict[int, list[Version]] = {}
    for v in vs:
        rows.setdefault(depth[v.id], []).append(v)
    box_w, box_h, gap_x, gap_y = 220, 44, 24, 60
    width = max((len(r) for r in rows.values()), default=1) * (box_w + gap_x) + gap_x
    height = len(rows) * (box_h + gap_y) + gap_y
    pos: dict[str, tuple[int, int]] = {}
    for d, row in rows.items():
        offset = (width - len(row) * (box_w + gap_x) + gap_x) // 2
        for i, v in enumerate(row):
            pos[v.id] = (offset + i * (box_w + gap_x), gap_y // 2 + d * (box_h + gap_y))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="12">',
           '<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>',
           '<rect width="100%" height="100%" fill="white"/>']
    for v in vs:
        x2, y2 = pos[v.id]
        for p in v.parents:
            if p not in pos:
                continue
            x1, y1 = pos[p]
            dash = ' stroke-dasharray="5,4"' if p == v.previous else ""
            ax, ay, bx, by = x1 + box_w // 2, y1 + box_h, x2 + box_w // 2, y2
            out.append(f'<line x1="{ax}" y1="{ay}" x2="{bx}" y2="{by}" stroke="#444"{dash} marker-end="url(#a)"/>')
    for v in vs:
        x, y = pos[v.id]
        passed, failed = (status or {}).get(v.id, (0, 0))
        fill, stroke = ("#ffecec", "#a22") if failed else ("#eef4ff", "#335")
        out.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="{fill}" stroke="{stroke}"/>')
        if passed or failed:
            out.append(f'<text x="{x + box_w - 8}" y="{y + 18}" text-anchor="end" class="tests" '
                       f'fill="{"#a22" if failed else "#262"}">{test_badge(passed, failed)}</text>')
        out.append(f'<text x="{x + 8}" y="{y + 18}" font-weight="bold">{_esc(v.ref)}</text>')
        out.append(f'<text x="{x + 8}" y="{y + 35}" fill="#555">{v.id[:10]} {_esc(v.how or "")}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"

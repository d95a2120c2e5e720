"""The lineage as a picture: Graphviz DOT, laid out by ``dot`` into SVG or PNG.

Each model is a box (an HTML-like table, so the row keeps its order) holding its versions
in one row, oldest on the left; derivation edges run between versions of different models,
coloured by how (``EDGE_COLOURS``), with a legend of the kinds the picture uses. A
version's fill says its test status (green: every test passes, red: one fails) and a
dashed purple border marks a lossy version. By default a model with many versions shows
only those that matter (its first and newest, those with derivation edges, failing or lossy
ones) and one ``… +N`` node per run of the others, so a run of 50 checkpoints stays one
short row; ``--versions`` draws every version.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from modelfs.errors import ModelfsError
from modelfs.lineage import Version
from modelfs.lineage.groups import ModelNode, group

EDGE_COLOURS: dict[str, str] = {  # how -> colour of its derivation edges
    "finetune": "#1f77b4", "lora": "#9467bd", "merge": "#ff7f0e", "prune": "#d62728",
    "cast": "#2ca02c", "quantize": "#17becf", "reshard": "#8c564b", "derive": "#7f7f7f",
    "distill": "#e377c2", "update": "#bcbd22", "partial-finetune": "#b7950b", "checkpoint": "#5f9ed1",
}
# kinds without a colour of their own get one of these, chosen by a hash of the name: stable
# from picture to picture, and two such kinds rarely share a colour in one legend
OTHER_COLOURS = ("#333333", "#6b4226", "#2f6f4f", "#7a1f5c", "#4b4b8f", "#8f6b00", "#006d77", "#a0522d")
PASS, FAIL = ("#e6f5e6", "#2a7a2a"), ("#fde8e8", "#b22222")
PLAIN = ("#eef3fb", "#44557a")
LOSSY = "#8e44ad"
KEEP_ALL = 6  # a model with at most this many versions shows them all
LABEL_EDGES = 30  # edges named on the picture up to this many


class GraphvizMissing(ModelfsError):
    pass


def _q(s: str) -> str:
    """A DOT double-quoted string: backslashes, quotes and newlines escaped."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def colour(how: str) -> str:
    return EDGE_COLOURS.get(how) or OTHER_COLOURS[zlib.crc32(how.encode()) % len(OTHER_COLOURS)]


def _shown(n: ModelNode, linked: set[str], marked: set[str], every: bool) -> list[Version | int]:
    """The versions drawn for a model, with the count of hidden ones where a run is left out.

    Versions with derivation edges are always drawn, so every edge has both its ends.
    """
    if every or len(n.versions) <= KEEP_ALL:
        return list(n.versions)
    keep = {n.versions[0].id, n.versions[-1].id} | (linked | marked) & {v.id for v in n.versions}
    out: list[Version | int] = []
    hidden = 0
    for v in n.versions:
        if v.id in keep:
            if hidden:
                out.append(hidden)
                hidden = 0
            out.append(v)
        else:
            hidden += 1
    return out


def _cell(v: Version, status: Mapping[str, tuple[int, int]]) -> str:
    """A version's cell: its number, step, test badge and lossy mark; its port is its id."""
    lines = [f"@{v.number}"]
    if v.provenance.get("step") is not None:
        lines.append(f"step {v.provenance['step']}")
    fill, border = PLAIN
    if v.id in status:
        passed, failed = status[v.id]
        fill, border = FAIL if failed else PASS
        lines.append(f"✓{passed}" + (f" ✗{failed}" if failed else ""))
    style = ""
    if isinstance(v.provenance.get("lossy"), dict):
        lines.append("lossy")
        border, style = LOSSY, ' style="dashed"'
    text = "<br/>".join(html.escape(x) for x in lines)
    return f'<td port="v{v.id}" bgcolor="{fill}" color="{border}"{style}>{text}</td>'


def _model_node(n: ModelNode, shown: list[Version | int], status: Mapping[str, tuple[int, int]]
                ) -> str:
    """A model as one box: its name over its versions in a row, oldest on the left.

    An HTML-like table keeps the row in order (Graphviz may reorder nodes of one rank to
    shorten edges); each version cell is a port the derivation edges attach to.
    """
    cells: list[str] = []
    for item in shown:
        if cells:
            cells.append('<td border="0"><font color="#8a8a8a">→</font></td>')
        if isinstance(item, int):
            cells.append(f'<td border="0"><font color="#666666">… +{item}</font></td>')
        else:
            cells.append(_cell(item, status))
    table = (f'<<table border="1" cellborder="1" cellspacing="3" cellpadding="3" style="rounded" '
             f'color="#9aa5b8" bgcolor="white"><tr><td colspan="{len(cells)}" border="0">'
             f'<b>{html.escape(n.model)}</b></td></tr><tr>{"".join(cells)}</tr></table>>')
    return f"  {_q(n.model)} [label={table}];"


def lineage_dot(versions: Iterable[Version], status: Mapping[str, tuple[int, int]] | None = None,
                every: bool = False) -> str:
    """The picture's DOT source (``lineage --dot``; ``--svg``/``--png`` lay it out)."""
    status = status or {}
    nodes = group(versions)
    edges = [e for n in nodes.values() for e in n.incoming]
    linked = {e.parent.id for e in edges} | {e.child.id for e in edges}
    marked = {v.id for n in nodes.values() for v in n.versions
              if (status.get(v.id, (0, 0))[1] or isinstance(v.provenance.get("lossy"), dict))}
    out = ["digraph lineage {",
           '  graph [rankdir=TB, nodesep=0.25, ranksep=0.5, fontname="Helvetica"];',
           '  node [shape=plaintext, fontname="Helvetica", fontsize=9];',
           '  edge [fontname="Helvetica", fontsize=8, arrowsize=0.6];']
    for n in nodes.values():
        out.append(_model_node(n, _shown(n, linked, marked, every), status))
    labels = len(edges) <= LABEL_EDGES  # beyond, the colours and the legend say how
    for e in edges:
        c = colour(e.how)
        label = f", fontcolor={_q(c)}, label={_q(e.how)}" if labels else ""
        out.append(f"  {_q(e.parent.model)}:{_q('v' + e.parent.id)}:s -> "
                   f"{_q(e.child.model)}:{_q('v' + e.child.id)}:n [color={_q(c)}{label}, "
                   f"penwidth=1.4, tooltip={_q(f'{e.parent.ref} -> {e.child.ref}: {e.how}')}];")
    out += _legend(sorted({e.how for e in edges}), bool(status), bool(marked))
    out.append("}")
    return "\n".join(out) + "\n"


def _legend(kinds: list[str], tests: bool, marks: bool) -> list[str]:
    rows = [f'<tr><td align="left"><font color="{colour(k)}">━━▶</font></td>'
            f'<td align="left">{k}</td></tr>' for k in kinds]
    rows.append('<tr><td align="left"><font color="#8a8a8a">@1 → @2</font></td>'
                '<td align="left">versions of a model</td></tr>')
    if tests:
        rows.append(f'<tr><td bgcolor="{PASS[0]}">✓</td><td align="left">tests pass</td></tr>')
        rows.append(f'<tr><td bgcolor="{FAIL[0]}">✗</td><td align="left">a test fails</td></tr>')
    if marks:
        rows.append(f'<tr><td border="1" color="{LOSSY}" style="dashed">lossy</td>'
                    '<td align="left">a lossy version</td></tr>')
    table = ('<<table border="0" cellborder="0" cellspacing="1"><tr><td colspan="2">'
             '<b>legend</b></td></tr>' + "".join(rows) + "</table>>")
    return [f"  legend [label={table}];"]


def render(dot_source: str, fmt: str, dest: Path, timeout: float = 300.0) -> None:
    """Lay the picture out with Graphviz's ``dot`` into ``dest`` (``svg`` or ``png``)."""
    if not dest.parent.is_dir():
        raise ModelfsError(f"cannot write {dest}: No such file or directory: {dest.parent}")
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing("the picture needs Graphviz's `dot` (Debian: apt-get install "
                              "graphviz); `modelfs lineage --dot` prints its source")
    try:
        r = subprocess.run([exe, f"-T{fmt}", "-o", str(dest)], input=dot_source.encode(),
                           capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ModelfsError(f"dot did not finish within {timeout:.0f}s") from None
    if r.returncode != 0:
        why = r.stderr.decode(errors="replace").strip().splitlines()
        raise ModelfsError(f"dot failed to write {dest}: {why[-1] if why else r.returncode}")

"""``pipekit graph``: the stage graph as text, Graphviz dot, Mermaid or SVG, with the statuses
of a recorded run when ``--run`` names one. The SVG is drawn by pipekit itself (Graphviz is not
needed): columns by depth, an arrow from each stage to the stages that need it, routed around
the stages' boxes (:func:`routes`, which the HTML report's graph uses too)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from html import escape
from typing import IO

from pipekit._plan.graph import Plan

__all__ = ["ARROW", "FILLS", "path_data", "render", "routes"]

FILLS = {
    "succeeded": "#dafbe1",
    "cached": "#dafbe1",
    "restored": "#dafbe1",
    "failed": "#ffebe9",
    "interrupted": "#ffebe9",
    "allowed_failure": "#fff8c5",
    "awaiting_approval": "#fff8c5",
    "skipped": "#eaeef2",
    "cancelled": "#eaeef2",
}
W, H, GX, GY = 180, 36, 60, 22

Point = tuple[float, float]

#: the arrowhead every edge ends with (``marker-end="url(#ID)"``), ``%s`` being the marker's id
ARROW = (
    '<marker id="%s" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7"'
    ' orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#57606a"/></marker>'
)


def routes(
    edges: Sequence[tuple[str, str]],
    place: Mapping[str, tuple[int, int]],
    box: tuple[float, float, float, float] = (W, H, GX, GY),
    margin: float = 10,
) -> list[list[Point]]:
    """Each edge's path through the drawing (stage ``n`` at ``margin + column * (w + gx)``,
    ``gy + row * (h + gy)``), never across a stage's box: an edge between neighbouring columns is
    a straight line inside the gap between them; one that skips columns leaves its stage into the
    gap after it, runs along the gap between two rows (where no box is, in any column) to the gap
    before its stage, and enters it there. Edges sharing gaps get lanes of their own."""
    w, h, gx, gy = box
    lanes = max(1, sum(1 for u, v in edges if place[v][0] - place[u][0] > 1))
    outs, ins = Counter(u for u, _ in edges), Counter(v for _, v in edges)
    taken_out: Counter[str] = Counter()
    taken_in: Counter[str] = Counter()

    def spread(i: int, n: int) -> float:  # where the i-th of n edges meets a side of a box
        return h / 2 if n == 1 else h * (0.2 + 0.6 * i / (n - 1))

    out, lane = [], 0
    for u, v in edges:
        (cu, ru), (cv, rv) = place[u], place[v]
        start = (margin + cu * (w + gx) + w, gy + ru * (h + gy) + spread(taken_out[u], outs[u]))
        end = (margin + cv * (w + gx), gy + rv * (h + gy) + spread(taken_in[v], ins[v]))
        taken_out[u] += 1
        taken_in[v] += 1
        if cv - cu <= 1:
            out.append([start, end])
            continue
        shift = (lane / lanes - 0.5) if lanes > 1 else 0.0  # in [-0.5, 0.5)
        lane += 1
        xa = start[0] + gx / 2 + shift * gx / 2
        xb = end[0] - gx / 2 + shift * gx / 2
        yc = gy + rv * (h + gy) - gy / 2 + shift * gy / 2  # the gap above the stage's row
        out.append([start, (xa, start[1]), (xa, yc), (xb, yc), (xb, end[1]), end])
    return out


def _label(name: str, statuses: Mapping[str, str]) -> str:
    return f"{name}\\n{statuses[name]}" if name in statuses else name


def path_data(points: Sequence[Point]) -> str:
    return "M" + " L".join(f"{x:g},{y:g}" for x, y in points)


def _svg(p: Plan, statuses: Mapping[str, str]) -> str:
    place = p.dag.layout(p.order)
    columns = 1 + max((c for c, _ in place.values()), default=0)
    rows = 1 + max((r for _, r in place.values()), default=0)
    width, height = 20 + columns * (W + GX) - GX, 2 * GY + rows * (H + GY) - GY

    def xy(n: str) -> tuple[int, int]:
        c, r = place[n]
        return 10 + c * (W + GX), GY + r * (H + GY)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        ' font-family="sans-serif" font-size="12">',
        f"<title>{escape(p.pipeline.name)}</title>",
        f"<defs>{ARROW % 'arrow'}</defs>",
    ]
    edges = [(u, n) for n in p.order for u in p.upstream(n)]
    for (u, v), points in zip(edges, routes(edges, place), strict=True):
        out.append(
            f'<path class="edge" data-from="{escape(u)}" data-to="{escape(v)}" d="{path_data(points)}"'
            ' fill="none" stroke="#8c959f" stroke-width="1.5" marker-end="url(#arrow)"/>'
        )
    for n in p.order:
        x, y = xy(n)
        status = statuses.get(n)
        fill = FILLS.get(status or "", "#ffffff")
        out.append(f'<g class="stage" data-stage="{escape(n)}" data-status="{escape(status or "")}">')
        out.append(f'<rect x="{x}" y="{y}" width="{W}" height="{H}" rx="5" fill="{fill}" stroke="#57606a"/>')
        text_y = y + (15 if status else 22)
        out.append(f'<text x="{x + 8}" y="{text_y}">{escape(n if len(n) <= 26 else n[:25] + "…")}</text>')
        if status:
            out.append(f'<text x="{x + 8}" y="{y + 29}" fill="#57606a">{escape(status)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def render(p: Plan, fmt: str, out: IO[str], statuses: Mapping[str, str] | None = None) -> None:
    statuses = statuses or {}
    edges = [(u, v) for v in p.order for u in p.upstream(v)]
    if fmt == "svg":
        print(_svg(p, statuses), file=out)
    elif fmt == "dot":
        print(f'digraph "{p.pipeline.name}" {{', file=out)
        for n in p.order:
            status = statuses.get(n)
            style = f' [label="{_label(n, statuses)}", style=filled, fillcolor="{FILLS.get(status or "", "#ffffff")}"]'
            print(f'  "{n}"{style if status else ""};', file=out)
        for u, v in edges:
            print(f'  "{u}" -> "{v}";', file=out)
        print("}", file=out)
    elif fmt == "mermaid":
        ids = {n: f"s{i}" for i, n in enumerate(p.order)}
        print("graph LR", file=out)
        for n in p.order:
            label = f"{n}<br/>{statuses[n]}" if n in statuses else n
            print(f'  {ids[n]}["{label}"]', file=out)
        for u, v in edges:
            print(f"  {ids[u]} --> {ids[v]}", file=out)
        for status in sorted(set(statuses.values())):
            members = ",".join(ids[n] for n in p.order if statuses.get(n) == status)
            print(f"  classDef {status} fill:{FILLS.get(status, '#ffffff')}", file=out)
            print(f"  class {members} {status}", file=out)
    else:
        for n in p.order:
            ups = p.upstream(n)
            mark = f" [{statuses[n]}]" if n in statuses else ""
            print(f"{n}{mark} <- {', '.join(ups)}" if ups else f"{n}{mark}", file=out)

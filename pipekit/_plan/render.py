"""``pipekit graph``: the stage graph as text, Graphviz dot, Mermaid or SVG, with the statuses
of a recorded run when ``--run`` names one. The SVG is drawn by pipekit itself (Graphviz is not
needed): columns by depth, an edge from each stage to the stages that need it."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import IO

from pipekit._plan.graph import Plan

__all__ = ["FILLS", "render"]

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
W, H, GX, GY = 180, 36, 60, 14


def _label(name: str, statuses: Mapping[str, str]) -> str:
    return f"{name}\\n{statuses[name]}" if name in statuses else name


def _svg(p: Plan, statuses: Mapping[str, str]) -> str:
    place = p.dag.layout(p.order)
    columns = 1 + max((c for c, _ in place.values()), default=0)
    rows = 1 + max((r for _, r in place.values()), default=0)
    width, height = 20 + columns * (W + GX) - GX, 2 * GY + rows * (H + GY)

    def xy(n: str) -> tuple[int, int]:
        c, r = place[n]
        return 10 + c * (W + GX), GY + r * (H + GY)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"'
        ' font-size="12">',
        f"<title>{escape(p.pipeline.name)}</title>",
    ]
    for n in p.order:
        for u in p.upstream(n):
            (x1, y1), (x2, y2) = xy(u), xy(n)
            out.append(f'<line x1="{x1 + W}" y1="{y1 + H // 2}" x2="{x2}" y2="{y2 + H // 2}" stroke="#8c959f"/>')
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

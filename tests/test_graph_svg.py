"""`pipekit graph --format svg` (issue 28 item 7): an arrowhead on every edge, and every edge drawn
where no stage's box covers it, checked on the parsed SVG and by hit-testing in Chromium."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_console

ROOT = Path(__file__).parent.parent
NS = "{http://www.w3.org/2000/svg}"

DIAMOND = """
import pipekit as pk

@pk.stage
def a(ctx): pass

@pk.stage(needs=[a])
def b(ctx): pass

@pk.stage(needs=[a])
def c(ctx): pass

@pk.stage(needs=[b, c])
def d(ctx): pass
"""

# edges that skip one, two and three columns, over stages in the rows they start and end in
SKIPS = """
import pipekit as pk

@pk.stage
def a(ctx): pass

@pk.stage
def lone(ctx): pass

@pk.stage(needs=[a])
def b(ctx): pass

@pk.stage(needs=[b, a])
def c(ctx): pass

@pk.stage(needs=[c, a, b])
def d(ctx): pass

@pk.stage(needs=[d, a, lone])
def e(ctx): pass
"""

FAN = """
import pipekit as pk

@pk.stage
def root(ctx): pass

leaves = [pk.stage(name=f"leaf{i}", needs=[root])(lambda ctx: None) for i in range(12)]

@pk.stage(needs=[*leaves, root])
def gather(ctx): pass
"""


def _svg(tmp_path: Path, source: str | None, folder: Path | None = None) -> str:
    if source is not None:
        folder = tmp_path
        (folder / "pipeline.py").write_text(source)
    assert folder is not None
    proc = run_console(["graph", "-f", str(folder), "--format", "svg"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _edges_of(tmp_path: Path, source: str | None, folder: Path | None) -> set[tuple[str, str]]:
    proc = run_console(["graph", "-f", str(folder or tmp_path)])
    edges = set()
    for line in proc.stdout.splitlines():
        if " <- " in line:
            node, ups = line.split(" <- ")
            edges |= {(u, node.strip()) for u in ups.split(", ")}
    return edges


def _points(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", d)]


def _samples(points: list[tuple[float, float]], skip: float = 2.0) -> list[tuple[float, float]]:
    """Points every pixel along the polyline, leaving out ``skip`` pixels at each end."""
    out = []
    total = sum(math.dist(p, q) for p, q in zip(points, points[1:]))
    walked = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:]):
        length = math.dist((x1, y1), (x2, y2))
        for i in range(int(length) + 1):
            t = i / length if length else 0
            along = walked + i
            if skip <= along <= total - skip:
                out.append((x1 + (x2 - x1) * t, y1 + (y2 - y1) * t))
        walked += length
    return out


GRAPHS = {"diamond": DIAMOND, "skip-layer": SKIPS, "fan-out": FAN, "seed-flow": None}


@pytest.mark.parametrize("name", GRAPHS)
def test_every_edge_has_an_arrowhead_and_a_path_no_stage_covers(tmp_path: Path, name: str) -> None:
    folder = ROOT / "examples" / "seed-flow" if GRAPHS[name] is None else None
    svg = ET.fromstring(_svg(tmp_path, GRAPHS[name], folder))
    markers = {m.get("id") for m in svg.iter(f"{NS}marker")}
    boxes = [
        tuple(float(r.get(k, 0)) for k in ("x", "y", "width", "height"))
        for g in svg.iter(f"{NS}g")
        if g.get("class") == "stage"
        for r in g.iter(f"{NS}rect")
    ]
    paths = [p for p in svg.iter(f"{NS}path") if p.get("class") == "edge"]
    drawn = {(p.get("data-from"), p.get("data-to")) for p in paths}
    assert drawn == _edges_of(tmp_path, GRAPHS[name], folder) and len(paths) == len(drawn)
    for p in paths:
        assert p.get("marker-end", "").removeprefix("url(#").removesuffix(")") in markers
        samples = _samples(_points(p.get("d", "")))
        assert samples, p.get("d")
        covered = [(x, y) for x, y in samples for bx, by, bw, bh in boxes if bx < x < bx + bw and by < y < by + bh]
        assert covered == [], f"edge {p.get('data-from')} -> {p.get('data-to')} runs under a stage at {covered[:3]}"
    width = float(svg.get("width", 0))
    assert all(x + w <= width for x, _, w, _ in boxes)


def test_the_seed_flow_edge_that_skips_a_column_goes_around_the_test_stage(tmp_path: Path) -> None:
    svg = ET.fromstring(_svg(tmp_path, None, ROOT / "examples" / "seed-flow"))
    [edge] = [p for p in svg.iter(f"{NS}path") if (p.get("data-from"), p.get("data-to")) == ("build", "deploy")]
    assert len(_points(edge.get("d", ""))) > 2  # not the straight line through `test` it was


HIT_TEST = """
const out = [];
for (const p of document.querySelectorAll('path.edge')) {
  const total = p.getTotalLength(), seen = {edge: 0, stage: 0};
  for (let at = 3; at < total - 3; at += 2) {
    const pt = p.getPointAtLength(at);
    const r = document.documentElement.getBoundingClientRect();
    const hit = document.elementFromPoint(pt.x + r.left, pt.y + r.top);
    if (hit && hit.closest('g.stage')) seen.stage += 1;
    else if (hit && hit.classList.contains('edge')) seen.edge += 1;
  }
  out.push([p.dataset.from + '->' + p.dataset.to, seen.edge, seen.stage]);
}
return out;
"""


@pytest.mark.parametrize("name", ["skip-layer", "seed-flow"])
def test_in_chromium_no_stage_is_on_top_of_an_edge(tmp_path: Path, browser: Any, name: str) -> None:
    folder = ROOT / "examples" / "seed-flow" if GRAPHS[name] is None else None
    page = tmp_path / "graph.svg"
    page.write_text(_svg(tmp_path, GRAPHS[name], folder))
    browser.set_window_size(1600, 900)
    browser.get(page.as_uri())
    seen = browser.execute_script(HIT_TEST)
    assert seen and all(stage == 0 and edge > 0 for _, edge, stage in seen), seen

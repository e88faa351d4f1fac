"""The report's graph of a long chain and a wide fan-out (issue 28 item 7): it fits the page's
width, zooms with the wheel and pans with a drag; in a real Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import run_console

# host stages: 30 in a chain, and 12 that fan out of the first and back into the last
PIPELINE = """
import pipekit as pk

chain = []
for i in range(30):
    chain.append(pk.stage(name=f"step{i:02d}", needs=chain[-1:])(lambda ctx: None))
fan = [pk.stage(name=f"leaf{i:02d}", needs=[chain[0]])(lambda ctx: None) for i in range(12)]
pk.stage(name="gather", needs=[*fan, chain[-1], chain[0]])(lambda ctx: None)
"""

SIZE = """
const svg = document.getElementById('dag'), r = svg.getBoundingClientRect();
const nodes = [...document.querySelectorAll('#dag .node')].map(n => n.getBoundingClientRect());
return {
  svgLeft: r.left, svgRight: r.right, viewport: document.documentElement.clientWidth,
  scrollWidth: document.documentElement.scrollWidth,
  nodesRight: Math.max(...nodes.map(n => n.right)), nodesLeft: Math.min(...nodes.map(n => n.left)),
  nodes: nodes.length, edges: document.querySelectorAll('#dag path.edge[marker-end]').length,
  transform: document.getElementById('dag-view').getAttribute('transform'),
};
"""

WHEEL = """
const svg = document.getElementById('dag'), r = svg.getBoundingClientRect();
svg.dispatchEvent(new WheelEvent('wheel', {deltaY: -400, clientX: r.left + 50, clientY: r.top + 20,
  bubbles: true, cancelable: true}));
return document.getElementById('dag-view').getAttribute('transform');
"""

DRAG = """
const svg = document.getElementById('dag'), r = svg.getBoundingClientRect();
const at = (x, y) => ({clientX: r.left + x, clientY: r.top + y, bubbles: true});
svg.dispatchEvent(new MouseEvent('mousedown', at(200, 20)));
window.dispatchEvent(new MouseEvent('mousemove', at(80, 5)));
window.dispatchEvent(new MouseEvent('mouseup', at(80, 5)));
return document.getElementById('dag-view').getAttribute('transform');
"""


def _transform(text: str) -> tuple[float, float, float]:
    import re

    found = re.fullmatch(r"translate\((-?[\d.e-]+),(-?[\d.e-]+)\) scale\(([\d.e-]+)\)", text)
    assert found, text
    tx, ty, k = found.groups()
    return float(tx), float(ty), float(k)


def test_a_long_chain_fits_the_page_and_zooms_and_pans(tmp_path: Path, browser: Any) -> None:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    proc = run_console(["run", "--progress", "plain", "--report", "report.html"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    browser.set_window_size(1280, 900)
    browser.get((tmp_path / "report.html").as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    size = browser.execute_script(SIZE)
    assert size["nodes"] == 43 and size["edges"] == 29 + 12 + 14  # chain, fan out, fan in (+ last, first)
    assert size["scrollWidth"] <= size["viewport"]  # the page does not scroll sideways
    assert size["svgRight"] <= size["viewport"] and size["nodesRight"] <= size["svgRight"] + 1
    assert size["nodesLeft"] >= size["svgLeft"] - 1
    assert _transform(size["transform"]) == (0, 0, 1)

    zoomed = _transform(browser.execute_script(WHEEL))
    assert zoomed[2] > 1.5  # the wheel zoomed in, around the pointer
    panned = _transform(browser.execute_script(DRAG))
    assert panned[2] == zoomed[2] and panned[0] < zoomed[0] - 100 and panned[1] < zoomed[1]  # dragged left, up
    assert browser.execute_script(SIZE)["scrollWidth"] <= size["viewport"]  # zooming does not widen the page

    browser.execute_script("document.getElementById('dag').dispatchEvent(new MouseEvent('dblclick', {bubbles: true}))")
    assert _transform(browser.execute_script(SIZE)["transform"]) == (0, 0, 1)
    # a click on a stage still selects it (a click is not a drag)
    click = "document.querySelector(\".node[data-stage='gather']\").dispatchEvent(new MouseEvent('click'))"
    browser.execute_script(click)
    assert browser.find_element("css selector", "#stage h2").text == "gather"

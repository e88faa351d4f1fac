"""`pipekit report` and `run --report`: one self-contained page, tested in a real Chromium."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from pipekit._cli.main import main
from pipekit._history.store import History

SECRET = "sup3r-secret-tok"
PIPELINE = """\
import pipekit as pk

TOKEN = pk.secret("API_TOKEN")


@pk.stage(image={image!r})
def build(ctx):
    ctx.sh("echo building; echo the token is $T", env={{"T": TOKEN}})
    ctx.sh("mkdir -p dist && echo app > dist/app.txt")
    ctx.archive("dist/app.txt")


@pk.stage(image={image!r})
def lint(ctx):
    ctx.sh("echo linting; sleep 0.3")


@pk.stage(image={image!r})
def test(ctx, build, lint):
    ctx.sh("for i in $(seq 1 50); do echo test line $i; done; echo needle-in-the-log; exit 3")


@pk.stage(image={image!r})
def deploy(ctx, test):
    pass
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, busybox_image: str) -> tuple[Path, Path]:
    """A run with a success, a failure, a skipped stage and a secret, with its report."""
    folder = tmp_path_factory.mktemp("report")
    (folder / "pipeline.py").write_text(PIPELINE.format(image=busybox_image))
    os.environ["API_TOKEN"] = SECRET
    try:
        code = main(["run", "-f", str(folder), "--report", str(folder / "out" / "report.html")], out=io.StringIO())
    finally:
        del os.environ["API_TOKEN"]
    assert code == 1
    return folder, folder / "out" / "report.html"


def _open(browser: Any, page: Path) -> None:
    browser.get(page.as_uri())
    browser.get_log("browser")  # what earlier pages logged


def test_the_page_is_self_contained_and_holds_no_secret(report: tuple[Path, Path]) -> None:
    _, page = report
    html = page.read_text()
    assert SECRET not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert "default-src 'none'" in html


def test_the_page_opens_with_no_error_and_no_request_and_shows_every_stage(
    browser: Any, report: tuple[Path, Path]
) -> None:
    _, page = report
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    nodes = {
        n.get_attribute("data-stage"): n.get_attribute("data-status")
        for n in browser.find_elements("css selector", ".node")
    }
    assert nodes == {"build": "succeeded", "lint": "succeeded", "test": "failed", "deploy": "skipped"}
    assert SECRET not in browser.page_source


def test_clicking_the_failed_stage_shows_its_error_and_last_lines(browser: Any, report: tuple[Path, Path]) -> None:
    _, page = report
    _open(browser, page)
    browser.find_element("css selector", ".node[data-stage='build']").click()
    assert browser.find_elements("id", "stage-error") == []
    browser.find_element("css selector", ".node[data-stage='test']").click()
    assert "exited with code 3" in browser.find_element("id", "stage-error").text
    tail = browser.find_element("id", "stage-tail").text.splitlines()
    assert tail[-1] == "needle-in-the-log" and "test line 50" in tail
    codes = [row.text for row in browser.find_elements("css selector", "#commands tr")]
    assert len(codes) == 1 and codes[0].startswith("3 ")


def test_the_timeline_bars_are_in_the_order_the_stages_ran(browser: Any, report: tuple[Path, Path]) -> None:
    folder, page = report
    _open(browser, page)
    history = History(folder, create=False)
    try:
        run_id = history.runs(1)[0].id
        ran = sorted((s for s in history.stages(run_id) if s.started), key=lambda s: s.started or 0)
    finally:
        history.close()
    bars = browser.find_elements("css selector", "#timeline .bar")
    assert [b.get_attribute("data-stage") for b in bars] == [s.name for s in ran]
    ys = [float(b.find_element("css selector", "rect.run").get_attribute("y")) for b in bars]
    xs = [float(b.find_element("css selector", "rect.run").get_attribute("x")) for b in bars]
    assert ys == sorted(ys) and xs == sorted(xs)


def test_search_finds_a_line_in_the_logs(browser: Any, report: tuple[Path, Path]) -> None:
    _, page = report
    _open(browser, page)
    browser.find_element("id", "q").send_keys("needle-in")
    hits = [h.text for h in browser.find_elements("css selector", "#hits .hit")]
    assert len([h for h in hits if h.startswith("test:") and h.endswith(": needle-in-the-log")]) == 1
    assert all("needle-in" in h for h in hits)
    log = browser.find_element("id", "stage-log")
    log.find_element("css selector", "summary").click()
    # the whole log is added by the details' toggle event, which the browser fires after the click
    from selenium.webdriver.support.ui import WebDriverWait

    pre = WebDriverWait(browser, 10).until(lambda b: log.find_elements("css selector", "pre"))[0]
    assert "needle-in-the-log" in pre.text


def test_a_run_with_100k_log_lines_stays_usable(tmp_path: Path, busybox_image: str, browser: Any) -> None:
    (tmp_path / "pipeline.py").write_text(
        f"import pipekit as pk\n\n@pk.stage(image={busybox_image!r})\ndef talk(ctx):\n    ctx.sh('seq 1 100000')\n"
    )
    assert main(["run", "-f", str(tmp_path), "--report", str(tmp_path / "r.html")], out=io.StringIO()) == 0
    _open(browser, tmp_path / "r.html")
    assert browser.find_element("css selector", ".node[data-stage='talk']").get_attribute("data-status") == "succeeded"
    browser.find_element("id", "q").send_keys("99999")
    hits = [h.text for h in browser.find_elements("css selector", "#hits .hit")]
    assert len(hits) == 1 and hits[0].startswith("talk:") and hits[0].endswith(": 99999")
    assert "Log (100003 lines)" in browser.find_element("id", "stage-log").text  # started, $ seq, 100,000, = ok


def test_report_of_a_recorded_run_from_the_command_line(report: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = report
    out = io.StringIO()
    assert main(["report", "last", "-f", str(folder), "-o", str(tmp_path / "again.html")], out=out) == 0
    assert "wrote" in out.getvalue() and (tmp_path / "again.html").read_text().startswith("<!DOCTYPE html>")
    err = io.StringIO()
    assert main(["report", "nope", "-f", str(folder)], out=io.StringIO(), err=err) == 2
    assert "nope" in err.getvalue()


def test_graph_shows_a_runs_statuses_as_text_dot_mermaid_and_svg(report: tuple[Path, Path]) -> None:
    import xml.etree.ElementTree as ET

    folder, _ = report
    expected = {"build": "succeeded", "lint": "succeeded", "test": "failed", "deploy": "skipped"}

    def graph(*args: str) -> str:
        out = io.StringIO()
        assert main(["graph", "-f", str(folder), "--run", "last", *args], out=out) == 0
        return out.getvalue()

    assert "test [failed] <- build, lint" in graph().splitlines()
    assert '"test" [label="test\\nfailed", style=filled, fillcolor="#ffebe9"];' in graph("--format", "dot")
    assert "classDef failed fill:#ffebe9" in graph("--format", "mermaid")
    svg = ET.fromstring(graph("--format", "svg"))
    ns = "{http://www.w3.org/2000/svg}"
    drawn = {g.get("data-stage"): g.get("data-status") for g in svg.iter(f"{ns}g")}
    assert drawn == expected
    edges = {(e.get("data-from"), e.get("data-to")) for e in svg.iter(f"{ns}path") if e.get("class") == "edge"}
    assert edges == {("build", "test"), ("lint", "test"), ("test", "deploy")}
    plain = io.StringIO()
    assert main(["graph", "-f", str(folder), "--format", "svg"], out=plain) == 0
    assert {g.get("data-status") for g in ET.fromstring(plain.getvalue()).iter(f"{ns}g")} == {""}


def test_the_timeline_marks_where_a_stage_was_retried(tmp_path: Path, busybox_image: str, browser: Any) -> None:
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        f"@pk.stage(image={busybox_image!r}, retries=2)\n"
        "def flaky(ctx):\n"
        "    ctx.sh('test -f .tried || { touch .tried; exit 1; }')\n"
    )
    assert main(["run", "-f", str(tmp_path), "--report", str(tmp_path / "r.html")], out=io.StringIO()) == 0
    _open(browser, tmp_path / "r.html")
    bar = browser.find_element("css selector", "#timeline .bar[data-stage='flaky']")
    assert len(bar.find_elements("css selector", "line.retry")) == 1
    assert "(2 attempts)" in bar.text

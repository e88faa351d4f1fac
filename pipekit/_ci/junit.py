"""What a run leaves for the CI around it: a JUnit file (``--junit``) and GitHub's job summary.

The JUnit file has one ``testsuite`` for the run, with a ``testcase`` per stage (a failure with the
stage's error, skipped with the reason, the time), and one ``testsuite`` per test suite the stages
read with ``ctx.junit``, so a CI's test view shows both. It follows the JUnit XML that Jenkins'
``junit`` step and GitLab's ``artifacts:reports:junit`` read.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any

from pipekit._ci.output import how_to_approve
from pipekit._core.results import RunResult, StageResult, StageStatus
from pipekit._core.testreport import TestCase, TestReport

__all__ = ["CiReport", "github_summary", "junit_xml"]

S = StageStatus


class CiReport:
    """Collects a run's stage results, test reports and artifacts as they come: a run observer,
    and a tee in front of the run's records (behind the masking, so it holds no secret).

    ``mask`` is the run's masker: what is written from here is masked again as it is written,
    with every value known by then (a secret first read after a report was)."""

    def __init__(self, inner: Any, mask: Callable[[str], str] = lambda text: text) -> None:
        self.inner = inner
        self.mask = mask
        self._lock = threading.Lock()
        self.tests: dict[str, list[TestReport]] = {}
        self.artifacts: list[tuple[str, str, int, str]] = []  # stage, path, size, sha256
        self.stages: dict[str, StageResult] = {}

    # -- records --------------------------------------------------------------------------
    def add_artifact(self, stage: str, path: str, data: bytes) -> str:
        digest: str = self.inner.add_artifact(stage, path, data)
        with self._lock:
            self.artifacts.append((stage, path, len(data), digest))
        return digest

    def add_tests(self, stage: str, report: TestReport) -> None:
        self.inner.add_tests(stage, report)
        with self._lock:
            self.tests.setdefault(stage, []).append(report)

    # -- observer -------------------------------------------------------------------------
    def run_started(self, run_id: str, plan: Any) -> None:
        return None

    def stage_started(self, run_id: str, name: str, position: int) -> None:
        return None

    def stage_finished(self, run_id: str, result: StageResult, position: int) -> None:
        self.stages[result.name] = result

    def run_finished(self, run_id: str, result: RunResult) -> None:
        self.stages.update(result.stages)


def _fmt(seconds: float | None) -> str:
    return f"{seconds or 0.0:.3f}"


def _stage_case(suite: ET.Element, classname: str, r: StageResult, run_id: str) -> str:
    case = ET.SubElement(suite, "testcase", classname=classname, name=r.name, time=_fmt(r.duration_s))
    error = r.error or ""
    first = next((line for line in error.splitlines() if line.strip()), r.status.value)
    if r.status in (S.FAILED, S.INTERRUPTED):
        node = ET.SubElement(case, "failure", message=first, type=f"pipekit.{r.status.value}")
        node.text = error
        return "failure"
    if r.status == S.AWAITING:
        ET.SubElement(case, "skipped", message=f"{r.reason or 'awaiting approval'}; {how_to_approve(run_id, r.name)}")
        return "skipped"
    if r.status in (S.SKIPPED, S.CANCELLED, S.ALLOWED_FAILURE):
        why = r.reason or (f"failed, and allowed to fail: {first}" if r.status == S.ALLOWED_FAILURE else r.status.value)
        ET.SubElement(case, "skipped", message=why)
        return "skipped"
    if r.reason:  # cached or restored: say where the result came from
        ET.SubElement(case, "system-out").text = r.reason
    return "passed"


def _report_suite(root: ET.Element, stage: str, name: str, cases: list[TestCase]) -> None:
    count = {o: sum(1 for c in cases if c.outcome == o) for o in ("failure", "error", "skipped")}
    suite = ET.SubElement(
        root,
        "testsuite",
        name=f"{stage}: {name}" if name else stage,
        tests=str(len(cases)),
        failures=str(count["failure"]),
        errors=str(count["error"]),
        skipped=str(count["skipped"]),
        time=_fmt(sum(c.time for c in cases)),
    )
    for c in cases:
        case = ET.SubElement(suite, "testcase", classname=c.classname, name=c.name, time=_fmt(c.time))
        if c.outcome in ("failure", "error"):
            ET.SubElement(case, c.outcome, message=c.message).text = c.text
        elif c.outcome == "skipped":
            ET.SubElement(case, "skipped", message=c.message)


def _mask_tree(root: ET.Element, mask: Callable[[str], str]) -> None:
    """Every attribute and text of the document masked, before XML escaping changes their form."""
    for node in root.iter():
        for key, value in node.attrib.items():
            node.set(key, mask(value))
        if node.text:
            node.text = mask(node.text)


def junit_xml(pipeline: str, run_id: str, stages: Mapping[str, StageResult], report: CiReport) -> str:
    """The run as a JUnit XML document."""
    root = ET.Element("testsuites", name=f"pipekit {pipeline}")
    suite = ET.SubElement(root, "testsuite", name=f"pipekit: {pipeline}")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="run_id", value=run_id)
    outcomes = [_stage_case(suite, f"pipekit.{pipeline}", r, run_id) for r in stages.values()]
    suite.set("tests", str(len(outcomes)))
    suite.set("failures", str(outcomes.count("failure")))
    suite.set("errors", "0")
    suite.set("skipped", str(outcomes.count("skipped")))
    suite.set("time", _fmt(sum(r.duration_s or 0 for r in stages.values())))
    for stage, reports in report.tests.items():
        by_suite: dict[str, list[TestCase]] = {}
        for rep in reports:
            for c in rep.cases:
                by_suite.setdefault(c.suite, []).append(c)
        for name, cases in by_suite.items():
            _report_suite(root, stage, name, cases)
    totals = {k: sum(int(s.get(k, "0")) for s in root) for k in ("tests", "failures", "errors", "skipped")}
    for key, value in totals.items():
        root.set(key, str(value))
    _mask_tree(root, report.mask)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_ICONS = {
    "succeeded": "✅",
    "cached": "✅",
    "restored": "✅",
    "failed": "❌",
    "interrupted": "❌",
    "awaiting_approval": "⏸️",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def github_summary(result: RunResult, report: CiReport) -> str:
    """The Markdown for ``$GITHUB_STEP_SUMMARY``: stages, tests, artifacts."""
    out = [
        f"### pipekit: {result.pipeline} {result.status.value}",
        "",
        "| Stage | Status | Duration |",
        "| --- | --- | --- |",
    ]
    for r in result.stages.values():
        icon = _ICONS.get(r.status.value, "⚪")
        status = r.status.value + (f" ({_cell(r.reason)})" if r.reason else "")
        took = f"{r.duration_s:.2f} s" if r.duration_s is not None else "-"
        out.append(f"| {_cell(r.name)} | {icon} {status} | {took} |")
    awaiting = [r.name for r in result.stages.values() if r.status == S.AWAITING]
    if awaiting:
        out += ["", "**Awaiting approval**", ""]
        out += [f"- `{_cell(name)}`: {how_to_approve(result.run_id, name)}" for name in awaiting]
    if report.tests:
        out += ["", "**Tests**", ""]
        for stage, reports in report.tests.items():
            for rep in reports:
                out.append(f"- `{stage}`: {rep.summary()}")
                out += [f"  - ❌ `{_cell(f.name)}`: {_cell(f.message)}" for f in rep.failed[:20]]
    if report.artifacts:
        out += ["", "**Artifacts**", "", "| Stage | Path | Size | SHA-256 |", "| --- | --- | --- | --- |"]
        for stage, path, size, digest in report.artifacts:
            out.append(f"| {_cell(stage)} | `{_cell(path)}` | {size} B | `{digest[:12]}` |")
    out.append(f"\nRun `{result.run_id}` in {result.duration_s:.2f} s.")
    return report.mask("\n".join(out) + "\n")

"""JUnit XML test reports (pytest --junitxml, unittest-xml-reporting, Maven Surefire)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

__all__ = ["FailedTest", "TestCase", "TestReport", "parse_junit", "parse_junit_data"]


@attrs.frozen
class TestCase:
    """One test of a report, as read (kept for the run's own JUnit file; not stored in the history)."""

    suite: str
    classname: str
    name: str
    time: float
    outcome: str  # passed, failure, error or skipped
    message: str = ""
    text: str = ""


@attrs.frozen
class FailedTest:
    name: str
    message: str
    kind: str  # failure or error


@attrs.frozen
class TestReport:
    """Counts over every report file read, and the failed tests with their messages."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failed: tuple[FailedTest, ...] = ()
    files: tuple[str, ...] = ()
    #: every test read, for `pipekit run --junit` (in memory for the run only)
    cases: tuple[TestCase, ...] = attrs.field(default=(), eq=False, repr=False)

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.errors == 0

    def summary(self) -> str:
        return (
            f"{self.tests} tests: {self.passed} passed, {self.failures} failed, {self.errors} errors,"
            f" {self.skipped} skipped"
        )


def _cases(root: ET.Element) -> Iterable[tuple[str, ET.Element]]:
    for suite in list(root.iter("testsuite")) or [root]:
        for case in suite.findall("testcase"):
            yield suite.get("name") or "", case


def _seconds(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def _case(suite: str, case: ET.Element) -> TestCase:
    for kind in ("failure", "error", "skipped"):
        node = case.find(kind)
        if node is not None:
            text = (node.text or "").strip()
            lines = text.splitlines()
            message = node.get("message") or (lines[-1] if lines and kind != "skipped" else "")
            outcome = kind
            break
    else:
        outcome, message, text = "passed", "", ""
    return TestCase(
        suite, case.get("classname") or "", case.get("name") or "", _seconds(case.get("time")), outcome, message, text
    )


def parse_junit(paths: Iterable[Path], *, base: Path | None = None) -> TestReport:
    """Read JUnit XML files; a file that is not JUnit XML raises ValueError naming it."""
    files = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path} is not a readable JUnit XML report: {e.strerror}") from e
        files.append((str(path.relative_to(base)) if base and path.is_relative_to(base) else str(path), data))
    return parse_junit_data(files)


def parse_junit_data(files: Iterable[tuple[str, bytes]]) -> TestReport:
    """Read JUnit XML reports given as (name, content), as read once by ``ctx.junit``; a report
    that is not JUnit XML raises ValueError naming it."""
    import xml.etree.ElementTree as ET

    cases: list[TestCase] = []
    names = []
    for name, data in files:
        try:
            root = ET.fromstring(data)
        except ET.ParseError as e:
            raise ValueError(f"{name} is not a readable JUnit XML report: {e}") from e
        if root.tag not in ("testsuites", "testsuite"):
            raise ValueError(f"{name} is not a JUnit XML report (its root is <{root.tag}>)")
        names.append(name)
        cases += [_case(suite, case) for suite, case in _cases(root)]
    failed = [
        FailedTest(".".join(p for p in (c.classname, c.name) if p), c.message[:500], c.outcome)
        for c in cases
        if c.outcome in ("failure", "error")
    ]
    count = {o: sum(1 for c in cases if c.outcome == o) for o in ("failure", "error", "skipped")}
    return TestReport(
        len(cases), count["failure"], count["error"], count["skipped"], tuple(failed), tuple(names), tuple(cases)
    )

"""JUnit XML test reports (pytest --junitxml, unittest-xml-reporting, Maven Surefire)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import attrs

__all__ = ["FailedTest", "TestReport", "parse_junit"]


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


def _cases(root: ET.Element) -> Iterable[ET.Element]:
    return root.iter("testcase")


def parse_junit(paths: Iterable[Path], *, base: Path | None = None) -> TestReport:
    """Read JUnit XML files; a file that is not JUnit XML raises ValueError naming it."""
    tests = failures = errors = skipped = 0
    failed: list[FailedTest] = []
    files = []
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as e:
            raise ValueError(f"{path} is not a readable JUnit XML report: {e}") from e
        if root.tag not in ("testsuites", "testsuite"):
            raise ValueError(f"{path} is not a JUnit XML report (its root is <{root.tag}>)")
        files.append(str(path.relative_to(base)) if base and path.is_relative_to(base) else str(path))
        for case in _cases(root):
            tests += 1
            name = ".".join(p for p in (case.get("classname"), case.get("name")) if p)
            for kind in ("failure", "error"):
                node = case.find(kind)
                if node is not None:
                    lines = (node.text or "").strip().splitlines()
                    message = node.get("message") or (lines[-1] if lines else "")
                    failed.append(FailedTest(name, str(message)[:500], kind))
                    if kind == "failure":
                        failures += 1
                    else:
                        errors += 1
                    break
            else:
                if case.find("skipped") is not None:
                    skipped += 1
    return TestReport(tests, failures, errors, skipped, tuple(failed), tuple(files))

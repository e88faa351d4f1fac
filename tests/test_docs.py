"""The pipelines shown in the docs are valid pipelines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pipekit as pk

ROOT = Path(__file__).parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# A python block that starts with `import pipekit as pk` is a whole pipeline: it must validate, and
# run green on the local engine unless the line before it is this marker (it needs a registry,
# a secret or a Dockerfile that the docs do not show).
VALIDATE_ONLY = "<!-- docs-test: validate-only -->"
BLOCK = re.compile(r"(<!-- docs-test: validate-only -->\n)?```python\n(import pipekit as pk\n.*?)```", re.S)


def _pipeline_blocks(runnable_only: bool = False) -> list[tuple[str, str]]:
    blocks = []
    for page in PAGES:
        for i, (marker, code) in enumerate(BLOCK.findall(page.read_text())):
            if runnable_only and marker:
                continue
            blocks.append((f"{page.name}#{i}", code))
    return blocks


def test_the_docs_have_pipelines() -> None:
    """The collector below finds the docs' pipelines (so the next test cannot pass empty)."""
    assert len(_pipeline_blocks()) >= 5


@pytest.mark.parametrize(("where", "code"), _pipeline_blocks(), ids=[w for w, _ in _pipeline_blocks()])
def test_docs_pipeline_is_valid(where: str, code: str, tmp_path: Path) -> None:
    """Each pipeline in the docs loads and validates without errors."""
    (tmp_path / "pipeline.py").write_text(code)
    pipeline = pk.load(tmp_path / "pipeline.py")
    assert pk.find_errors(pipeline) == []
    assert pk.plan(pipeline).order


@pytest.mark.docker
@pytest.mark.parametrize(("where", "code"), _pipeline_blocks(True), ids=[w for w, _ in _pipeline_blocks(True)])
def test_docs_pipeline_runs(where: str, code: str, tmp_path: Path, run_on_docker: object) -> None:
    """Each pipeline in the docs runs green (its alpine images mapped to the local busybox)."""
    import subprocess

    (tmp_path / "pipeline.py").write_text(code)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c"],
    ):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # for pk.changed
    result, _ = run_on_docker(tmp_path / "pipeline.py")  # type: ignore[operator]
    assert result.status == "succeeded", result.stages

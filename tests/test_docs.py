"""The pipelines shown in the docs are valid pipelines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pipekit as pk

ROOT = Path(__file__).parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _pipeline_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in PAGES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            if "@pk.stage" in code or ".stage" in code and "pk.Pipeline(" in code:
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
@pytest.mark.parametrize(("where", "code"), _pipeline_blocks(), ids=[w for w, _ in _pipeline_blocks()])
def test_docs_pipeline_runs(where: str, code: str, tmp_path: Path, run_on_docker: object) -> None:
    """Each pipeline in the docs runs green (its alpine images mapped to the local busybox)."""
    (tmp_path / "pipeline.py").write_text(code)
    result, _ = run_on_docker(tmp_path / "pipeline.py")  # type: ignore[operator]
    assert result.status == "succeeded", result.stages

"""pk.load: importing a pipeline.py and collecting its stages."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipekit as pk

PIPELINES = Path(__file__).parent / "pipelines"
ROOT = Path(__file__).parent.parent


def test_collects_stages_in_definition_order() -> None:
    """The stages a module defines become the pipeline's, in the order they were written."""
    p = pk.load(ROOT / "examples" / "hello" / "pipeline.py")
    assert [s.name for s in p.stages] == ["lint", "version", "package"]
    assert p.name == "hello"
    assert p.path == str((ROOT / "examples" / "hello" / "pipeline.py").resolve())


def test_folder_means_its_pipeline_py() -> None:
    """A folder stands for the pipeline.py inside it."""
    p = pk.load(ROOT / "examples" / "hello")
    assert len(p.stages) == 3


def test_explicit_pipeline_collects_bare_stages_too() -> None:
    """A module's pk.Pipeline is used, with its name, and gets the module's bare stages."""
    p = pk.load(PIPELINES / "explicit.py")
    assert p.name == "explicit"
    assert [s.name for s in p.stages] == ["first", "second-stage", "bare"]
    assert p.image_for(p.stages[0]) == "busybox"


def test_shadowed_stage_is_still_seen() -> None:
    """Defining a function twice keeps both stages, so validation can report the duplicate."""
    p = pk.load(PIPELINES / "duplicate.py")
    assert [s.name for s in p.stages] == ["build", "build"]


def test_missing_file() -> None:
    """A path with no pipeline says how to point at one."""
    with pytest.raises(pk.PipelineLoadError, match="No pipeline file at .*-f PATH"):
        pk.load(PIPELINES / "nope.py")


def test_syntax_error_is_reported_with_its_line() -> None:
    """A syntax error names the file and line and shows the offending code, no pipekit frames."""
    with pytest.raises(pk.PipelineLoadError) as info:
        pk.load(PIPELINES / "syntax_error.py")
    message = str(info.value)
    assert "SyntaxError" in message
    assert 'syntax_error.py", line 5' in message
    assert "_dsl/loader.py" not in message
    assert info.value.exit_code == 2


def test_exception_on_import_shows_only_user_frames() -> None:
    """An exception while importing shows the user's traceback, trimmed of pipekit's frames."""
    with pytest.raises(pk.PipelineLoadError) as info:
        pk.load(PIPELINES / "raises_on_import.py")
    tb = info.value.traceback
    assert 'raises_on_import.py", line 5, in read_config' in tb
    assert 'raises_on_import.py", line 8, in <module>' in tb
    assert "KeyError: 'missing'" in tb
    assert "pipekit" + "/_loader.py" not in tb
    assert "importlib" not in tb


def test_pipeline_can_import_helpers_beside_it(tmp_path: Path) -> None:
    """pipeline.py can import a module that sits in its folder, and sys.path is restored."""
    import sys

    (tmp_path / "helpers_for_pipekit_test.py").write_text("IMAGE = 'busybox'\n")
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\nfrom helpers_for_pipekit_test import IMAGE\n\n"
        "@pk.stage(image=IMAGE)\ndef one(ctx):\n    pass\n"
    )
    before = list(sys.path)
    p = pk.load(tmp_path / "pipeline.py")
    assert p.stages[0].image == "busybox"
    assert sys.path == before
    sys.modules.pop("helpers_for_pipekit_test", None)


def test_loading_twice_gives_independent_pipelines() -> None:
    """Each load imports afresh: no state is shared between two loads."""
    a = pk.load(PIPELINES / "explicit.py")
    b = pk.load(PIPELINES / "explicit.py")
    assert a is not b
    assert len(a.stages) == len(b.stages) == 3

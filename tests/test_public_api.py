"""The public surface is deliberate: this test pins it."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pipekit
import pipekit.exceptions

ROOT = Path(__file__).parent.parent


#: The public names: the pin. Adding or removing one is a decision, made here and in pipekit/__init__.py.
PUBLIC = [
    "Approval",
    "BackendError",
    "BuildFailed",
    "BuildKitUnavailable",
    "CacheInputs",
    "CommandResult",
    "Condition",
    "Context",
    "Credentials",
    "CycleError",
    "Decision",
    "DuplicateStageError",
    "EngineUnavailable",
    "Environment",
    "FailedTest",
    "Image",
    "ImageNotFound",
    "Interrupted",
    "InvalidReference",
    "MatrixOutputs",
    "Outcome",
    "Param",
    "ParameterError",
    "Params",
    "PipekitError",
    "Pipeline",
    "PipelineError",
    "PipelineLoadError",
    "Plan",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnavailable",
    "Resources",
    "RunInfo",
    "RunResult",
    "Secret",
    "SecretMissing",
    "Service",
    "Stage",
    "StageCodeError",
    "StageFailed",
    "StageResult",
    "StageSignatureError",
    "StageStatus",
    "StepFailed",
    "TagNotFound",
    "TestReport",
    "Trigger",
    "UnknownStageError",
    "UsageError",
    "__version__",
    "branch",
    "changed",
    "cron",
    "env",
    "find_errors",
    "inputs",
    "load",
    "on_push",
    "param",
    "param_is",
    "plan",
    "post",
    "run",
    "secret",
    "stage",
]


def test_all_is_pinned() -> None:
    """pipekit.__all__ lists exactly the curated names, sorted, and each exists."""
    assert pipekit.__all__ == PUBLIC
    assert dir(pipekit) == PUBLIC
    for name in pipekit.__all__:
        assert hasattr(pipekit, name), name


def _type_checking_imports() -> dict[str, str]:
    """What the ``if TYPE_CHECKING:`` block of pipekit/__init__.py imports: name -> module, each as
    ``X as X`` (a re-export for mypy --strict and pyright)."""
    tree = ast.parse(Path(pipekit.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    imported = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module, ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: imported without 'as {alias.name}'"
            imported[alias.name] = node.module
    return imported


def test_type_checkers_see_exactly_the_lazy_names_from_the_same_modules() -> None:
    """The ``TYPE_CHECKING`` imports (what type checkers see) say what the lazy table does, and
    each lazy name is what its module defines."""
    assert _type_checking_imports() == pipekit._LAZY
    assert sum(len(names) for names in pipekit._PUBLIC.values()) == len(pipekit._LAZY), "a name listed twice"
    assert sorted([*pipekit._LAZY, "__version__", "run"]) == PUBLIC
    for name, module in pipekit._LAZY.items():
        assert getattr(importlib.import_module(module), name) is getattr(pipekit, name)


def test_a_user_checked_with_mypy_strict_sees_the_public_names(tmp_path: Path) -> None:
    """``pk.Pipeline``, ``from pipekit import stage``: explicitly exported, typed (not Any)."""
    (tmp_path / "user.py").write_text(
        "import pipekit as pk\nfrom pipekit import StageFailed, stage\n\n"
        "p: pk.Pipeline = pk.Pipeline(name='x', image='alpine')\n"
        "reveal_type(stage)\nreveal_type(StageFailed)\nreveal_type(pk.run)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull, "user.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pipekit._dsl.stage.Stage" in proc.stdout and "pipekit.exceptions.StageFailed" in proc.stdout
    assert "-> pipekit._core.results.RunResult" in proc.stdout


def test_exception_tree() -> None:
    """Every error derives from PipekitError and carries the exit code the CLI uses."""
    for name in pipekit.exceptions.__all__:
        cls = getattr(pipekit.exceptions, name)
        if name == "Interrupted":
            assert issubclass(cls, BaseException) and not issubclass(cls, Exception)
            continue
        assert issubclass(cls, pipekit.PipekitError), name
    assert pipekit.PipelineError.exit_code == 2
    assert pipekit.EngineUnavailable.exit_code == 3
    assert pipekit.StepFailed.exit_code == 1


def test_import_is_cheap_and_has_no_side_effects() -> None:
    """import pipekit neither imports the docker SDK nor configures structlog globally."""
    code = (
        "import sys, structlog; before = structlog.get_config(); import pipekit;"
        "assert 'docker' not in sys.modules, 'docker imported';"
        "assert structlog.get_config() == before, 'structlog configured'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

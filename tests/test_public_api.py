"""The public surface is deliberate: this test pins it."""

from __future__ import annotations

import subprocess
import sys

import pipekit
import pipekit.exceptions


def test_all_is_pinned() -> None:
    """pipekit.__all__ lists exactly the curated names, and each exists."""
    assert sorted(pipekit.__all__) == sorted(
        [
            "BackendError",
            "BuildFailed",
            "BuildKitUnavailable",
            "CommandResult",
            "Context",
            "Credentials",
            "Image",
            "InvalidReference",
            "Param",
            "ParameterError",
            "Params",
            "RegistryAuthError",
            "RegistryError",
            "RegistryUnavailable",
            "Resources",
            "Secret",
            "SecretMissing",
            "TagNotFound",
            "param",
            "secret",
            "Trigger",
            "cron",
            "on_push",
            "Condition",
            "MatrixOutputs",
            "Outcome",
            "RunInfo",
            "Service",
            "branch",
            "changed",
            "env",
            "param_is",
            "post",
            "CacheInputs",
            "FailedTest",
            "TestReport",
            "inputs",
            "CycleError",
            "DuplicateStageError",
            "EngineUnavailable",
            "ImageNotFound",
            "Interrupted",
            "PipekitError",
            "Pipeline",
            "PipelineError",
            "PipelineLoadError",
            "Plan",
            "RunResult",
            "Stage",
            "StageCodeError",
            "StageFailed",
            "StageResult",
            "StageSignatureError",
            "StageStatus",
            "StepFailed",
            "UnknownStageError",
            "UsageError",
            "__version__",
            "find_errors",
            "load",
            "plan",
            "run",
            "stage",
        ]
    )
    for name in pipekit.__all__:
        assert hasattr(pipekit, name), name


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

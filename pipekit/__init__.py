"""pipekit: CI/CD pipelines as ordinary, testable Python.

The public surface is what ``__all__`` lists; everything in a module whose name starts with an
underscore is private machinery.
"""

from __future__ import annotations

from pipekit._cache import CacheInputs, inputs
from pipekit._conditions import Condition, RunInfo, branch, changed, env, param_is
from pipekit._context import Context
from pipekit._control import Outcome, Service
from pipekit._executor import RunResult, StageResult
from pipekit._graph import Plan, find_errors, plan
from pipekit._loader import load
from pipekit._matrix import MatrixOutputs
from pipekit._params import Param, Params, param
from pipekit._reports import FailedTest, TestReport
from pipekit._secrets import Credentials, Secret, secret
from pipekit._stage import Pipeline, Stage, post, stage
from pipekit.backend import CommandResult, Image
from pipekit.exceptions import (
    BackendError,
    BuildFailed,
    BuildKitUnavailable,
    CycleError,
    DuplicateStageError,
    EngineUnavailable,
    ImageNotFound,
    Interrupted,
    InvalidReference,
    ParameterError,
    PipekitError,
    PipelineError,
    PipelineLoadError,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
    SecretMissing,
    StageCodeError,
    StageFailed,
    StageSignatureError,
    StepFailed,
    TagNotFound,
    UnknownStageError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BuildFailed",
    "BuildKitUnavailable",
    "CacheInputs",
    "CommandResult",
    "Condition",
    "Context",
    "Credentials",
    "Image",
    "InvalidReference",
    "MatrixOutputs",
    "Outcome",
    "Param",
    "ParameterError",
    "Params",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnavailable",
    "RunInfo",
    "Service",
    "Secret",
    "SecretMissing",
    "TagNotFound",
    "TestReport",
    "param",
    "secret",
    "CycleError",
    "DuplicateStageError",
    "EngineUnavailable",
    "FailedTest",
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
    "StepFailed",
    "UnknownStageError",
    "UsageError",
    "__version__",
    "branch",
    "changed",
    "env",
    "param_is",
    "post",
    "find_errors",
    "inputs",
    "load",
    "plan",
    "run",
    "stage",
]


def run(
    pipeline: Pipeline | str = "pipeline.py",
    *targets: str,
    jobs: int = 4,
    fail_fast: bool = False,
    backend: object | None = None,
    image_map: dict[str, str] | None = None,
    log_format: str = "console",
    params: dict[str, str] | None = None,
    secrets_file: str | None = None,
) -> RunResult:
    """Load (if given a path), validate and run a pipeline on the Docker backend by default."""
    from pipekit._executor import Executor
    from pipekit._params import resolve_params
    from pipekit._secrets import SecretStore

    p = load(pipeline) if isinstance(pipeline, str) else pipeline
    the_plan = plan(p, targets)
    values = resolve_params(p.params.values(), params or {})
    if backend is None:
        from pipekit._docker import DockerBackend

        backend = DockerBackend()
    from pipekit.backend import Backend

    assert isinstance(backend, Backend)
    backend.check()
    executor = Executor(
        backend,
        jobs=jobs,
        fail_fast=fail_fast,
        image_map=image_map,
        log_format=log_format,
        params=values,
        secrets=SecretStore.from_file(secrets_file),
    )
    return executor.run(the_plan)

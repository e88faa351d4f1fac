"""pipekit: CI/CD pipelines as ordinary, testable Python.

The public surface is what ``__all__`` lists; everything in a module whose name starts with an
underscore is private machinery. Names are imported on first use (PEP 562), so ``import
pipekit`` (which the pytest plugin does in every pytest session) loads neither networkx, nor
structlog, nor the docker SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipekit._core.results import RunResult, StageResult, StageStatus
    from pipekit._core.testreport import FailedTest, TestReport
    from pipekit._dsl.cache import CacheInputs, inputs
    from pipekit._dsl.conditions import Condition, RunInfo, branch, changed, env, param_is
    from pipekit._dsl.control import Outcome, Resources, Service
    from pipekit._dsl.loader import load
    from pipekit._dsl.matrix import MatrixOutputs
    from pipekit._dsl.params import Param, Params, param
    from pipekit._dsl.secrets import Credentials, Secret, secret
    from pipekit._dsl.stage import Pipeline, Stage, post, stage
    from pipekit._dsl.triggers import Trigger, cron, on_push
    from pipekit._plan.graph import Plan, find_errors, plan
    from pipekit._run.context import Context
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
    "Resources",
    "RunInfo",
    "Service",
    "Secret",
    "SecretMissing",
    "TagNotFound",
    "TestReport",
    "param",
    "secret",
    "Trigger",
    "cron",
    "on_push",
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
    "StageStatus",
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

_LAZY = {
    "BackendError": "pipekit.exceptions",
    "BuildFailed": "pipekit.exceptions",
    "BuildKitUnavailable": "pipekit.exceptions",
    "CacheInputs": "pipekit._dsl.cache",
    "CommandResult": "pipekit.backend",
    "Condition": "pipekit._dsl.conditions",
    "Context": "pipekit._run.context",
    "Credentials": "pipekit._dsl.secrets",
    "CycleError": "pipekit.exceptions",
    "DuplicateStageError": "pipekit.exceptions",
    "EngineUnavailable": "pipekit.exceptions",
    "FailedTest": "pipekit._core.testreport",
    "Image": "pipekit.backend",
    "ImageNotFound": "pipekit.exceptions",
    "Interrupted": "pipekit.exceptions",
    "InvalidReference": "pipekit.exceptions",
    "MatrixOutputs": "pipekit._dsl.matrix",
    "Outcome": "pipekit._dsl.control",
    "Param": "pipekit._dsl.params",
    "ParameterError": "pipekit.exceptions",
    "Params": "pipekit._dsl.params",
    "PipekitError": "pipekit.exceptions",
    "Pipeline": "pipekit._dsl.stage",
    "PipelineError": "pipekit.exceptions",
    "PipelineLoadError": "pipekit.exceptions",
    "Plan": "pipekit._plan.graph",
    "RegistryAuthError": "pipekit.exceptions",
    "RegistryError": "pipekit.exceptions",
    "RegistryUnavailable": "pipekit.exceptions",
    "RunInfo": "pipekit._dsl.conditions",
    "RunResult": "pipekit._core.results",
    "Secret": "pipekit._dsl.secrets",
    "SecretMissing": "pipekit.exceptions",
    "Resources": "pipekit._dsl.control",
    "Service": "pipekit._dsl.control",
    "Stage": "pipekit._dsl.stage",
    "StageCodeError": "pipekit.exceptions",
    "StageFailed": "pipekit.exceptions",
    "StageResult": "pipekit._core.results",
    "StageSignatureError": "pipekit.exceptions",
    "StageStatus": "pipekit._core.results",
    "StepFailed": "pipekit.exceptions",
    "TagNotFound": "pipekit.exceptions",
    "TestReport": "pipekit._core.testreport",
    "Trigger": "pipekit._dsl.triggers",
    "cron": "pipekit._dsl.triggers",
    "on_push": "pipekit._dsl.triggers",
    "UnknownStageError": "pipekit.exceptions",
    "UsageError": "pipekit.exceptions",
    "branch": "pipekit._dsl.conditions",
    "changed": "pipekit._dsl.conditions",
    "env": "pipekit._dsl.conditions",
    "find_errors": "pipekit._plan.graph",
    "inputs": "pipekit._dsl.cache",
    "load": "pipekit._dsl.loader",
    "param": "pipekit._dsl.params",
    "param_is": "pipekit._dsl.conditions",
    "plan": "pipekit._plan.graph",
    "post": "pipekit._dsl.stage",
    "secret": "pipekit._dsl.secrets",
    "stage": "pipekit._dsl.stage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def run(pipeline: Pipeline | str = "pipeline.py", *targets: str, **options: Any) -> RunResult:
    """Load (if given a path), validate and run a pipeline, on the Docker backend by default.

    ``options`` are those of the command line, by their long names: ``jobs``, ``fail_fast``,
    ``timeout``, ``params``, ``secrets_file``, ``secrets``, ``branch``, ``changed``,
    ``changed_base``, ``image_map``, ``workspace_mode``, ``backend`` (a backend, or ``"docker"`` or
    ``"swarm"``), ``registry``, ``record`` (keep the run in
    the history, as ``pipekit run`` does), ``resume``, ``use_cache``, ``log_format``,
    ``log_file``, ``verbose``. An unknown option is a ``TypeError``.
    """
    from pipekit._run.session import RunRequest, execute

    return execute(RunRequest(pipeline=pipeline, targets=targets, **options))

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
    from pipekit._cache import CacheInputs, inputs
    from pipekit._conditions import Condition, RunInfo, branch, changed, env, param_is
    from pipekit._context import Context
    from pipekit._control import Outcome, Resources, Service
    from pipekit._graph import Plan, find_errors, plan
    from pipekit._loader import load
    from pipekit._matrix import MatrixOutputs
    from pipekit._params import Param, Params, param
    from pipekit._reports import FailedTest, TestReport
    from pipekit._results import RunResult, StageResult, StageStatus
    from pipekit._secrets import Credentials, Secret, secret
    from pipekit._stage import Pipeline, Stage, post, stage
    from pipekit._triggers import Trigger, cron, on_push
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
    "CacheInputs": "pipekit._cache",
    "CommandResult": "pipekit.backend",
    "Condition": "pipekit._conditions",
    "Context": "pipekit._context",
    "Credentials": "pipekit._secrets",
    "CycleError": "pipekit.exceptions",
    "DuplicateStageError": "pipekit.exceptions",
    "EngineUnavailable": "pipekit.exceptions",
    "FailedTest": "pipekit._reports",
    "Image": "pipekit.backend",
    "ImageNotFound": "pipekit.exceptions",
    "Interrupted": "pipekit.exceptions",
    "InvalidReference": "pipekit.exceptions",
    "MatrixOutputs": "pipekit._matrix",
    "Outcome": "pipekit._control",
    "Param": "pipekit._params",
    "ParameterError": "pipekit.exceptions",
    "Params": "pipekit._params",
    "PipekitError": "pipekit.exceptions",
    "Pipeline": "pipekit._stage",
    "PipelineError": "pipekit.exceptions",
    "PipelineLoadError": "pipekit.exceptions",
    "Plan": "pipekit._graph",
    "RegistryAuthError": "pipekit.exceptions",
    "RegistryError": "pipekit.exceptions",
    "RegistryUnavailable": "pipekit.exceptions",
    "RunInfo": "pipekit._conditions",
    "RunResult": "pipekit._results",
    "Secret": "pipekit._secrets",
    "SecretMissing": "pipekit.exceptions",
    "Resources": "pipekit._control",
    "Service": "pipekit._control",
    "Stage": "pipekit._stage",
    "StageCodeError": "pipekit.exceptions",
    "StageFailed": "pipekit.exceptions",
    "StageResult": "pipekit._results",
    "StageSignatureError": "pipekit.exceptions",
    "StageStatus": "pipekit._results",
    "StepFailed": "pipekit.exceptions",
    "TagNotFound": "pipekit.exceptions",
    "TestReport": "pipekit._reports",
    "Trigger": "pipekit._triggers",
    "cron": "pipekit._triggers",
    "on_push": "pipekit._triggers",
    "UnknownStageError": "pipekit.exceptions",
    "UsageError": "pipekit.exceptions",
    "branch": "pipekit._conditions",
    "changed": "pipekit._conditions",
    "env": "pipekit._conditions",
    "find_errors": "pipekit._graph",
    "inputs": "pipekit._cache",
    "load": "pipekit._loader",
    "param": "pipekit._params",
    "param_is": "pipekit._conditions",
    "plan": "pipekit._graph",
    "post": "pipekit._stage",
    "secret": "pipekit._secrets",
    "stage": "pipekit._stage",
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
    from pipekit._session import RunRequest, execute

    return execute(RunRequest(pipeline=pipeline, targets=targets, **options))

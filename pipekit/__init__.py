"""pipekit: CI/CD pipelines as ordinary, testable Python.

The public surface is what ``__all__`` lists; everything in a module whose name starts with an
underscore is private machinery. Names are imported on first use (PEP 562), so ``import
pipekit`` (which the pytest plugin does in every pytest session) loads neither networkx, nor
structlog, nor the docker SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: The public names, by the module each comes from: imported on first use (PEP 562). This is the one
#: list of them; ``__all__`` is made from it.
_PUBLIC: dict[str, tuple[str, ...]] = {
    "pipekit._core.results": ("RunResult", "StageResult", "StageStatus"),
    "pipekit._core.testreport": ("FailedTest", "TestReport"),
    "pipekit._dsl.approval": ("Approval", "Decision", "Environment"),
    "pipekit._dsl.cache": ("CacheInputs", "inputs"),
    "pipekit._dsl.conditions": ("Condition", "RunInfo", "branch", "changed", "env", "param_is"),
    "pipekit._dsl.control": ("Outcome", "Resources", "Service"),
    "pipekit._dsl.loader": ("load",),
    "pipekit._dsl.matrix": ("MatrixOutputs",),
    "pipekit._dsl.params": ("Param", "Params", "param"),
    "pipekit._dsl.secrets": ("Credentials", "Secret", "secret"),
    "pipekit._dsl.stage": ("Pipeline", "Stage", "post", "stage"),
    "pipekit._dsl.triggers": ("Trigger", "cron", "on_push"),
    "pipekit._plan.graph": ("Plan", "find_errors", "plan"),
    "pipekit._run.context": ("Context",),
    "pipekit.backend": ("CommandResult", "Image"),
    "pipekit.exceptions": (
        "BackendError",
        "BuildFailed",
        "BuildKitUnavailable",
        "CycleError",
        "DuplicateStageError",
        "EngineUnavailable",
        "ImageNotFound",
        "Interrupted",
        "InvalidReference",
        "ParameterError",
        "PipekitError",
        "PipelineError",
        "PipelineLoadError",
        "RegistryAuthError",
        "RegistryError",
        "RegistryUnavailable",
        "SecretMissing",
        "StageCodeError",
        "StageFailed",
        "StageSignatureError",
        "StepFailed",
        "TagNotFound",
        "UnknownStageError",
        "UsageError",
    ),
}
_LAZY = {name: module for module, names in _PUBLIC.items() for name in names}

__version__ = "0.1.0"

__all__ = sorted([*_LAZY, "__version__", "run"])

# The same names for type checkers, which do not run __getattr__: `X as X` re-exports a name
# (mypy --strict, pyright), one line a module (hence no isort). tests/test_public_api.py keeps them
# equal to _PUBLIC.
if TYPE_CHECKING:
    from pipekit._core.results import RunResult as RunResult, StageResult as StageResult, StageStatus as StageStatus  # noqa: I001
    from pipekit._core.testreport import FailedTest as FailedTest, TestReport as TestReport
    from pipekit._dsl.approval import Approval as Approval, Decision as Decision, Environment as Environment
    from pipekit._dsl.cache import CacheInputs as CacheInputs, inputs as inputs
    from pipekit._dsl.conditions import (
        Condition as Condition,
        RunInfo as RunInfo,
        branch as branch,
        changed as changed,
        env as env,
        param_is as param_is,
    )
    from pipekit._dsl.control import Outcome as Outcome, Resources as Resources, Service as Service
    from pipekit._dsl.loader import load as load
    from pipekit._dsl.matrix import MatrixOutputs as MatrixOutputs
    from pipekit._dsl.params import Param as Param, Params as Params, param as param
    from pipekit._dsl.secrets import Credentials as Credentials, Secret as Secret, secret as secret
    from pipekit._dsl.stage import Pipeline as Pipeline, Stage as Stage, post as post, stage as stage
    from pipekit._dsl.triggers import Trigger as Trigger, cron as cron, on_push as on_push
    from pipekit._plan.graph import Plan as Plan, find_errors as find_errors, plan as plan
    from pipekit._run.context import Context as Context
    from pipekit.backend import CommandResult as CommandResult, Image as Image
    from pipekit.exceptions import (
        BackendError as BackendError,
        BuildFailed as BuildFailed,
        BuildKitUnavailable as BuildKitUnavailable,
        CycleError as CycleError,
        DuplicateStageError as DuplicateStageError,
        EngineUnavailable as EngineUnavailable,
        ImageNotFound as ImageNotFound,
        Interrupted as Interrupted,
        InvalidReference as InvalidReference,
        ParameterError as ParameterError,
        PipekitError as PipekitError,
        PipelineError as PipelineError,
        PipelineLoadError as PipelineLoadError,
        RegistryAuthError as RegistryAuthError,
        RegistryError as RegistryError,
        RegistryUnavailable as RegistryUnavailable,
        SecretMissing as SecretMissing,
        StageCodeError as StageCodeError,
        StageFailed as StageFailed,
        StageSignatureError as StageSignatureError,
        StepFailed as StepFailed,
        TagNotFound as TagNotFound,
        UnknownStageError as UnknownStageError,
        UsageError as UsageError,
    )


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
    the history, as ``pipekit run`` does), ``resume``, ``use_cache``, ``cache_registry``,
    ``cache_mode`` and ``cache_credentials`` (a ``pk.Credentials``: the shared cache), ``log_format``,
    ``log_file``, ``verbose``. An unknown option is a ``TypeError``.
    """
    from pipekit._run.runner import execute
    from pipekit._run.session import RunRequest

    return execute(RunRequest(pipeline=pipeline, targets=targets, **options))

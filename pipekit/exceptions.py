"""Every error pipekit raises on purpose.

This module is a leaf: it imports nothing else from pipekit, so every other module can use it
without import loops.  The tree::

    PipekitError                      exit code 1 unless a subclass says otherwise
    ├── PipelineError                 the pipeline definition is wrong (exit 2)
    │   ├── PipelineLoadError         pipeline.py could not be imported
    │   ├── CycleError                stages depend on each other in a circle
    │   ├── UnknownStageError         a dependency or a selected stage does not exist
    │   ├── DuplicateStageError       two stages share a name
    │   └── StageSignatureError       a stage function takes a parameter pipekit cannot fill
    ├── UsageError                    the command line is wrong (exit 2)
    │   └── ParameterError            --param names an unknown parameter or has a bad value
    ├── BackendError                  the place stages run in is not usable (exit 3)
    │   ├── EngineUnavailable         no Docker engine answers
    │   ├── ImageNotFound             an image is neither local nor pullable
    │   ├── BuildKitUnavailable       build secrets asked for, and no BuildKit path exists
    │   └── RegistryError             a registry refused or could not be reached
    │       ├── RegistryAuthError     the credentials were refused
    │       ├── RegistryUnavailable   the registry did not answer
    │       ├── InvalidReference      the image reference is malformed
    │       └── TagNotFound           the pulled tag does not exist
    └── StageFailed                   one stage failed; the run goes on to report it (exit 1)
        ├── StepFailed                a command exited non-zero
        ├── BuildFailed               an image build failed at an instruction
        ├── SecretMissing             a secret is neither in the environment nor the secrets file
        └── StageCodeError            the stage function raised

    Interrupted(BaseException)        SIGINT / SIGTERM; exit code 128 + signal number

Only the command line turns these into exit codes (``exit_code`` on each class).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BackendError",
    "BuildFailed",
    "BuildKitUnavailable",
    "InvalidReference",
    "ParameterError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnavailable",
    "SecretMissing",
    "TagNotFound",
    "CycleError",
    "DuplicateStageError",
    "EngineUnavailable",
    "ImageNotFound",
    "Interrupted",
    "PipekitError",
    "PipelineError",
    "PipelineLoadError",
    "StageCodeError",
    "StageFailed",
    "StageSignatureError",
    "StepFailed",
    "UnknownStageError",
    "UsageError",
]


class PipekitError(Exception):
    """Base of every error pipekit raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PipelineError(PipekitError):
    """The pipeline definition is wrong; nothing was started."""

    exit_code = 2

    def __init__(self, message: str, *, stage: str | None = None, location: str | None = None) -> None:
        where = f" ({location})" if location else ""
        super().__init__(f"{message}{where}")
        self.stage = stage
        self.location = location


class PipelineLoadError(PipelineError):
    """pipeline.py could not be found or imported."""

    def __init__(self, message: str, *, path: str, traceback: str = "") -> None:
        full = f"{message}\n{traceback.rstrip()}" if traceback else message
        super().__init__(full)
        self.path = path
        self.traceback = traceback


class CycleError(PipelineError):
    """Stages depend on each other in a circle."""

    def __init__(self, cycle: Sequence[str], *, location: str | None = None) -> None:
        path = " -> ".join([*cycle, cycle[0]])
        super().__init__(
            f"Stages depend on each other in a cycle: {path}. Remove one of these dependencies.",
            stage=cycle[0],
            location=location,
        )
        self.cycle = tuple(cycle)


class UnknownStageError(PipelineError):
    """A dependency or a stage named on the command line does not exist."""

    def __init__(
        self,
        message: str,
        *,
        name: str,
        suggestion: str | None = None,
        stage: str | None = None,
        location: str | None = None,
    ) -> None:
        hint = f" Did you mean '{suggestion}'?" if suggestion else ""
        super().__init__(f"{message}{hint}", stage=stage, location=location)
        self.name = name
        self.suggestion = suggestion


class DuplicateStageError(PipelineError):
    """Two stages share one name."""


class StageSignatureError(PipelineError):
    """A stage function takes a parameter that is neither the context nor a stage."""


class UsageError(PipekitError):
    """The command line is wrong."""

    exit_code = 2


class ParameterError(UsageError):
    """A ``--param`` names no declared parameter, or its value does not fit the parameter's type."""


class BackendError(PipekitError):
    """The backend that runs stages is not usable."""

    exit_code = 3


class EngineUnavailable(BackendError):
    """No Docker engine answers."""


class ImageNotFound(BackendError):
    """An image is not in the engine and could not be pulled."""

    def __init__(self, message: str, *, image: str) -> None:
        super().__init__(message)
        self.image = image


class BuildKitUnavailable(BackendError):
    """Build secrets need BuildKit, and no docker CLI that drives it was found."""


class RegistryError(BackendError):
    """A registry operation failed; ``registry`` and ``reference`` say where and what."""

    def __init__(self, message: str, *, registry: str, reference: str) -> None:
        super().__init__(message)
        self.registry = registry
        self.reference = reference


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or demanded some)."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached."""


class InvalidReference(RegistryError):
    """The image reference is not a valid name."""


class TagNotFound(RegistryError):
    """The tag (or digest) does not exist in the registry."""


class StageFailed(PipekitError):
    """A stage failed.  Raised inside a stage; the executor records it and carries on."""

    def __init__(self, message: str, *, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


class StepFailed(StageFailed):
    """A command run by ``ctx.sh`` exited with a non-zero code."""

    def __init__(
        self,
        *,
        stage: str,
        command: str,
        exit_code: int,
        output_tail: Sequence[str] = (),
        hint: str = "",
    ) -> None:
        lines = [f"Command exited with code {exit_code} in stage '{stage}': {command}"]
        if hint:
            lines.append(hint)
        if output_tail:
            lines.append("Last lines of output:")
            lines.extend(f"  {line}" for line in output_tail)
        super().__init__("\n".join(lines), stage=stage)
        self.command = command
        self.returncode = exit_code
        self.output_tail = tuple(output_tail)


class BuildFailed(StageFailed):
    """An image build failed; ``instruction`` is the Dockerfile instruction that failed."""

    def __init__(self, *, stage: str, instruction: str, reason: str, output_tail: Sequence[str] = ()) -> None:
        lines = [f"Image build failed in stage '{stage}' at `{instruction}`: {reason}"]
        if output_tail:
            lines.append("Last lines of the build:")
            lines.extend(f"  {line}" for line in output_tail)
        super().__init__("\n".join(lines), stage=stage)
        self.instruction = instruction
        self.reason = reason
        self.output_tail = tuple(output_tail)


class SecretMissing(StageFailed):
    """A secret is neither in the environment nor in the secrets file."""

    def __init__(self, name: str, *, stage: str) -> None:
        super().__init__(
            f"Stage '{stage}' needs the secret '{name}', which is not set: export {name} or put"
            f" {name}=... in the file given with --secrets-file",
            stage=stage,
        )
        self.name = name


class StageCodeError(StageFailed):
    """The stage function raised; ``traceback`` holds the user's frames only."""

    def __init__(self, *, stage: str, error: BaseException, traceback: str) -> None:
        super().__init__(f"Stage '{stage}' raised {type(error).__name__}: {error}\n{traceback.rstrip()}", stage=stage)
        self.error = error
        self.traceback = traceback


class Interrupted(BaseException):
    """The run was interrupted by a signal (SIGINT or SIGTERM)."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"interrupted by {name}")
        self.signum = signum
        self.exit_code = 128 + signum

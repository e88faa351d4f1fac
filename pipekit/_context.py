"""The context a stage function receives as ``ctx``."""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipekit._docker_ops import DockerOps
from pipekit._params import Params
from pipekit._secrets import Secret, SecretStore
from pipekit.backend import Backend, CommandResult, StageHandle
from pipekit.exceptions import StageFailed, StepFailed

__all__ = ["Context"]

TAIL_LINES = 20


class Context:
    """What a stage sees of its run: ``sh``, ``env``, ``stage``, ``run_id``, ``workspace``, ``log``,
    ``params``, ``docker`` (build, tag, push, pull, run images) and ``secret(name)``."""

    def __init__(
        self,
        *,
        stage: str,
        run_id: str,
        workspace: Path,
        env: Mapping[str, str],
        log: Any,
        backend: Backend,
        handle: StageHandle,
        cancelled: threading.Event | None = None,
        params: Params | None = None,
        secrets: SecretStore | None = None,
        matrix: Mapping[str, Any] | None = None,
    ) -> None:
        self.stage = stage
        self.run_id = run_id
        self.workspace = workspace
        self.env: dict[str, str] = dict(env)
        self._base_env = dict(env)
        self.log = log
        self.image = handle.spec.image
        self.params = params if params is not None else Params({})
        self.matrix: Mapping[str, Any] = dict(matrix or {})
        self._secrets = secrets if secrets is not None else SecretStore()
        self._backend = backend
        self._handle = handle
        self._cancelled = cancelled or threading.Event()
        self.commands: list[CommandResult] = []
        self.docker = DockerOps(
            backend=backend,
            run_id=run_id,
            stage=stage,
            workspace=workspace,
            secrets=self._secrets,
            log=log,
            on_line=self._log_line,
        )

    def _log_line(self, stream: str, line: str) -> None:
        self.log.info("output", line=line, stream=stream)

    def secret(self, name: str) -> str:
        """The value of a secret; it is masked in every log line from now on."""
        return self._secrets.get(name, stage=self.stage)

    def sh(self, command: str, env: Mapping[str, str | Secret] | None = None, check: bool = True) -> CommandResult:
        """Run ``sh -c command`` where the stage runs, streaming its output into the log.

        Raises :class:`pipekit.StepFailed` on a non-zero exit unless ``check=False``.
        """
        if self._cancelled.is_set():
            raise StageFailed(f"Stage '{self.stage}' was stopped before `{command}`", stage=self.stage)
        call_env = self._secrets.resolve_env(env or {}, stage=self.stage)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

        def on_line(stream: str, line: str) -> None:
            tail.append(line)
            self._log_line(stream, line)

        self.log.debug("command", command=command)
        exec_env = self._exec_env(call_env)
        result = self._backend.exec(self._handle, command, exec_env, on_line)
        self.commands.append(result)
        if self._cancelled.is_set():
            raise StageFailed(f"Stage '{self.stage}' was stopped while `{command}` ran", stage=self.stage)
        if check and result.exit_code != 0:
            raise StepFailed(
                stage=self.stage,
                command=self._secrets.masker.mask(command),
                exit_code=result.exit_code,
                output_tail=[self._secrets.masker.mask(line) for line in tail],
                hint=_hint(result, self.image),
            )
        return result

    def _exec_env(self, call_env: Mapping[str, str]) -> dict[str, str]:
        """What a command needs on top of the stage's environment (which the backend applies):
        the changes made to ``ctx.env`` during the stage, then the call's ``env=``."""
        changed = {k: v for k, v in self.env.items() if self._base_env.get(k) != v}
        return {**changed, **call_env}

    def __repr__(self) -> str:
        return f"<Context stage={self.stage!r} run_id={self.run_id!r}>"


def _hint(result: CommandResult, image: str | None) -> str:
    where = f"image '{image}'" if image else "this machine's PATH"
    if result.exit_code == 127:
        return f"A command was not found in {where} (exit code 127: 'not found')."
    if result.exit_code == 126:
        return f"A command in {where} is not executable (exit code 126)."
    if result.exit_code == 137:
        return "The command was killed (exit code 137: SIGKILL, out of memory or the stage was stopped)."
    return ""

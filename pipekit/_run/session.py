"""One way in: every run is set up here, from a :class:`RunRequest`.

The command line, :func:`pipekit.run` and :class:`pipekit.testing.PipelineRunner` only fill in a
request; loading, validation, parameters and secrets, the run's information (branch, changed
files), resume and cache choices, history recording, the backends and logging are decided here,
the same way for all three.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from pipekit._console.log import Processor, make_logger
from pipekit._core.results import StageStatus
from pipekit._core.util import new_run_id
from pipekit._dsl.conditions import RunInfo
from pipekit._dsl.control import parse_duration
from pipekit._dsl.loader import load
from pipekit._dsl.params import Params, resolve_params
from pipekit._dsl.secrets import Credentials, SecretStore, parse_dotenv
from pipekit._dsl.stage import Pipeline
from pipekit._plan.graph import Plan, find_errors, plan
from pipekit._plan.resolve import ResolvedPlan, resolve
from pipekit._run.context import StageRecords
from pipekit.exceptions import PipelineError, UsageError

__all__ = ["RunRequest", "RunSetup", "container_backend", "restorable", "setup"]


@attrs.frozen(kw_only=True)
class RunRequest:
    """Everything a run can be asked for. Every field has the command line's default."""

    pipeline: Pipeline | str | os.PathLike[str] = "pipeline.py"
    targets: Sequence[str] = ()
    jobs: int = 4
    fail_fast: bool = False
    timeout: float | str | None = None  # the whole run: seconds or '30m'
    params: Mapping[str, Any] = attrs.field(factory=dict)  # text (as from --param) or typed values
    secrets: Mapping[str, str] | None = attrs.field(default=None, repr=False)  # values, like a secrets file
    secrets_file: str | os.PathLike[str] | None = None
    environ: Mapping[str, str] | None = attrs.field(default=None, repr=False)  # None: this process's
    branch: str | None = None
    changed: Sequence[str] | None = None  # changed files for pk.changed; None: ask git
    changed_base: str | None = None
    image_map: Mapping[str, str] = attrs.field(factory=dict)
    workspace: Path | None = None  # for a pipeline made in code (default: the current folder)
    workspace_mode: str | None = None  # auto, mount or copy: how the Docker backend gives stages the workspace
    backend: Any = None  # a pipekit.backend.Backend, or "docker" or "swarm"; None: PIPEKIT_BACKEND, else docker
    registry: str | None = None  # where images built in the run travel to other machines (the swarm)
    host: Any = None  # the backend of stages without an image; None: this machine (or ``backend``
    # itself when it runs host stages)
    record: bool = False  # keep the run in the history (.pipekit/)
    resume: str | None = None  # a run id, or "" for the last run of this pipeline
    use_cache: bool = True
    cache_registry: str | None = None  # REGISTRY/REPO: the stage cache shared through a registry
    cache_mode: str | None = None  # read, write, readwrite or off (default: read when cache_registry is set)
    cache_credentials: Credentials | None = attrs.field(default=None, repr=False)  # the cache registry's login
    check_images: bool = True  # before the run, check that every image exists (locally or in its registry)
    log_format: str = "console"
    ci: str = "none"  # github, gitlab or jenkins: print the way that CI shows logs (the CLI detects it)
    junit: str | os.PathLike[str] | None = None  # write the run as a JUnit XML file here
    report: str | os.PathLike[str] | None = None  # write the run as an HTML page here (needs record=True)
    keep_failed: bool = False  # keep the container of a stage that fails (pipekit shell RUN STAGE)
    progress: str = "plain"  # live: the live view; auto: live on a terminal outside CI (the CLI's default)
    log_file: IO[str] | None = None
    verbose: bool = False
    log_processors: Sequence[Processor] = ()
    records: StageRecords | None = None  # where artifacts and test reports go without a history
    argv: Sequence[str] = ()
    run_id: str | None = None
    warn: Callable[[str], None] | None = None  # where warnings about the history go
    clock: Callable[[], float] | None = None
    approve: Sequence[str] = ()  # --approve STAGE: gates approved before the run, by this user
    approval_params: Mapping[str, str] = attrs.field(factory=dict)  # --approval-param STAGE.NAME=VALUE
    decisions: Mapping[str, Any] = attrs.field(factory=dict)  # decisions made in code (the pytest plugin)
    prompter: Any = None  # asks at a gate (pipekit._run.gates.Prompter); None: an undecided gate awaits


def _load(request: RunRequest) -> Pipeline:
    p = request.pipeline
    return p if isinstance(p, Pipeline) else load(p)


@attrs.define
class RunSetup:
    """A request made concrete: the pipeline, its plan, params, secrets and what the run knows."""

    request: RunRequest
    pipeline: Pipeline
    errors: list[PipelineError]
    run_id: str = attrs.field(factory=new_run_id)
    _plan: Plan | None = None
    _params: Params | None = None
    _secrets: SecretStore | None = None
    _info: RunInfo | None = None
    view: Any = None  # the live view of the run, when it has one
    _made_backend: Any = attrs.field(default=None, init=False, repr=False)

    @property
    def workspace(self) -> Path:
        if self.pipeline.path:
            return Path(self.pipeline.path).parent
        return self.request.workspace or Path.cwd()

    @property
    def plan(self) -> Plan:
        if self.errors:
            raise self.errors[0]
        if self._plan is None:
            self._plan = plan(self.pipeline, tuple(self.request.targets), validated=True)
        return self._plan

    @property
    def params(self) -> Params:
        if self._params is None:
            given = {k: v if isinstance(v, str) else str(v) for k, v in self.request.params.items()}
            self._params = resolve_params(self.pipeline.params.values(), given)
        return self._params

    @property
    def secrets(self) -> SecretStore:
        if self._secrets is None:
            r = self.request
            values = dict(parse_dotenv(Path(r.secrets_file)) if r.secrets_file else {})
            values.update(r.secrets or {})
            files = (str(r.secrets_file),) if r.secrets_file else ()
            self._secrets = SecretStore(file_values=values, environ=r.environ, files=files)
            self._secrets.preload(self.pipeline.secret_names)
        return self._secrets

    @property
    def info(self) -> RunInfo:
        if self._info is None:
            r = self.request
            self._info = RunInfo(
                workspace=self.workspace,
                branch=r.branch,
                environ=r.environ,
                params=self.params,
                changed_files=list(r.changed) if r.changed is not None else None,
                changed_base=r.changed_base,
            )
        return self._info

    @property
    def timeout(self) -> float | None:
        try:
            return parse_duration(self.request.timeout, "--timeout")
        except PipelineError as e:
            raise UsageError(e.message) from None

    def resolved(self, restore: Mapping[str, tuple[str, str]] | None = None) -> ResolvedPlan:
        """The plan with everything decided that needs no backend (what --dry-run prints)."""
        return resolve(
            self.plan, workspace=self.workspace, info=self.info, image_map=self.request.image_map, restore=restore
        )

    def dry_run(self, restore: Mapping[str, tuple[str, str]] | None = None) -> ResolvedPlan:
        resolved = self.resolved(restore)
        for message in resolved.condition_errors.values():
            raise UsageError(message)
        return resolved

    def resumed(self, history: Any) -> tuple[str | None, dict[str, tuple[str, str]]]:
        """``--resume``: the run it resumes and what it restores from it, for the run and its plan
        alike (UsageError when there is no such run; ``history`` None: there is no history)."""
        r = self.request
        if r.resume is None:
            return None, {}
        folder = self.workspace / ".pipekit"
        if history is None:
            if r.resume == "last":
                raise UsageError(f"No runs are recorded in {folder} yet")
            if r.resume:
                raise UsageError(f"No run matches '{r.resume}' in {folder}; `pipekit runs` lists them")
            resumed_from = None
        else:
            resumed_from = history.resolve(r.resume) if r.resume else history.last_run_of(self.pipeline.path or "")
        if resumed_from is None:
            raise UsageError(f"--resume: no earlier run of {self.pipeline.path} is recorded in {folder}")
        return resumed_from, restorable(history.stages(resumed_from), self.plan.order, resumed_from)

    def pre_approvals(self) -> dict[str, Any]:
        """The gates decided before the run: ``--approve`` (checked: UsageError) and the request's own."""
        from pipekit._run.gates import checked_decision, current_user, pre_approvals

        r = self.request
        if not (r.approve or r.approval_params or r.decisions):
            return {}
        gates = {n: self.plan.stage(n).approval for n in self.plan.order}
        groups = self.plan.groups  # a matrix stage's name stands for each of its instances
        decided = {
            n: checked_decision(gates, n, d) for name, d in r.decisions.items() for n in groups.get(name, (name,))
        }
        names = [n for name in r.approve for n in groups.get(name, (name,))]
        params = {}
        for key, value in r.approval_params.items():
            stage, dot, rest = key.rpartition(".")
            params.update({f"{n}{dot}{rest}": value for n in groups.get(stage, (stage,))} if dot else {key: value})
        decided.update(pre_approvals(gates, names, params, current_user()))
        return decided

    def preflight(self, resolved: ResolvedPlan, warn: Callable[[str], None]) -> None:
        """The checks before a run, for ``validate`` and ``--dry-run``: every missing secret and
        image at once (UsageError, exit 2). With no engine to ask, images are not checked (warned)."""
        from pipekit._plan.preflight import check

        check(resolved, self.secrets, self.image_engine(resolved, warn), warn=warn)

    def image_engine(
        self, resolved: ResolvedPlan, warn: Callable[[str], None] | None = None, *, restoring: bool = False
    ) -> Any:
        """The backend to ask about images before a run, when it answers (else None, warned).
        ``restoring``: asked also when no stage needs it to run (restored results name images)."""
        from pipekit.exceptions import BackendError

        if not (self.request.check_images and (resolved.needs_container_backend or restoring)):
            return None
        backend = self.backend
        try:
            backend.check()
        except BackendError as e:
            if warn is not None:
                warn(f"images not checked: {e}")
            return None
        return backend

    @property
    def backend(self) -> Any:
        """The run's container backend: the request's own, or the one it names (made once)."""
        made = self._made_backend
        if made is None:
            r = self.request
            given = r.backend if r.backend is not None and not isinstance(r.backend, str) else None
            made = given or container_backend(r.workspace_mode, r.backend, registry=r.registry, secrets=self.secrets)
            self._made_backend = made
        return made

    def logger(self, processors: Sequence[Processor] = ()) -> Any:
        r = self.request
        # the masker runs first, so no processor or renderer ever sees a secret
        chain: list[Processor] = [self.secrets.masker, *r.log_processors, *processors]
        console = None
        if r.ci != "none" and r.log_format == "console":
            from pipekit._ci.output import add_masks, renderer_for

            console = renderer_for(r.ci, {n: self.plan.stage(n).location for n in self.plan.order})
        elif self._wants_live():
            from pipekit._console.live import LiveRenderer

            out = r.log_file if r.log_file is not None else sys.stdout
            console = self.view = LiveRenderer(out, {n: list(self.plan.upstream(n)) for n in self.plan.order})
        log = make_logger(
            r.log_format, file=r.log_file, level=10 if r.verbose else 20, processors=chain, console=console
        )
        if console is not None and r.ci == "github":  # the runner hides them: registered before any use
            masker = self.secrets.masker
            add_masks(log.write_raw, masker.values)
            masker.listeners.append(lambda values: add_masks(log.write_raw, values))

        def unmasked(name: str) -> None:
            log.warning(
                "secret not masked",
                secret=name,
                reason="shorter than 4 characters: it would hide unrelated text"
                f" (a value that is not secret: pk.secret({name!r}, mask=False))",
            )

        self.secrets.on_unmasked = unmasked  # when a stage first uses one: after the run's first line
        return log

    def _wants_live(self) -> bool:
        r = self.request
        if r.log_format != "console" or r.progress == "plain":
            return False
        if r.progress == "live":
            return True
        out = r.log_file if r.log_file is not None else sys.stdout
        isatty = getattr(out, "isatty", None)
        try:
            terminal = bool(isatty and isatty())
        except (OSError, ValueError):
            terminal = False
        environ = r.environ if r.environ is not None else os.environ
        return terminal and not environ.get("CI") and environ.get("TERM") != "dumb"

    def close_view(self) -> None:
        """Stop the live view, if the run had one (also when the run was interrupted)."""
        view = getattr(self, "view", None)
        if view is not None:
            view.close()


BACKENDS = ("docker", "swarm")
BACKEND_ENV = "PIPEKIT_BACKEND"


def container_backend(
    workspace_mode: str | None = None,
    name: str | None = None,
    *,
    registry: str | None = None,
    secrets: SecretStore | None = None,
) -> Any:
    """The backend of container stages: ``name`` (or ``PIPEKIT_BACKEND``), by default the Docker
    engine of ``DOCKER_HOST`` (or the local socket); ``swarm``: the swarm it manages."""
    name = name or os.environ.get(BACKEND_ENV) or "docker"
    if name not in BACKENDS:
        raise UsageError(f"the backend is one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "swarm":
        if workspace_mode == "mount":
            raise UsageError(
                "the swarm backend copies the workspace to its nodes: --workspace mount needs one local engine"
            )
        from pipekit._backends.swarm.backend import REGISTRY_PASSWORD, REGISTRY_USER, SwarmBackend

        def login() -> dict[str, str] | None:
            if secrets is None or not secrets.has(REGISTRY_USER):
                return None
            user = secrets.get(REGISTRY_USER, stage="(registry)")
            return {"username": user, "password": secrets.get(REGISTRY_PASSWORD, stage="(registry)")}

        return SwarmBackend(registry=registry, registry_auth=login)
    from pipekit._backends.docker.backend import DockerBackend

    return DockerBackend(workspace=workspace_mode)


def setup(request: RunRequest) -> RunSetup:
    """Load and validate the request's pipeline; every problem is in ``errors``."""
    if request.jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, got {request.jobs}")
    pipeline = _load(request)
    return RunSetup(
        request=request, pipeline=pipeline, errors=find_errors(pipeline), run_id=request.run_id or new_run_id()
    )


def restorable(rows: Sequence[Any], order: Sequence[str], from_run: str) -> dict[str, tuple[str, str]]:
    """What ``--resume`` takes from an earlier run: the stored outputs of stages that ended well."""
    ok = (StageStatus.SUCCEEDED, StageStatus.CACHED, StageStatus.RESTORED)
    return {
        row.name: (from_run, row.output)
        for row in rows
        if row.status in ok and row.output is not None and row.name in order
    }

"""The seam between pipekit and whatever runs commands: two narrow protocols.

:class:`StageBackend` is a stage's life on a machine. It is kept in separate steps so that a
backend may prepare a stage's place early (while its upstream stages still run) or on another
machine::

    handle = backend.prepare(spec)                # e.g. create and start the stage's container
    backend.put_files(handle, archive, dest)      # only when it does not share the workspace
    backend.exec(handle, command, env, on_line)   # any number of times: ctx.sh(...)
    backend.get_files(handle, path)               # files out of the stage (tar), e.g. the workspace
    backend.release(handle)                       # remove what prepare made; idempotent
    backend.cleanup(run_id)                       # remove anything of the run that is still there

:class:`ImageBackend` is what ``ctx.docker`` needs: build, tag, push, pull and one-shot runs.
Every call says which run and stage it is for (a :class:`StageSpec` inside the handle, a
:class:`BuildSpec`, or an :class:`Origin`). :class:`Backend` is both: the Docker backend and
:class:`pipekit.testing.FakeBackend` implement it; the host backend is a stage backend only.

Backends differ by capability, which the scheduler asks about and never infers from types nor
probes with ``getattr``: every backend declares one :class:`Capabilities` value, its
``capabilities`` attribute (``backend.capabilities.shares_workspace``). A capability that comes
with methods (``streams_files``, ``keeps_failed``, ``scripted_files``) names the protocol those
methods belong to (:class:`FileStreams`, :class:`KeepsFailed`, :class:`ScriptedWorkspace`).

``release`` may be called from another thread while ``exec`` is running (fail-fast,
interrupts): ``exec`` must then return or raise promptly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import attrs

from pipekit._core.streams import Captured

__all__ = [
    "Backend",
    "BuildSpec",
    "CacheVolume",
    "CacheVolumes",
    "Capabilities",
    "FileStreams",
    "KeepsFailed",
    "ScriptedWorkspace",
    "ImageBackend",
    "Origin",
    "StageBackend",
    "Sweeps",
    "CommandResult",
    "DetachedContainers",
    "DetachedSpec",
    "Image",
    "LineSink",
    "ServiceSpec",
    "StageHandle",
    "StageSpec",
    "RUN_SCRIPT",
    "SCRIPT_VAR",
    "shell_script",
]

#: Called with ``("stdout" | "stderr", line)`` for each line as soon as it is printed.
LineSink = Callable[[str, str], None]


@attrs.frozen
class Capabilities:
    """What a backend can do, declared once (``backend.capabilities``); all False by default."""

    #: the stage sees the pipeline's folder itself (a bind mount, the host); when False the
    #: scheduler ships the workspace in with put_files and the changed files back with get_files
    shares_workspace: bool = False
    #: stages without an image run here too (the fake backend); otherwise on the host backend
    runs_host_stages: bool = False
    #: a stage's place is worth preparing while its upstream stages still run (a container's start)
    prepares_ahead: bool = False
    #: the backend places stages on machines: ``placement=`` means something, and where a stage
    #: landed is worth a log line (a swarm)
    places_stages: bool = False
    #: ``--keep-failed`` is answered (:class:`KeepsFailed`): a failed stage's place stays for
    #: ``pipekit shell``, or ``keep`` raises BackendError saying why it cannot (a swarm)
    keeps_failed: bool = False
    #: the images a run builds reach the machines that run stages only through a registry, named
    #: by the backend's ``registry`` attribute (a swarm)
    images_need_registry: bool = False
    #: files travel in and out as streams, never whole in memory: :class:`FileStreams`
    streams_files: bool = False
    #: the stage's files are scripted, not real (the fake backend): :class:`ScriptedWorkspace`
    scripted_files: bool = False
    #: a stage's copy of the workspace may be a view of a base copy made once per run on its
    #: machine, with a layer of the stage's own on top: only differences travel (:class:`LayeredWorkspace`)
    layered_workspace: bool = False


@attrs.frozen
class ServiceSpec:
    """A sidecar container of a stage, reachable from it by ``name``."""

    name: str
    image: str
    command: Sequence[str] | str | None = None
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    healthcheck: Sequence[str] | str | None = None
    healthcheck_timeout: float = 60.0
    ports: tuple[int, ...] = ()  # without a healthcheck: healthy once each accepts a connection


@attrs.frozen
class StageSpec:
    """What a backend needs to know to prepare a stage."""

    run_id: str
    stage: str
    image: str | None
    workspace: Path
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    services: tuple[ServiceSpec, ...] = ()
    volumes: Mapping[str, str] = attrs.field(factory=dict)  # named volume -> path in the container
    workdir: str | None = None  # where commands start: relative to the workspace, or absolute
    with_workspace: bool = True  # False: the stage's place gets no workspace at all
    #: the stage's env variables whose values are secrets: given to each command, never to the
    #: container itself (where `docker inspect` would show them)
    secret_env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    #: limits: ``cpus`` (float), ``memory`` (bytes), ``pids``; None: the backend's defaults
    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None
    #: constraints on where the stage may run (``node.labels.gpu==true``), for a backend that
    #: places stages on machines (``places_stages``); others ignore them
    placement: tuple[str, ...] = ()
    #: files (absolute paths: the secrets file) the stage must not see where they lie in its workspace
    hidden: tuple[str, ...] = ()

    @property
    def all_env(self) -> dict[str, str]:
        return {**self.env, **self.secret_env}


@attrs.frozen
class Origin:
    """Which run and stage a call is made for."""

    run_id: str
    stage: str


@attrs.frozen
class StageHandle:
    """A prepared stage on a backend; ``ref`` is the backend's own (a container id, ...), an
    ``object`` at this seam: each backend narrows it with one accessor that refuses another
    backend's handle (Docker: ``stage_container``, Swarm: its ``_task``, host and fake: ``str``).

    In the backend's own terms: ``workspace_dir`` is where the workspace is (``/workspace`` in a
    container, the pipeline's folder on the host; None when the stage has none), ``workdir`` where
    commands start (None: the image's own working directory).
    """

    spec: StageSpec
    ref: object = attrs.field(eq=False, repr=False, default=None)
    where: str = "host"
    workdir: str | None = "/workspace"
    workspace_dir: str | None = "/workspace"

    @property
    def origin(self) -> Origin:
        return Origin(self.spec.run_id, self.spec.stage)


@attrs.frozen
class CommandResult:
    """What ``ctx.sh`` returns: the command, its exit code and everything it printed."""

    command: str
    exit_code: int
    _stdout: str | Captured = attrs.field(default="", repr=False)
    _stderr: str | Captured = attrs.field(default="", repr=False)
    duration_s: float = 0.0
    #: the kernel killed the command for using more memory than its stage may (``resources=``)
    oom_killed: bool = False

    @property
    def stdout(self) -> str:
        """Everything the command printed on stdout. Backends keep the first MiB in memory and the
        rest in a temporary file, read back here: a command that prints gigabytes costs memory
        only to a caller that asks for its text."""
        return self._stdout if isinstance(self._stdout, str) else self._stdout.text()

    @property
    def stderr(self) -> str:
        """Everything the command printed on stderr (kept as :attr:`stdout` is)."""
        return self._stderr if isinstance(self._stderr, str) else self._stderr.text()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def output(self) -> str:
        """stdout and stderr together (stdout first)."""
        return self.stdout + self.stderr


@attrs.frozen
class Image:
    """An image in the engine: its id and the tags it was given (``pk.Image``)."""

    id: str
    tags: tuple[str, ...] = ()
    #: ``registry/repo@sha256:...`` when the backend pushed the image to the run's registry so
    #: that other machines can pull it (the Swarm backend); stages run in it by this name
    remote: str | None = None

    @property
    def ref(self) -> str:
        """The best name to run or tag it by: its first tag, else its id."""
        return self.tags[0] if self.tags else self.id

    def __str__(self) -> str:
        return self.ref


@attrs.frozen
class BuildSpec:
    """An image build. ``secrets`` hold resolved values: they never reach a repr or a log."""

    run_id: str
    stage: str
    context: Path
    dockerfile: str = "Dockerfile"
    tag: str | None = None
    build_args: Mapping[str, str] = attrs.field(factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict)
    secrets: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    #: files (absolute paths: the secrets file) never sent with the context
    hidden: tuple[str, ...] = ()
    #: ``--image-map``: a FROM line naming a key builds from its value instead
    image_map: Mapping[str, str] = attrs.field(factory=dict)


@runtime_checkable
class StageBackend(Protocol):
    """Where stages run: the host, one Docker engine, a swarm."""

    name: str
    #: what it can do (a class attribute, or a property when it depends on the configuration)
    capabilities: Capabilities

    def check(self) -> None:
        """Raise :class:`pipekit.exceptions.BackendError` when the backend cannot run stages."""

    def prepare(self, spec: StageSpec) -> StageHandle:
        """Make the place a stage runs in (pull its image, start its container)."""

    def exec(
        self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink, *, strict: bool = True
    ) -> CommandResult:
        """Run ``sh -c command`` in the prepared stage, streaming lines to ``on_line``.

        ``strict``: stop at the first failing command, and fail a pipeline when any part of it
        fails where the shell can (:func:`shell_script`), as Jenkins' ``sh`` and GitHub Actions do.

        ``env`` is set on top of the stage's own environment (``spec.env``, and on the host the
        process environment), which the backend applies itself.
        """

    def put_files(self, handle: StageHandle, archive: bytes, dest: str) -> None:
        """Unpack a tar ``archive`` at ``dest`` (absolute, in the stage's place)."""

    def get_files(self, handle: StageHandle, path: str) -> bytes | None:
        """``path`` (absolute, in the stage's place) as a tar archive whose members are named
        from the path's own base name (``dist/app.whl`` for ``/workspace/dist``); None when it
        does not exist."""

    def release(self, handle: StageHandle) -> None:
        """Remove what :meth:`prepare` made and stop what still runs there. Idempotent."""

    def cleanup(self, run_id: str) -> None:
        """Remove everything that the run ``run_id`` may have left (containers, networks)."""


@runtime_checkable
class ImageBackend(Protocol):
    """Images and registries, for ``ctx.docker`` and for the images stages run in."""

    def image_id(self, origin: Origin, image: str) -> str:
        """The id of a named image (pulling it if needed), for cache keys."""

    def image_problem(self, image: str) -> str | None:
        """Why ``image`` could not be run, found without pulling it; None when it is usable
        (present, or known to its registry). For the checks before a run."""

    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        """Build an image, streaming the build log; raise BuildFailed naming the instruction."""

    def tag(self, origin: Origin, image: Image, ref: str) -> Image:
        """Give ``image`` the name ``ref``."""

    def push(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> str:
        """Push ``ref`` and return the digest the registry stored (``sha256:...``)."""

    def pull(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> Image:
        """Pull ``ref`` (a tag or a ``name@sha256:...`` digest)."""

    def run_once(
        self,
        origin: Origin,
        image: str,
        command: list[str] | None,
        env: Mapping[str, str],
        on_line: LineSink,
    ) -> CommandResult:
        """Run a one-shot container to its end, streaming its output, and remove it."""


@attrs.frozen
class DetachedSpec:
    """A container a stage starts in the background (``ctx.docker.run(..., detach=True)``),
    reachable from the stage by ``name`` on the stage's network, removed when the stage ends."""

    origin: Origin
    image: str
    name: str
    command: list[str] | None = None
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@runtime_checkable
class DetachedContainers(Protocol):
    """Background containers of a stage (the Docker backend, the fake one)."""

    def start_detached(self, spec: DetachedSpec, stage: StageHandle | None) -> str:
        """Start it on the network of ``stage`` (the stage's own container, if it has one, joins
        that network); its id."""

    def detached_logs(self, detached: str) -> str:
        """Its output so far (stdout and stderr)."""

    def stop_detached(self, detached: str, timeout: float) -> int | None:
        """Stop it (SIGTERM, then SIGKILL after ``timeout`` seconds); its exit code."""

    def wait_detached(self, detached: str, timeout: float | None) -> int:
        """Wait until it exits (TimeoutError after ``timeout`` seconds); its exit code."""

    def remove_detached(self, detached: str) -> None:
        """Remove it (and a network made for it alone); one already gone is fine."""


@attrs.frozen
class CacheVolume:
    """A volume that keeps a stage's ``cache_dirs`` across runs."""

    name: str
    stage: str
    created: str = ""


@runtime_checkable
class CacheVolumes(Protocol):
    """A backend that keeps ``cache_dirs`` in volumes (``pipekit cache list|prune``)."""

    def check(self) -> None: ...

    def cache_volumes(self) -> list[CacheVolume]:
        """The cache volumes there are."""

    def remove_volume(self, name: str) -> bool:
        """Remove one; False when it is gone or in use."""


@runtime_checkable
class Sweeps(Protocol):
    """A backend that can find what runs left behind (``pipekit cleanup``)."""

    def check(self) -> None: ...

    def cleanup(self, run_id: str) -> None: ...

    def leftovers(self) -> dict[str, bool]:
        """Runs with objects left: run id -> whether the process that made them still runs."""

    def sweep(self) -> list[str]:
        """Remove the leftovers of runs whose process is gone; their ids."""


class FileStreams(Protocol):
    """The file methods of a backend whose ``capabilities.streams_files`` is True."""

    def put_stream(self, handle: StageHandle, chunks: Iterable[bytes], dest: str) -> None:
        """Unpack a tar stream at ``dest``, sent as it is made (``chunks``)."""

    def get_stream(self, handle: StageHandle, path: str) -> IO[bytes] | None:
        """``path`` as a tar stream (named as ``get_files`` names it); None when it does not exist."""


class LayeredWorkspace(Protocol):
    """The methods of a backend whose ``capabilities.layered_workspace`` is True (with :class:`FileStreams`)."""

    #: where, in a stage's place, its own layer (what it created, changed or deleted) can be read
    changes_dir: str

    def workspace_base(self, handle: StageHandle) -> Any:
        """The ``WorkspaceBase`` (:mod:`pipekit._workspace.delta`) the stage's workspace is a view
        of; None when the stage has a plain copy (the whole workspace travels)."""

    def exists(self, handle: StageHandle, path: str) -> bool:
        """Whether ``path`` exists in the stage's place (a link is not followed)."""


class KeepsFailed(Protocol):
    """The method of a backend whose ``capabilities.keeps_failed`` is True."""

    def keep(self, handle: StageHandle) -> list[str]:
        """Keep a failed stage's place (instead of releasing it); the names of what was kept."""


class ScriptedWorkspace(Protocol):
    """What a backend whose ``capabilities.scripted_files`` is True gives ``ctx.junit``/``ctx.archive``."""

    #: said when a file is missing
    files_hint: str

    def workspace_view(self, handle: StageHandle) -> Path:
        """The folder the stage's files are read from instead of the pipeline's folder."""


@runtime_checkable
class Backend(StageBackend, ImageBackend, Protocol):
    """A stage backend that also handles images: the Docker backend, the fake backend."""


#: what a strict command starts with: errexit always, pipefail where the shell has it (bash, busybox
#: ash; not dash), found out by trying it in a subshell rather than assumed
STRICT_PREAMBLE = "set -e\nif (set -o pipefail) 2>/dev/null; then set -o pipefail; fi\n"
#: the variable a command travels in, and the ``sh -c`` argument that runs it: a command (which may
#: hold a secret) never appears on a process's command line, which every user can read in /proc
SCRIPT_VAR = "PIPEKIT_SCRIPT"
RUN_SCRIPT = ["sh", "-c", f's=${SCRIPT_VAR}; unset {SCRIPT_VAR}; eval "$s"']


def shell_script(command: str, strict: bool = True) -> str:
    """The script a backend runs for ``command`` (through :data:`RUN_SCRIPT` and :data:`SCRIPT_VAR`)."""
    return STRICT_PREAMBLE + command if strict else command

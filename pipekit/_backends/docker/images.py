"""The Docker backend's images and registries: pull, build, tag, push and one-shot runs."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from pipekit._backends.docker.buildkit import BuildProgress, buildkit_build
from pipekit._backends.docker.engine import (
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_STAGE,
    STEP,
    container_name,
    engine_message,
    owner_label,
    progress_line,
    remove_container,
    with_tag,
)
from pipekit._backends.docker.sockets import close_stream
from pipekit._backends.registry import registry_error, registry_of
from pipekit._core.streams import LineSplitter
from pipekit.backend import BuildSpec, CommandResult, Image, LineSink, Origin
from pipekit.exceptions import (
    BackendError,
    BuildKitUnavailable,
    ImageNotFound,
    RegistryError,
    RegistryUnavailable,
    UsageError,
)

if TYPE_CHECKING:
    import docker

__all__ = ["Images", "build_context"]

BUILDER_ENV = "PIPEKIT_BUILDER"
#: never sent to a build: pipekit's own state (history, logs, artifacts)
ALWAYS_IGNORED = (".pipekit", ".pipekit/**")


REGISTRY_TIMEOUT_ENV = "PIPEKIT_REGISTRY_TIMEOUT"
REGISTRY_TIMEOUT_S = 120.0


def watched(start: Callable[[], Iterator[Any]], ref: str, what: str) -> Iterator[Any]:
    """The chunks of a push or pull, failing when the engine reports no progress for a while (a
    registry that accepts connections and never answers would otherwise hang the run for ever)."""
    import queue

    timeout = float(os.environ.get(REGISTRY_TIMEOUT_ENV) or REGISTRY_TIMEOUT_S)
    chunks: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump() -> None:
        try:
            for chunk in start():  # starting it waits for the engine too: both are watched
                chunks.put(("chunk", chunk))
            chunks.put(("end", None))
        except BaseException as e:  # handed to the caller's thread
            chunks.put(("error", e))

    threading.Thread(target=pump, name="pipekit-registry", daemon=True).start()
    while True:
        try:
            kind, item = chunks.get(timeout=timeout)
        except queue.Empty:
            registry = registry_of(ref)
            raise RegistryUnavailable(
                f"Could not {what} {registry}: no progress for {timeout:g}s while working on {ref}; the"
                f" registry may be down or not answering. {REGISTRY_TIMEOUT_ENV}=SECONDS waits longer",
                registry=registry,
                reference=ref,
            ) from None
        if kind == "end":
            return
        if kind == "error":
            raise item
        yield item


def _registry_chunks(
    call: Callable[..., Iterator[Any]],
    repo: str,
    tag: str | None,
    auth: Mapping[str, str] | None,
    ref: str,
    what: str,
    on_line: LineSink,
) -> Iterator[Any]:
    """The progress of a push or pull (``call``: the SDK's), watched for stalls, its errors raised
    as registry errors and its status lines logged."""
    options = {"tag": tag or "latest", "stream": True, "decode": True, "auth_config": dict(auth) if auth else None}
    for chunk in watched(lambda: call(repo, **options), ref, what):
        if "error" in chunk:
            raise registry_error(chunk["error"], ref, what)
        progress_line(chunk, on_line)
        yield chunk


def _inode(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inodes(paths: Iterable[str]) -> set[tuple[int, int]]:
    """The files that never go into a build context (the secrets file), by inode."""
    return {inode for inode in map(_inode, paths) if inode is not None}


def _mapped_dockerfile(spec: BuildSpec, on_line: LineSink | None) -> bytes | None:
    """The Dockerfile with ``--image-map`` applied to its FROM lines, when it names a mapped image
    (each replacement said in the build's log); None when it is sent as it is."""
    from pipekit._backends.docker.dockerfile import map_from

    if not spec.image_map:
        return None
    try:
        text = (spec.context / spec.dockerfile).read_text()
    except (OSError, UnicodeDecodeError):
        return None  # the build says what is wrong with it
    mapped, used = map_from(text, spec.image_map)
    for image, local in used.items():
        if on_line is not None:
            on_line("stdout", f"--image-map: FROM {image} builds from {local}")
    return mapped.encode() if used else None


@contextlib.contextmanager
def build_context(spec: BuildSpec, on_line: LineSink | None = None) -> Iterator[IO[bytes]]:
    """The build context as a tar, as the docker CLI sends it: ``.dockerignore`` honoured,
    ``.pipekit/`` always left out (it would break the layer cache on every run), and so is the
    secrets file (``spec.hidden``), wherever it lies in the context; the Dockerfile's FROM lines
    mapped with ``--image-map`` (in the tar only)."""
    import io
    import tarfile
    import tempfile

    from docker.utils.build import exclude_paths

    root = spec.context
    ignore_file = root / ".dockerignore"
    patterns: list[str] = []
    if ignore_file.is_file():
        lines = [line.strip() for line in ignore_file.read_text().splitlines()]
        patterns = [line for line in lines if line and not line.startswith("#")]
    dockerfile = os.path.normpath(spec.dockerfile)
    mapped = _mapped_dockerfile(spec, on_line)
    with tempfile.TemporaryFile(prefix="pipekit-context-") as context:
        # GNU format, as the docker CLI writes: its archive check reads only the first 512 bytes,
        # which a PAX header (Python's default) does not fit in
        with tarfile.open(fileobj=context, mode="w", format=tarfile.GNU_FORMAT) as tar:
            secret = _inodes(spec.hidden)
            for name in sorted(exclude_paths(str(root), [*patterns, *ALWAYS_IGNORED], dockerfile=spec.dockerfile)):
                if secret and _inode(root / name) in secret:  # the secrets file (or a hard link to it)
                    continue
                info = tar.gettarinfo(str(root / name), arcname=name)
                info.mtime = int(info.mtime)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg() and mapped is not None and os.path.normpath(name) == dockerfile:
                    info.size = len(mapped)
                    tar.addfile(info, io.BytesIO(mapped))
                elif info.isreg():
                    with open(root / name, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        context.seek(0)
        yield context


class Images:
    """Images and registries over the backend's client (``client()``) and the engine's address
    (``host()``, which BuildKit dials itself); each image is pulled at most once."""

    def __init__(self, client: Callable[[], docker.DockerClient], host: Callable[[], str]) -> None:
        self._client = client
        self._host = host
        self._image_locks: dict[str, threading.Lock] = {}
        self._ready_images: set[str] = set()
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        return self._client()

    def ensure_image(self, image: str) -> None:
        """Make sure ``image`` is in the engine, pulling it once if it is not."""
        from docker.errors import APIError, DockerException
        from docker.errors import ImageNotFound as DockerImageNotFound

        with self._lock:
            if image in self._ready_images:
                return
            lock = self._image_locks.setdefault(image, threading.Lock())
        with lock:
            if image in self._ready_images:
                return
            try:
                self.client.images.get(image)
            except DockerImageNotFound:
                try:
                    self.client.images.pull(with_tag(image))
                except (APIError, DockerException) as e:
                    raise ImageNotFound(
                        f"Image '{image}' is not in the Docker engine and could not be pulled:"
                        f" {engine_message(e)}. Build or pull it first, or map it to a local image with"
                        f" --image-map {image}=LOCAL_IMAGE",
                        image=image,
                    ) from e
            except DockerException as e:
                raise BackendError(f"Cannot look up image '{image}': {engine_message(e)}") from e
            with self._lock:
                self._ready_images.add(image)

    def image_problem(self, image: str) -> str | None:
        """Why ``image`` could not be used, without pulling it: None when it is in the engine or its
        registry knows it (``docker manifest inspect``)."""
        from docker.errors import DockerException
        from docker.errors import ImageNotFound as DockerImageNotFound

        with self._lock:
            if image in self._ready_images:
                return None
        try:
            self.client.images.get(image)
            with self._lock:
                self._ready_images.add(image)
            return None
        except DockerImageNotFound:
            pass
        except DockerException as e:
            return f"cannot look it up: {engine_message(e)}"
        try:
            self.client.images.get_registry_data(with_tag(image))
            return None
        except DockerException as e:
            return f"it is not in the engine, and its registry does not have it ({engine_message(e)})"

    def image_id(self, origin: Origin, image: str) -> str:
        self.ensure_image(image)
        return str(self.client.images.get(image).id)

    # -- images and registries -------------------------------------------------------------
    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        """Build with BuildKit (cache mounts, secrets, targets); the classic builder only when
        ``PIPEKIT_BUILDER=classic`` asks for it. The context never holds ``.pipekit/``."""
        builder = os.environ.get(BUILDER_ENV, "buildkit")
        if builder not in ("buildkit", "classic"):
            raise UsageError(f"{BUILDER_ENV} is buildkit (the default) or classic, got {builder!r}")
        if builder == "classic" and spec.secrets:
            raise BuildKitUnavailable(
                f"Build secrets need BuildKit, and {BUILDER_ENV}=classic asks for the classic builder;"
                " pipekit does not fall back to build args, which would leak the secret"
            )
        with build_context(spec, on_line) as context:
            if builder == "classic":
                image_id = self._build_classic(spec, context, on_line)
            else:
                image_id = buildkit_build(spec, context, on_line, host=self._host())
        return Image(id=image_id, tags=(spec.tag,) if spec.tag else ())

    def _build_classic(self, spec: BuildSpec, context: IO[bytes], on_line: LineSink) -> str:
        from docker.errors import APIError, DockerException

        progress = BuildProgress(on_line, STEP)
        image_id = None
        splitter = LineSplitter("stdout", progress)
        try:
            for chunk in self.client.api.build(
                fileobj=context,
                custom_context=True,
                dockerfile=spec.dockerfile,
                tag=spec.tag,
                buildargs=dict(spec.build_args) or None,
                target=spec.target,
                labels=dict(spec.labels) or None,
                rm=True,
                forcerm=True,
                decode=True,
            ):
                if "stream" in chunk:
                    splitter.feed(chunk["stream"].encode())
                if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    splitter.close()
                    raise progress.failed(spec.stage, chunk["error"].strip())
            splitter.close()
        except (APIError, DockerException) as e:
            raise progress.failed(spec.stage, engine_message(e)) from e
        if image_id is None and spec.tag:
            image_id = self.client.images.get(spec.tag).id
        if image_id is None:
            raise progress.failed(spec.stage, "the engine returned no image id")
        return str(image_id)

    def tag(self, origin: Origin, image: Image, ref: str) -> Image:
        from docker.errors import APIError
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(ref)
        try:
            self.client.api.tag(image.id, repo, tag or "latest")
        except APIError as e:
            raise registry_error(engine_message(e), ref, "tag") from e
        full = ref if tag else f"{ref}:latest"
        return Image(id=image.id, tags=(full, *(t for t in image.tags if t != full)))

    def push(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> str:
        from docker.errors import APIError, DockerException
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(ref)
        digest = None
        try:
            push = self.client.api.push
            for chunk in _registry_chunks(push, repo, tag, auth, ref, "push to", on_line):
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = aux["Digest"]
        except (APIError, DockerException) as e:
            raise registry_error(engine_message(e), ref, "push to") from e
        if not digest:
            raise RegistryError(
                f"Pushed {ref} but the registry reported no digest", registry=registry_of(ref), reference=ref
            )
        return str(digest)

    def pull(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> Image:
        from docker.errors import APIError, DockerException
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(ref)
        try:
            for _chunk in _registry_chunks(self.client.api.pull, repo, tag, auth, ref, "pull from", on_line):
                pass
            image = self.client.images.get(ref if tag else f"{ref}:latest")
        except (APIError, DockerException) as e:
            raise registry_error(engine_message(e), ref, "pull from") from e
        with self._lock:
            self._ready_images.add(ref)
        return Image(id=str(image.id), tags=tuple(image.tags))

    def run_once(
        self,
        origin: Origin,
        image: str,
        command: list[str] | None,
        env: Mapping[str, str],
        on_line: LineSink,
    ) -> CommandResult:
        from docker.errors import APIError
        from docker.utils.socket import STDERR, frames_iter

        run_id, stage = origin.run_id, origin.stage
        self.ensure_image(image)
        api = self.client.api
        start = time.monotonic()
        shown = " ".join(command) if command else "(the image's command)"
        try:
            cid = api.create_container(
                image,
                command=command,
                environment=dict(env),
                labels={LABEL_MANAGED: "true", LABEL_RUN: run_id, LABEL_STAGE: stage, **owner_label()},
                name=container_name(run_id, f"{stage}-run"),
            )["Id"]
        except APIError as e:
            raise BackendError(
                f"Cannot create a container from '{image}' in stage '{stage}': {engine_message(e)}"
            ) from e
        out, err = LineSplitter("stdout", on_line), LineSplitter("stderr", on_line)
        try:
            sock = api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 1})
            try:
                api.start(cid)
                for stream_id, data in frames_iter(sock, tty=False):
                    (err if stream_id == STDERR else out).feed(data)
            finally:
                close_stream(sock)
            code = api.wait(cid).get("StatusCode", 137)
        except APIError as e:
            why = engine_message(e)
            if "executable file not found" in why or "not found" in why:
                return CommandResult(shown, 127, out.close(), err.close().text() + why + "\n", time.monotonic() - start)
            raise BackendError(f"Cannot run '{image}' in stage '{stage}': {why}") from e
        finally:
            remove_container(api, cid)
        return CommandResult(shown, int(code), out.close(), err.close(), time.monotonic() - start)

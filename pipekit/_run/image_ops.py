"""``ctx.docker``: build, tag, push, pull and run images from a stage."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, overload

from pipekit._backends.registry import registry_of
from pipekit._dsl.secrets import Credentials, Secret, SecretStore
from pipekit._run.detached import Container
from pipekit.backend import (
    BuildSpec,
    CommandResult,
    DetachedContainers,
    DetachedSpec,
    Image,
    ImageBackend,
    LineSink,
    Origin,
    StageHandle,
)
from pipekit.exceptions import StageFailed, StepFailed

__all__ = ["DockerOps", "ImageScope"]


class ImageScope(Protocol):
    """What ``ctx.docker`` needs of its stage (a :class:`pipekit._run.context.StageScope` has it)."""

    @property
    def stage(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    @property
    def workspace(self) -> Path: ...

    @property
    def secrets(self) -> SecretStore: ...

    @property
    def log(self) -> Any: ...

    @property
    def images(self) -> ImageBackend: ...

    @property
    def image_map(self) -> Mapping[str, str]: ...


def _auth_server(ref: str) -> str:
    """The server address a login is for; Docker Hub's is its index URL, as in the CLI's config."""
    registry = registry_of(ref)
    return "https://index.docker.io/v1/" if registry == "docker.io" else registry


class DockerOps:
    """The image operations a stage can do, on the run's backend, with secrets kept out of sight."""

    def __init__(
        self,
        scope: ImageScope,
        *,
        on_line: LineSink,
        sync: Callable[[], None] | None = None,
        place: StageHandle | None = None,
    ) -> None:
        self._sync = sync or (lambda: None)
        self._place = place  # the stage's own place: detached containers join its network
        self._started: list[Container] = []
        self._backend = scope.images
        self._origin = Origin(scope.run_id, scope.stage)
        self._run_id = scope.run_id
        self._stage = scope.stage
        self._workspace = scope.workspace
        self._secrets = scope.secrets
        self._log = scope.log
        self._on_line = on_line
        self._image_map = scope.image_map

    def _plain(self, what: str, values: Mapping[str, Any] | None) -> dict[str, str]:
        """Build args and labels land in the image's history: no secret may go there, neither as a
        pk.secret nor as a value that holds a secret's value (``ctx.secret(...)``)."""
        out = {}
        for key, value in (values or {}).items():
            text = None if isinstance(value, Secret) else str(value)
            if text is None or self._secrets.masker.mask(text) != text:
                raise StageFailed(
                    f"Stage '{self._stage}': {what} '{key}' holds a secret. {what.capitalize()}s land in the"
                    " image's history (`docker history` shows them); pass secrets with secrets={...} and read"
                    " them in the Dockerfile with RUN --mount=type=secret,id=...",
                    stage=self._stage,
                )
            out[str(key)] = text
        return out

    def build(
        self,
        context: str | Path = ".",
        dockerfile: str = "Dockerfile",
        tag: str | None = None,
        build_args: Mapping[str, Any] | None = None,
        target: str | None = None,
        labels: Mapping[str, Any] | None = None,
        secrets: Mapping[str, str | Secret] | None = None,
    ) -> Image:
        """Build an image from a Dockerfile (``.dockerignore`` honoured), streaming its log."""
        self._sync()  # a stage working on a copy of the workspace builds what it has made
        folder = (self._workspace / context).resolve()
        if not folder.is_dir():
            raise StageFailed(f"Stage '{self._stage}': the build context {folder} is not a folder", stage=self._stage)
        if not (folder / dockerfile).is_file():
            raise StageFailed(
                f"Stage '{self._stage}': there is no {dockerfile} in the build context {folder}", stage=self._stage
            )
        spec = BuildSpec(
            run_id=self._run_id,
            stage=self._stage,
            context=folder,
            dockerfile=dockerfile,
            tag=tag,
            build_args=self._plain("build arg", build_args),
            target=target,
            labels=self._plain("label", labels),
            secrets={str(k): self._secrets.resolve(v, stage=self._stage) for k, v in (secrets or {}).items()},
            hidden=self._secrets.files,
            image_map=self._image_map,
        )
        self._log.info("image build started", context=str(folder), dockerfile=dockerfile, tag=tag)
        image = self._backend.build(spec, self._on_line)
        self._log.info("image built", image=image.id, tags=list(image.tags))
        return image

    def tag(self, image: Image | str, ref: str) -> Image:
        """Give an image another name; the returned Image lists the new name first."""
        img = image if isinstance(image, Image) else Image(id=image, tags=(image,))
        tagged = self._backend.tag(self._origin, img, ref)
        self._log.info("image tagged", image=img.id, ref=ref)
        return tagged

    def _auth(self, credentials: Credentials | None, ref: str) -> dict[str, str] | None:
        if credentials is None:
            return None  # the user's Docker config (~/.docker/config.json, DOCKER_CONFIG), as the CLI does
        return {
            "username": self._secrets.resolve(credentials.username, stage=self._stage),
            "password": self._secrets.resolve(credentials.password, stage=self._stage),
            "serveraddress": credentials.registry or _auth_server(ref),
        }

    def push(self, image: Image | str, ref: str | None = None, credentials: Credentials | None = None) -> str:
        """Tag ``image`` as ``ref`` (if given) and push it; returns the digest (``sha256:...``)."""
        if ref is None:
            if not isinstance(image, (Image, str)) or (isinstance(image, Image) and not image.tags):
                raise StageFailed(f"Stage '{self._stage}': push needs a ref for an untagged image", stage=self._stage)
            ref = image if isinstance(image, str) else image.tags[0]
        else:
            self.tag(image, ref)
        auth = self._auth(credentials, ref)
        self._log.info("image push started", ref=ref)
        digest = self._backend.push(self._origin, ref, auth, self._on_line)
        self._log.info("image pushed", ref=ref, digest=digest)
        return digest

    def pull(self, ref: str, credentials: Credentials | None = None) -> Image:
        """Pull an image by tag or by digest (``name@sha256:...``)."""
        image = self._backend.pull(self._origin, ref, self._auth(credentials, ref), self._on_line)
        self._log.info("image pulled", ref=ref, image=image.id)
        return image

    @overload
    def run(
        self,
        image: Image | str,
        command: str | Sequence[str] | None = ...,
        env: Mapping[str, Any] | None = ...,
        check: bool = ...,
        *,
        detach: Literal[False] = ...,
        name: str | None = ...,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        image: Image | str,
        command: str | Sequence[str] | None = ...,
        env: Mapping[str, Any] | None = ...,
        check: bool = ...,
        *,
        detach: Literal[True],
        name: str | None = ...,
    ) -> Container: ...

    def run(
        self,
        image: Image | str,
        command: str | Sequence[str] | None = None,
        env: Mapping[str, Any] | None = None,
        check: bool = True,
        *,
        detach: bool = False,
        name: str | None = None,
    ) -> CommandResult | Container:
        """Run a one-shot container (like ``docker run --rm IMAGE COMMAND``), streaming its output;
        with ``detach=True``, start it in the background (like ``docker run -d``) on the stage's
        network under ``name`` and return it (:class:`pipekit._run.detached.Container`)."""
        ref = image.ref if isinstance(image, Image) else image
        if isinstance(image, Image) and not image.tags:
            ref = image.id
        argv = shlex.split(command) if isinstance(command, str) else (list(command) if command else None)
        if detach:
            return self._detached(ref, argv, env, name or _default_name(image))
        result = self._backend.run_once(
            self._origin, ref, argv, self._secrets.resolve_env(env or {}, stage=self._stage), self._on_line
        )
        if check and result.exit_code != 0:
            tail = (result.stdout + result.stderr).splitlines()[-20:]
            raise StepFailed(
                stage=self._stage,
                command=f"docker run {ref} {result.command}",
                exit_code=result.exit_code,
                output_tail=tail,
            )
        return result

    def _detached(self, ref: str, argv: list[str] | None, env: Mapping[str, Any] | None, name: str) -> Container:
        if not isinstance(self._backend, DetachedContainers):
            raise StageFailed(
                f"Stage '{self._stage}': ctx.docker.run(..., detach=True) needs the Docker backend", stage=self._stage
            )
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
            raise StageFailed(
                f"Stage '{self._stage}': name={name!r} is the container's host name: letters, digits, '.', '_', '-'",
                stage=self._stage,
            )
        env_values = self._secrets.resolve_env(env or {}, stage=self._stage)
        spec = DetachedSpec(origin=self._origin, image=ref, name=name, command=argv, env=env_values)
        cid = self._backend.start_detached(spec, self._place)
        container = Container(self._backend, cid, name, ref, self._secrets.masker.mask)
        self._started.append(container)
        self._log.info("container started", image=ref, name=name, container=cid[:12])
        return container

    def close(self) -> None:
        """Remove the containers the stage started in the background (at the stage's end)."""
        for container in self._started:
            try:
                container.remove()
            except Exception as e:  # the engine may be gone: the run's cleanup removes it then
                self._log.warning("container not removed", name=container.name, error=str(e))
        self._started.clear()


def _default_name(image: Image | str) -> str:
    """A container's default host name: its image's name without registry, folder or tag."""
    ref = image.tags[0] if isinstance(image, Image) and image.tags else (image if isinstance(image, str) else "")
    base = ref.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return base if re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", base or "") else "container"

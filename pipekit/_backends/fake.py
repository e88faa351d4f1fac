"""The backends of :mod:`pipekit.testing`: a fake one where nothing runs, and a recording wrapper.

Both implement :class:`pipekit.backend.Backend`; users import them from ``pipekit.testing``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from pipekit._backends.fake_files import FILES_HINT, ScriptedFiles, checked
from pipekit._backends.registry import registry_error
from pipekit._workspace.archive import pack
from pipekit.backend import (
    BuildSpec,
    Capabilities,
    CommandResult,
    DetachedSpec,
    Image,
    LineSink,
    Origin,
    StageHandle,
    StageSpec,
)
from pipekit.exceptions import BuildFailed, StageFailed

__all__ = ["Call", "FakeBackend", "Pattern", "RecordingBackend"]

Pattern = str | re.Pattern[str]


def _matcher(pattern: Pattern) -> Callable[[str], bool]:
    """Exact text, a glob (``*``, ``?``, ``[``), or a compiled regex (searched)."""
    if isinstance(pattern, re.Pattern):
        return lambda text: pattern.search(text) is not None
    if any(c in pattern for c in "*?["):
        return lambda text: fnmatch.fnmatchcase(text, pattern)
    return lambda text: text == pattern


@attrs.frozen
class Call:
    """One thing a stage did: a command (``sh``, ``run``), a ``build``, ``tag``, ``push``, ``pull``
    or a ``service`` started. ``env`` holds the variables the command got (secrets masked)."""

    stage: str
    kind: str
    text: str
    env: Mapping[str, str] = attrs.field(factory=dict)
    exit_code: int | None = None
    ref: str | None = None
    image: str | None = None

    def masked(self, mask: Callable[[str], str]) -> Call:
        """The call as a test sees it: every known secret value masked."""
        return attrs.evolve(self, text=mask(self.text), env={k: mask(v) for k, v in self.env.items()})


@attrs.frozen
class _Response:
    matches: Callable[[str], bool] = attrs.field(repr=False)
    stage: Callable[[str], bool] | None = attrs.field(repr=False)
    exit_code: int
    stdout: str
    stderr: str
    delay: float
    files: Mapping[str, bytes] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class _Refusal:
    matches: Callable[[str], bool] = attrs.field(repr=False)
    message: str


@attrs.frozen
class _BuildRule:
    matches: Callable[[str], bool] = attrs.field(repr=False)
    fail_at: str | None
    error: str
    output: str


def _fake_id(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


class _Recording:
    """The record that both test backends keep."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)


class FakeBackend(_Recording):
    """A backend where nothing runs: commands answer from a script, images are made up.

    Unscripted commands succeed with no output; with ``strict=True`` they fail their stage
    instead, so a test notices a command it did not expect.
    """

    name = "fake"
    #: nothing runs anywhere: there is nothing to copy; host stages are recorded here too; the
    #: stages' files are the ones their scripted commands wrote (workspace_view)
    capabilities = Capabilities(shares_workspace=True, runs_host_stages=True, scripted_files=True)
    #: what ctx.junit and ctx.archive say when a file is missing
    files_hint = FILES_HINT

    def __init__(self, *, strict: bool = False) -> None:
        super().__init__()
        self.strict = strict
        self._responses: list[_Response] = []
        self._builds: list[_BuildRule] = []
        self._push_refusals: list[_Refusal] = []
        self._pull_refusals: list[_Refusal] = []
        self._released: dict[str, threading.Event] = {}
        self.open_handles: set[str] = set()
        #: the background containers started (ctx.docker.run(detach=True)) and not removed yet
        self.open_detached: set[str] = set()
        self._detached: dict[str, tuple[str, str]] = {}
        self._files = ScriptedFiles()  # each stage's workspace: the files responses wrote

    # -- scripting ------------------------------------------------------------------------
    def respond(
        self,
        pattern: Pattern,
        *,
        exit_code: int = 0,
        stdout: str = "",
        stderr: str = "",
        stage: Pattern | None = None,
        delay: float = 0.0,
        files: Mapping[str, str | bytes] | None = None,
    ) -> None:
        stage_matcher = _matcher(stage) if stage is not None else None
        scripted = checked(files)
        self._responses.append(_Response(_matcher(pattern), stage_matcher, exit_code, stdout, stderr, delay, scripted))

    def respond_build(
        self, tag: Pattern = "*", *, fail_at: str | None = None, error: str = "", output: str = ""
    ) -> None:
        self._builds.append(_BuildRule(_matcher(tag), fail_at, error or "the build failed", output))

    def refuse_push(self, ref: Pattern = "*", message: str = "unauthorized: authentication required") -> None:
        self._push_refusals.append(_Refusal(_matcher(ref), message))

    def refuse_pull(self, ref: Pattern = "*", message: str = "manifest unknown") -> None:
        self._pull_refusals.append(_Refusal(_matcher(ref), message))

    def _response(self, stage: str, text: str) -> _Response | None:
        for r in reversed(self._responses):  # the latest matching response wins
            if r.matches(text) and (r.stage is None or r.stage(stage)):
                return r
        return None

    # -- the Backend protocol -------------------------------------------------------------
    def check(self) -> None:
        return None

    def prepare(self, spec: StageSpec) -> StageHandle:
        key = uuid.uuid4().hex
        self._released[key] = threading.Event()
        self.open_handles.add(key)
        for svc in spec.services:
            self.record(Call(spec.stage, "service", f"{svc.name} ({svc.image})", image=svc.image))
        return StageHandle(spec=spec, ref=key, where=f"fake {spec.image or 'host'}")

    def _answer(
        self, handle_key: str | None, stage: str, kind: str, text: str, env: Mapping[str, str], on_line: LineSink
    ) -> CommandResult:
        response = self._response(stage, text)
        if response is None and self.strict:
            self.record(Call(stage, kind, text, dict(env), exit_code=None))
            raise StageFailed(
                f"Stage '{stage}' ran `{text}`, which no response is scripted for (strict mode)."
                f" Add runner.respond({text!r}, ...) if the command is expected",
                stage=stage,
            )
        exit_code, stdout, stderr = (response.exit_code, response.stdout, response.stderr) if response else (0, "", "")
        start = time.monotonic()
        if response is not None and response.delay:
            released = self._released.get(handle_key or "")
            if released is not None and released.wait(response.delay):
                exit_code, stdout, stderr = 137, "", ""
        if response is not None and response.files and handle_key:
            self._files.write(handle_key, response.files)
        for line in stdout.splitlines():
            on_line("stdout", line)
        for line in stderr.splitlines():
            on_line("stderr", line)
        self.record(Call(stage, kind, text, dict(env), exit_code=exit_code))
        return CommandResult(text, exit_code, stdout, stderr, time.monotonic() - start)

    def workspace_view(self, handle: StageHandle) -> Path:
        """The stage's workspace as ctx.junit and ctx.archive read it: empty but for the files
        its scripted commands wrote (``respond(files=...)``), never the real folder."""
        return self._files.view(str(handle.ref))

    def exec(
        self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink, *, strict: bool = True
    ) -> CommandResult:
        return self._answer(str(handle.ref), handle.spec.stage, "sh", command, {**handle.spec.all_env, **env}, on_line)

    def release(self, handle: StageHandle) -> None:
        key = str(handle.ref)
        if key in self._released:
            self._released[key].set()
        self.open_handles.discard(key)
        self._files.release(key)

    def cleanup(self, run_id: str) -> None:
        return None

    def image_id(self, origin: Origin, image: str) -> str:
        return _fake_id("image", image)

    def image_problem(self, image: str) -> str | None:
        return None  # every image exists here

    def put_files(self, handle: StageHandle, archive: bytes, dest: str) -> None:
        return None

    def get_files(self, handle: StageHandle, path: str) -> bytes | None:
        """The absolute files scripted commands wrote (``respond(files={"/out/x.log": ...})``); else
        a host stage's files are this machine's own, and a container stage's do not exist."""
        scripted = self._files.archive(str(handle.ref), path)
        if scripted is not None:
            return scripted
        if handle.spec.image is None and os.path.lexists(path):
            return pack(Path(path))
        return None

    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        tag = spec.tag or ""
        args = "".join(f" --build-arg {k}={v}" for k, v in spec.build_args.items())
        secrets = "".join(f" --secret id={k}" for k in spec.secrets)
        target = f" --target {spec.target}" if spec.target else ""
        text = f"build {spec.dockerfile}{args}{target}{secrets}" + (f" -t {tag}" if tag else "")
        rule = next((r for r in reversed(self._builds) if r.matches(tag)), None)
        if rule is not None:
            for line in rule.output.splitlines():
                on_line("stdout", line)
        if rule is not None and rule.fail_at is not None:
            self.record(Call(spec.stage, "build", text, ref=tag or None, exit_code=1))
            raise BuildFailed(
                stage=spec.stage,
                instruction=rule.fail_at,
                reason=rule.error,
                output_tail=rule.output.splitlines()[-20:],
            )
        image = Image(
            id=_fake_id("build", tag, spec.dockerfile, str(sorted(spec.build_args.items()))), tags=(tag,) if tag else ()
        )
        self.record(Call(spec.stage, "build", text, ref=tag or None, image=image.id, exit_code=0))
        return image

    def tag(self, origin: Origin, image: Image, ref: str) -> Image:
        full = ref if ":" in ref.rsplit("/", 1)[-1] or "@" in ref else f"{ref}:latest"
        stage = origin.stage
        self.record(Call(stage, "tag", f"tag {image.ref} {full}", ref=full, image=image.id))
        return Image(id=image.id, tags=(full, *(t for t in image.tags if t != full)))

    def push(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> str:
        stage = origin.stage
        for refusal in reversed(self._push_refusals):
            if refusal.matches(ref):
                self.record(Call(stage, "push", f"push {ref}", ref=ref, exit_code=1))
                raise registry_error(refusal.message, ref, "push to")
        digest = _fake_id("push", ref)
        on_line("stdout", f"latest: digest: {digest}")
        self.record(Call(stage, "push", f"push {ref}", ref=ref, image=digest, exit_code=0))
        return digest

    def pull(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> Image:
        stage = origin.stage
        for refusal in reversed(self._pull_refusals):
            if refusal.matches(ref):
                self.record(Call(stage, "pull", f"pull {ref}", ref=ref, exit_code=1))
                raise registry_error(refusal.message, ref, "pull from")
        image = Image(id=_fake_id("pull", ref), tags=(ref,))
        self.record(Call(stage, "pull", f"pull {ref}", ref=ref, image=image.id, exit_code=0))
        return image

    def run_once(
        self, origin: Origin, image: str, command: list[str] | None, env: Mapping[str, str], on_line: LineSink
    ) -> CommandResult:
        text = " ".join(command) if command else "(the image's command)"
        return self._answer(None, origin.stage, "run", text, env, on_line)

    # -- background containers (ctx.docker.run(detach=True)): answered by respond(...) too --
    def start_detached(self, spec: DetachedSpec, stage: StageHandle | None) -> str:
        text = " ".join(spec.command) if spec.command else "(the image's command)"
        key = f"{spec.origin.stage}/{spec.name}/{uuid.uuid4().hex[:8]}"
        self._detached[key] = (spec.origin.stage, text)
        self.open_detached.add(key)
        self.record(Call(spec.origin.stage, "detached", f"{spec.name}: {text}", dict(spec.env), image=spec.image))
        return key

    def detached_logs(self, detached: str) -> str:
        response = self._response(*self._detached[detached])
        return (response.stdout + response.stderr) if response else ""

    def stop_detached(self, detached: str, timeout: float) -> int | None:
        response = self._response(*self._detached[detached])
        return response.exit_code if response else 0

    def wait_detached(self, detached: str, timeout: float | None) -> int:
        response = self._response(*self._detached[detached])
        return response.exit_code if response else 0

    def remove_detached(self, detached: str) -> None:
        self.open_detached.discard(detached)


class RecordingBackend(_Recording):
    """Wraps a real backend (the Docker one) and records what stages do, like FakeBackend.

    :meth:`host` gives the host backend recording into the same list, for stages without an image.
    """

    def __init__(self, inner: Any, *, calls: list[Call] | None = None) -> None:
        super().__init__()
        if calls is not None:
            self.calls = calls
        self.inner = inner
        self.name = f"recording {inner.name}"
        self.run_ids: set[str] = set()

    @property
    def capabilities(self) -> Capabilities:
        """The wrapped backend's workspace and scheduling ones; the rest (streams, keeping,
        placing, registries) are methods and attributes the recording does not pass on."""
        caps: Capabilities = self.inner.capabilities
        return Capabilities(
            shares_workspace=caps.shares_workspace,
            runs_host_stages=caps.runs_host_stages,
            prepares_ahead=caps.prepares_ahead,
        )

    def host(self) -> RecordingBackend:
        """The host backend, recorded in the same list."""
        from pipekit._backends.host import HostBackend

        twin = RecordingBackend(HostBackend(), calls=self.calls)
        twin._lock = self._lock
        twin.run_ids = self.run_ids
        return twin

    def check(self) -> None:
        self.inner.check()

    def prepare(self, spec: StageSpec) -> StageHandle:
        self.run_ids.add(spec.run_id)
        for svc in spec.services:
            self.record(Call(spec.stage, "service", f"{svc.name} ({svc.image})", image=svc.image))
        handle: StageHandle = self.inner.prepare(spec)
        return handle

    def exec(
        self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink, *, strict: bool = True
    ) -> CommandResult:
        result: CommandResult = self.inner.exec(handle, command, env, on_line, strict=strict)
        self.record(Call(handle.spec.stage, "sh", command, {**handle.spec.all_env, **env}, exit_code=result.exit_code))
        return result

    def put_files(self, handle: StageHandle, archive: bytes, dest: str) -> None:
        self.inner.put_files(handle, archive, dest)

    def get_files(self, handle: StageHandle, path: str) -> bytes | None:
        data: bytes | None = self.inner.get_files(handle, path)
        return data

    def release(self, handle: StageHandle) -> None:
        self.inner.release(handle)

    def cleanup(self, run_id: str) -> None:
        self.inner.cleanup(run_id)

    def image_id(self, origin: Origin, image: str) -> str:
        return str(self.inner.image_id(origin, image))

    def image_problem(self, image: str) -> str | None:
        problem: str | None = self.inner.image_problem(image)
        return problem

    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        image: Image = self.inner.build(spec, on_line)
        self.record(Call(spec.stage, "build", f"build {spec.dockerfile}", ref=spec.tag, image=image.id, exit_code=0))
        return image

    def tag(self, origin: Origin, image: Image, ref: str) -> Image:
        tagged: Image = self.inner.tag(origin, image, ref)
        self.record(Call(origin.stage, "tag", f"tag {image.ref} {tagged.tags[0]}", ref=tagged.tags[0]))
        return tagged

    def push(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> str:
        digest = str(self.inner.push(origin, ref, auth, on_line))
        self.record(Call(origin.stage, "push", f"push {ref}", ref=ref, image=digest, exit_code=0))
        return digest

    def pull(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> Image:
        image: Image = self.inner.pull(origin, ref, auth, on_line)
        self.record(Call(origin.stage, "pull", f"pull {ref}", ref=ref, image=image.id, exit_code=0))
        return image

    def run_once(
        self, origin: Origin, image: str, command: list[str] | None, env: Mapping[str, str], on_line: LineSink
    ) -> CommandResult:
        result: CommandResult = self.inner.run_once(origin, image, command, env, on_line)
        self.record(Call(origin.stage, "run", result.command, dict(env), exit_code=result.exit_code))
        return result

    def start_detached(self, spec: DetachedSpec, stage: StageHandle | None) -> str:
        detached: str = self.inner.start_detached(spec, stage)
        text = " ".join(spec.command) if spec.command else "(the image's command)"
        self.record(Call(spec.origin.stage, "detached", f"{spec.name}: {text}", dict(spec.env), image=spec.image))
        return detached

    def detached_logs(self, detached: str) -> str:
        return str(self.inner.detached_logs(detached))

    def stop_detached(self, detached: str, timeout: float) -> int | None:
        code: int | None = self.inner.stop_detached(detached, timeout)
        return code

    def wait_detached(self, detached: str, timeout: float | None) -> int:
        return int(self.inner.wait_detached(detached, timeout))

    def remove_detached(self, detached: str) -> None:
        self.inner.remove_detached(detached)

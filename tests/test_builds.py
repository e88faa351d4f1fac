"""ctx.docker.build, image=<stage>, dockerfile=, BuildKit secrets and ctx.docker.run, on a real engine."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk

pytestmark = pytest.mark.docker

SECRET_VALUE = "pip-token-9f8e7d6c5b4a"


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_build_streams_its_log_and_honours_dockerignore(
    tmp_path: Path, run_on_docker: Any, busybox_image: str, docker_client: Any
) -> None:
    """The build log reaches the stage's log line by line; files in .dockerignore stay out."""
    nonce = uuid.uuid4().hex[:8]  # no cached layer: the RUN really runs and prints
    _context(
        tmp_path,
        f"FROM {busybox_image}\nCOPY . /ctx\nRUN echo built-step-output-{nonce} && ls /ctx\n",
        {
            "keep.txt": "k",
            "ignored.txt": "i",
            ".dockerignore": "ignored.txt\npipeline.py\n.dockerignore\n",
            ".pipekit/pipekit.db": "history",
        },
    )
    p = pk.Pipeline(name="build", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def build(ctx):
        return ctx.docker.build(".", tag="pipekit-test/built:1", labels={"org.example.kind": "test"})

    @p.stage(image=build)
    def inside(ctx):
        return ctx.sh("ls -A /ctx").stdout.split()

    result, events = run_on_docker(p)
    assert result.status == "succeeded", result.stages
    image = result["build"].output
    assert isinstance(image, pk.Image) and image.id.startswith("sha256:") and image.tags == ("pipekit-test/built:1",)
    lines = events.lines("build")
    assert any(re.match(r"#\d+ \[3/3\] RUN echo built-step-output", line) for line in lines)  # BuildKit's log
    assert any(line.endswith(f" built-step-output-{nonce}") for line in lines)
    # no .pipekit/ and no ignored file; the Dockerfile and .dockerignore always go (as with the docker CLI)
    assert sorted(result["inside"].output) == [".dockerignore", "Dockerfile", "keep.txt"]
    assert docker_client.images.get(image.id).labels["org.example.kind"] == "test"
    docker_client.images.remove(image.id, force=True)


def test_failing_instruction_is_named(tmp_path: Path, run_on_docker: Any, busybox_image: str) -> None:
    """A failing RUN fails the stage naming the instruction and the last lines of its output."""
    _context(tmp_path, f"FROM {busybox_image}\nRUN echo first\nRUN echo about-to-break && exit 3 # {uuid.uuid4()}\n")
    p = pk.Pipeline(name="broken-build", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def build(ctx):
        return ctx.docker.build(".")

    @p.stage(image=build)
    def use(ctx):
        pass

    result, _ = run_on_docker(p)
    error = result["build"].error
    assert "Image build failed in stage 'build' at `RUN echo about-to-break && exit 3 #" in error
    assert "exit code: 3" in error
    assert "about-to-break" in error
    assert result["use"].status == "skipped"


def test_image_stage_must_return_an_image(run_on_docker: Any) -> None:
    """image=<stage> whose stage returns something else fails with a message saying what to return."""
    p = pk.Pipeline(name="not-an-image")

    @p.stage
    def build(ctx):
        return "my-image:latest"

    @p.stage(image=build)
    def use(ctx):
        pass

    result, _ = run_on_docker(p)
    assert "returned str, not a pk.Image" in result["use"].error


def test_stage_in_an_image_built_from_a_dockerfile(tmp_path: Path, run_on_docker: Any, busybox_image: str) -> None:
    """dockerfile= builds the stage's image first (Jenkins' agent { dockerfile true })."""
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo from-ci-dockerfile > /marker\n")
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        "@pk.stage(dockerfile='ci/Dockerfile')\n"
        "def check(ctx):\n"
        "    return ctx.sh('cat /marker').stdout.strip()\n"
    )
    result, _ = run_on_docker(tmp_path / "pipeline.py")
    assert result["check"].output == "from-ci-dockerfile"


def test_build_secret_reaches_run_mount_and_no_layer(
    tmp_path: Path, run_on_docker: Any, busybox_image: str, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """secrets= reach RUN --mount=type=secret through BuildKit and appear in no layer, label or history."""
    monkeypatch.setenv("PIP_TOKEN", SECRET_VALUE)
    _context(
        tmp_path,
        f"FROM {busybox_image}\n"
        'RUN --mount=type=secret,id=pip_token test "$(md5sum < /run/secrets/pip_token | cut -c1-32)" = '
        + hashlib.md5(SECRET_VALUE.encode()).hexdigest()
        + f" && echo token-seen && cat /run/secrets/pip_token # {uuid.uuid4()}\n"
        "RUN echo layer > /layer.txt\n",
    )
    p = pk.Pipeline(name="build-secret", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def build(ctx):
        return ctx.docker.build(".", tag="pipekit-test/secret-build:1", secrets={"pip_token": pk.secret("PIP_TOKEN")})

    result, events = run_on_docker(p)
    assert result.status == "succeeded", result.stages
    lines = events.lines("build")
    assert any("token-seen" in line for line in lines)
    assert any("***" in line for line in lines), "the secret printed by the build was not masked"
    assert not any(SECRET_VALUE in json.dumps(e) for _, e in events.items)
    image = docker_client.images.get(result["build"].output.id)
    assert SECRET_VALUE not in json.dumps(image.attrs)
    assert SECRET_VALUE not in json.dumps(image.history())
    saved = b"".join(image.save())
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer.getmembers():
            if member.isfile():
                data = outer.extractfile(member).read()  # type: ignore[union-attr]
                assert SECRET_VALUE.encode() not in data, member.name
    docker_client.images.remove(image.id, force=True)


def test_a_secret_is_refused_as_build_arg_or_label(tmp_path: Path, run_on_docker: Any, busybox_image: str) -> None:
    """Build args and labels land in the image, so a pk.secret there fails the stage and says why."""
    _context(tmp_path, f"FROM {busybox_image}\n")
    p = pk.Pipeline(name="leaky", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def args(ctx):
        ctx.docker.build(".", build_args={"TOKEN": pk.secret("PIP_TOKEN")})

    @p.stage
    def labels(ctx):
        ctx.docker.build(".", labels={"token": pk.secret("PIP_TOKEN")})

    result, _ = run_on_docker(p, secrets={"PIP_TOKEN": "not-a-real-token"})  # (checked before the run)
    assert "build arg 'TOKEN' holds a secret" in result["args"].error
    assert "secrets={...}" in result["args"].error
    assert "label 'token' holds a secret" in result["labels"].error


def test_docker_run_streams_returns_and_removes(run_on_docker: Any, busybox_image: str, docker_client: Any) -> None:
    """ctx.docker.run runs a one-shot container like `docker run --rm`, with env, and removes it."""
    p = pk.Pipeline(name="one-shot")

    @p.stage
    def once(ctx):
        ok = ctx.docker.run(busybox_image, ["sh", "-c", "echo hi $WHO; echo warn >&2"], env={"WHO": "there"})
        bad = ctx.docker.run(busybox_image, "sh -c 'exit 5'", check=False)
        return ok.stdout, ok.stderr, bad.exit_code

    result, events = run_on_docker(p)
    assert result["once"].output == ("hi there\n", "warn\n", 5)
    assert sorted(events.lines("once")) == ["hi there", "warn"]  # two pipes: no order between them


def test_docker_run_failure_fails_the_stage(run_on_docker: Any, busybox_image: str) -> None:
    """A non-zero exit of ctx.docker.run fails the stage like ctx.sh."""
    p = pk.Pipeline(name="one-shot-fail")

    @p.stage
    def once(ctx):
        ctx.docker.run(busybox_image, ["sh", "-c", "echo tests failed; exit 1"])

    result, _ = run_on_docker(p)
    assert "Command exited with code 1" in result["once"].error
    assert "tests failed" in result["once"].error


def test_buildkit_unavailable_says_so(
    tmp_path: Path, run_on_docker: Any, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no CLI that drives BuildKit, a build with secrets fails clearly instead of leaking."""
    from pipekit._backends.docker import buildkit as _buildkit

    monkeypatch.setenv("PIPEKIT_DOCKER_CLI", str(tmp_path / "no-docker-here"))
    monkeypatch.setenv("PIP_TOKEN", SECRET_VALUE)
    _buildkit._find.cache_clear()
    _context(tmp_path, f"FROM {busybox_image}\n")
    p = pk.Pipeline(name="no-buildkit", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def build(ctx):
        ctx.docker.build(".", secrets={"pip_token": pk.secret("PIP_TOKEN")})

    result, _ = run_on_docker(p)
    _buildkit._find.cache_clear()
    assert "Image builds need BuildKit" in result["build"].error
    assert "PIPEKIT_BUILDER=classic" in result["build"].error
    assert "does not fall back to build args" in result["build"].error


def test_every_build_uses_buildkit_cache_mounts_work(tmp_path: Path, run_on_docker: Any, busybox_image: str) -> None:
    """A build without secrets uses BuildKit too: RUN --mount=type=cache and --target work."""
    _context(
        tmp_path,
        f"FROM {busybox_image} AS base\nRUN --mount=type=cache,target=/cache echo cached > /cache/x && cat /cache/x\n"
        f"FROM base AS final\nRUN echo final-{uuid.uuid4().hex}\n",
    )
    p = pk.Pipeline(name="buildkit", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def build(ctx):
        return ctx.docker.build(".", target="base")

    result, events = run_on_docker(p)
    assert result.status == "succeeded", result.stages
    lines = events.lines("build")
    assert not any("final-" in line for line in lines)  # --target stopped at base
    assert not any("\x1b[" in line for line in lines)


def test_the_classic_builder_is_an_explicit_fallback(
    tmp_path: Path, run_on_docker: Any, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PIPEKIT_BUILDER=classic builds with the engine's classic builder, and refuses build secrets."""
    monkeypatch.setenv("PIPEKIT_BUILDER", "classic")
    monkeypatch.setenv("PIP_TOKEN", SECRET_VALUE)
    _context(tmp_path, f"FROM {busybox_image}\nRUN echo classic-{uuid.uuid4().hex}\n")
    p = pk.Pipeline(name="classic", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def plain(ctx):
        return ctx.docker.build(".")

    @p.stage
    def with_secret(ctx):
        ctx.docker.build(".", secrets={"pip_token": pk.secret("PIP_TOKEN")})

    result, events = run_on_docker(p)
    assert result["plain"].status == "succeeded"
    assert any(re.match(r"Step 2/2 : RUN echo classic-", line) for line in events.lines("plain"))
    assert "does not fall back to build args" in result["with_secret"].error

"""ctx.docker against a real engine and a real registry with a login: the seed-flow example end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk

pytestmark = pytest.mark.docker
ROOT = Path(__file__).parent.parent
SEED = ROOT / "examples" / "seed-flow"


def pipekit_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pipekit", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_seed_flow_pushes_and_the_digest_pulls_back(registry: Any, python_base_image: str, docker_client: Any) -> None:
    """Build, test in the image, push with a login; the pushed digest pulls back after the local copy is gone."""
    ref = f"{registry.address}/seed-flow:latest"
    proc = pipekit_cli(
        "run",
        "-f",
        str(SEED),
        "--branch",
        "main",
        "--log-format",
        "json",
        "--param",
        f"registry={registry.address}",
        "--param",
        f"base_image={python_base_image}",
        env={"REGISTRY_USER": registry.user, "REGISTRY_PASSWORD": registry.password},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert registry.password not in proc.stdout + proc.stderr
    events = _events(proc.stdout)
    [pushed] = [e for e in events if e["event"] == "image pushed"]
    digest = pushed["digest"]
    assert pushed["ref"] == ref and digest.startswith("sha256:")
    assert any(e["event"] == "output" and e["stage"] == "test" and e["line"] == "OK" for e in events)

    for tag in (ref, "seed-flow:latest"):
        docker_client.images.remove(tag, force=True)
    by_digest = f"{registry.address}/seed-flow@{digest}"
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(by_digest)

    p = pk.Pipeline(name="pull-back")

    @p.stage
    def pull(ctx):
        creds = pk.Credentials(username=registry.user, password=pk.secret("REGISTRY_PASSWORD"))
        return ctx.docker.pull(by_digest, credentials=creds)

    import os

    os.environ["REGISTRY_PASSWORD"] = registry.password
    try:
        result = pk.run(p, log_format="json")
    finally:
        del os.environ["REGISTRY_PASSWORD"]
    assert result.status == "succeeded", result.stages
    image = docker_client.images.get(by_digest)
    assert f"{registry.address}/seed-flow@{digest}" in image.attrs["RepoDigests"]
    assert image.id == result["pull"].output.id
    docker_client.images.remove(image.id, force=True)


def test_wrong_password_fails_deploy_with_an_auth_message(registry: Any, python_base_image: str) -> None:
    """A refused login fails the deploy stage with the registry and reference named, exit code 1."""
    wrong = "not-the-Password-42"
    proc = pipekit_cli(
        "run",
        "-f",
        str(SEED),
        "--branch",
        "main",
        "--param",
        f"registry={registry.address}",
        "--param",
        f"base_image={python_base_image}",
        env={"REGISTRY_USER": registry.user, "REGISTRY_PASSWORD": wrong},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        f"Registry {registry.address} refused the credentials to push to {registry.address}/seed-flow:latest"
        in proc.stdout
    )
    assert "deploy  failed" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_missing_registry_secrets_stop_the_run_before_it_starts(python_base_image: str, registry: Any) -> None:
    """Without REGISTRY_USER and REGISTRY_PASSWORD (a pk.Credentials in deploy's code), the run on
    main stops before anything starts, naming both; on another branch deploy is skipped and the
    run needs neither."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_USER", "REGISTRY_PASSWORD")}

    def run(branch: str) -> subprocess.CompletedProcess[str]:
        argv = ["run", "-f", str(SEED), "--branch", branch, "--log-format", "json"]
        argv += ["--param", f"registry={registry.address}", "--param", f"base_image={python_base_image}"]
        return subprocess.run(
            [sys.executable, "-m", "pipekit", *argv], capture_output=True, text=True, timeout=600, env=env
        )

    on_main = run("main")
    assert on_main.returncode == 2, on_main.stdout + on_main.stderr
    assert on_main.stdout == ""  # not even the run's first line: nothing started
    for name in ("REGISTRY_USER", "REGISTRY_PASSWORD"):
        assert f"stage 'deploy' needs the secret '{name}', which is not set" in on_main.stderr
    assert "2 problem(s) found before the run; nothing was started" in on_main.stderr
    elsewhere = run("feature")
    assert elsewhere.returncode == 0, elsewhere.stdout[-3000:] + elsewhere.stderr
    [summary] = [e for e in _events(elsewhere.stdout) if e["event"] == "run finished"]
    assert [(s["stage"], s["status"]) for s in summary["stages"]][-1] == ("deploy", "skipped")


def test_unreachable_registry(python_base_image: str, tmp_path: Path, run_on_docker: Any) -> None:
    """Pushing to a port where no registry listens says the registry cannot be reached."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = pk.Pipeline(name="unreachable", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def push(ctx):
        image = ctx.docker.tag(python_base_image, f"127.0.0.1:{port}/nowhere:1")
        ctx.docker.push(image)

    result, _ = run_on_docker(p)
    error = result["push"].error
    assert f"Cannot reach registry 127.0.0.1:{port} to push to 127.0.0.1:{port}/nowhere:1" in error


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Bad/UPPER:case", pk.InvalidReference),
        ("{address}/never-pushed:nope", pk.TagNotFound),
    ],
)
def test_registry_errors_are_classified(registry: Any, run_on_docker: Any, ref: str, expected: type) -> None:
    """An invalid reference and a missing tag each get their own clear message."""
    p = pk.Pipeline(name="pulls")
    caught: list[BaseException] = []

    @p.stage
    def pull(ctx):
        creds = pk.Credentials(username=registry.user, password=registry.password)
        try:
            ctx.docker.pull(ref.format(address=registry.address), credentials=creds)
        except pk.PipekitError as e:
            caught.append(e)
            raise

    result, _ = run_on_docker(p)
    assert result["pull"].status == "failed"
    assert isinstance(caught[0], expected), caught
    assert ref.format(address=registry.address) in result["pull"].error


def test_push_without_credentials_uses_the_docker_config(
    registry: Any, python_base_image: str, tmp_path: Path, docker_client: Any
) -> None:
    """Without credentials=, the login in DOCKER_CONFIG/config.json is used, as the docker CLI would."""
    import base64
    import os

    config = tmp_path / "docker-config"
    config.mkdir()
    token = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": token}}}))
    ref = f"{registry.address}/from-config:1"
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        "@pk.stage\n"
        "def push(ctx):\n"
        f"    return ctx.docker.push({python_base_image!r}, {ref!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipekit", "run", "-f", str(tmp_path), "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DOCKER_CONFIG": str(config)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert registry.password not in proc.stdout
    [pushed] = [e for e in _events(proc.stdout) if e["event"] == "image pushed"]
    assert pushed["ref"] == ref and pushed["digest"].startswith("sha256:")
    docker_client.images.remove(ref)


def _console(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    """The installed `pipekit` console script in a process of its own (importing this checkout),
    without the PIPEKIT_* and CI variables of the environment the tests run in."""
    import os

    from helpers import run_console

    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPEKIT_") and k not in ("CI", "GITHUB_ACTIONS")}
    return run_console(argv, cwd=cwd, env={**base, **(env or {})}, timeout=600)


FROM_PIPELINE = """\
import pipekit as pk


@pk.stage(image={busybox!r})
def image(ctx):
    return ctx.docker.build(".", tag="pipekit-test/from-map:{token}")


@pk.stage(image=image)
def check(ctx):
    ctx.sh("cat /marker")


@pk.stage(dockerfile="base.Dockerfile")
def in_dockerfile(ctx):
    ctx.sh("cat /marker")
"""


@pytest.mark.parametrize("builder", ["buildkit", "classic"])
def test_image_map_reaches_the_from_lines_of_builds(
    builder: str, tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    """`FROM alpine:3.20`, built with `--image-map alpine:3.20=pipekit-local/busybox:latest`, builds
    from the local image (ctx.docker.build and dockerfile= alike, with either builder); the user's
    Dockerfile is unchanged."""
    import os

    token = os.urandom(4).hex()
    dockerfile = f"FROM alpine:3.20 AS base\nRUN echo built-{token} > /marker\nFROM base\n"
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "base.Dockerfile").write_text(
        f"FROM --platform=linux/amd64 alpine:3.20\nRUN echo other-{token} > /marker\n"
    )
    (tmp_path / "pipeline.py").write_text(FROM_PIPELINE.format(busybox=busybox_image, token=token))
    tags = [f"pipekit-test/from-map:{token}", f"pipekit-dockerfile/{tmp_path.name.lower()}-in-dockerfile:latest"]
    try:
        argv = ["run", "--progress", "plain", "--image-map", f"alpine:3.20={busybox_image}"]
        done = _console(argv, tmp_path, {"PIPEKIT_BUILDER": builder})
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(rf"^check +\| built-{token}$", done.stdout, re.MULTILINE), done.stdout
        assert re.search(rf"^in_dockerfile +\| other-{token}$", done.stdout, re.MULTILINE), done.stdout
        assert f"--image-map: FROM alpine:3.20 builds from {busybox_image}" in done.stdout
        assert (tmp_path / "Dockerfile").read_text() == dockerfile
    finally:
        for tag in tags:
            try:
                docker_client.images.remove(tag, force=True)
            except Exception:  # not built
                pass


def test_from_images_are_in_the_check_before_the_run_and_a_mapping_that_matches_nothing_is_warned(
    tmp_path: Path, busybox_image: str
) -> None:
    """A FROM image the engine does not have stops the run before anything starts; a mapping of an
    image no stage, service or FROM line names is warned about."""
    (tmp_path / "Dockerfile").write_text("FROM pipekit-test/no-such-base:never\nRUN true\n")
    (tmp_path / "pipeline.py").write_text(FROM_PIPELINE.format(busybox=busybox_image, token="never"))
    (tmp_path / "base.Dockerfile").write_text(f"FROM {busybox_image}\n")
    done = _console(["run", "--image-map", f"alpine:3.21={busybox_image}"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "stage 'image' builds Dockerfile FROM 'pipekit-test/no-such-base:never'" in done.stderr
    assert "1 problem(s) found before the run; nothing was started" in done.stderr
    assert f"--image-map alpine:3.21={busybox_image} matches nothing" in done.stderr
    mapped = _console(["validate", "--image-map", f"pipekit-test/no-such-base:never={busybox_image}"], tmp_path)
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    assert "matches nothing" not in mapped.stderr


def test_from_lines_are_mapped_and_only_from_lines_that_name_an_image() -> None:
    """Stage names, scratch, $ARG images and lines that continue another instruction are left alone."""
    from pipekit._backends.docker.dockerfile import from_images, map_from

    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=alpine:3.20\n"
        "from alpine:3.20 as build\n"
        "RUN echo \\\\\n"
        "  FROM alpine:3.20\n"
        "FROM --platform=$BUILDPLATFORM python:3.12-slim AS test\n"
        "FROM build\n"
        "FROM ${BASE}\n"
        "FROM scratch\n"
        "COPY --from=build /x /x\n"
    )
    assert from_images(text) == ["alpine:3.20", "python:3.12-slim"]
    mapped, used = map_from(text, {"alpine:3.20": "local/alpine:1", "build": "nope", "ruby:3": "local/ruby"})
    assert used == {"alpine:3.20": "local/alpine:1"}
    lines = mapped.split("\n")
    assert lines[2] == "from local/alpine:1 as build"
    assert lines[4] == "  FROM alpine:3.20"  # inside a RUN that goes on over two lines
    assert lines[6:9] == ["FROM build", "FROM ${BASE}", "FROM scratch"]

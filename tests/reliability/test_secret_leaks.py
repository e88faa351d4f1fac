"""Threat model: a secret's value never reaches a log line, an image, a process list or a stored
record, however a stage handles it (short of printing it in an encoding pipekit cannot guess)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import pipekit as pk
from pipekit.testing import PipelineRunner

TOKEN = 'tok/en+va=lue&"42"'


def test_encoded_forms_of_a_secret_are_masked(tmp_path: Path) -> None:
    """Besides the exact value: its base64, URL-encoded and JSON-escaped forms become ***."""
    p = pk.Pipeline(name="encoded")

    @p.stage
    def leak(ctx):
        value = ctx.secret("TOKEN")
        ctx.log.info("leaks", b64=base64.b64encode(value.encode()).decode(), url=quote(value, safe=""))
        ctx.log.info("leaks", as_json=json.dumps({"t": value}))

    result = PipelineRunner(base_dir=tmp_path).run(p, secrets={"TOKEN": TOKEN})
    assert result.status == "succeeded"
    text = result.output
    assert base64.b64encode(TOKEN.encode()).decode() not in text
    assert quote(TOKEN, safe="") not in text
    assert json.dumps(TOKEN)[1:-1] not in text
    assert text.count("***") >= 3


def test_a_secret_shorter_than_4_characters_is_not_masked_and_warned(tmp_path: Path) -> None:
    """A one-character secret would turn every `1` into ***: it is not masked, and the run says so."""
    p = pk.Pipeline(name="short")

    @p.stage
    def count(ctx):
        ctx.secret("PIN")
        ctx.sh("echo exit code 1")

    fake = PipelineRunner(base_dir=tmp_path).respond("echo exit code 1", stdout="exit code 1\n")
    result = fake.run(p, secrets={"PIN": "1"})
    assert "exit code 1" in result.output
    [warning] = [e for e in result.events if e["event"] == "secret not masked"]
    assert warning["secret"] == "PIN" and "shorter than 4" in warning["reason"]


def test_a_secret_value_as_a_build_arg_is_refused(tmp_path: Path) -> None:
    """build_args={"TOKEN": ctx.secret("TOKEN")} (the value) is refused like a pk.secret would be."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    p = pk.Pipeline(name="args", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def build(ctx):
        ctx.docker.build(".", build_args={"TOKEN": ctx.secret("TOKEN")})

    result = PipelineRunner(base_dir=tmp_path).run(p, secrets={"TOKEN": "s3cret-value"})
    assert "build arg 'TOKEN' holds a secret" in (result.stages["build"].error or "")
    assert "RUN --mount=type=secret" in (result.stages["build"].error or "")
    assert result.built == []


def test_a_secret_a_later_stage_reads_is_masked_from_the_first_line(tmp_path: Path) -> None:
    """Every secret named in pipeline.py is known to the masker before the first stage: an earlier
    host stage that prints the whole environment shows ***."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage\ndef first(ctx):\n    ctx.sh('env')\n\n\n"
        "@pk.stage\ndef later(ctx, first):\n    ctx.secret('LATER_TOKEN')\n"
    )
    out = io.StringIO()
    env = {"LATER_TOKEN": "later-secret-value", "PATH": "/usr/bin:/bin"}
    result = pk.run(str(tmp_path / "pipeline.py"), environ=env, log_file=out)
    assert result.status == "succeeded"
    assert "later-secret-value" not in out.getvalue()


@pytest.mark.docker
@pytest.mark.parametrize("image", [None, "busybox"])
def test_a_command_never_shows_its_secret_on_a_process_command_line(
    image: str | None, docker_backend: Any, busybox_image: str, tmp_path: Path
) -> None:
    """A command travels in the exec's environment: /proc/PID/cmdline (world-readable on the host,
    container processes included) never holds it."""
    p = pk.Pipeline(name="cmdline", image=image, path=str(tmp_path / "pipeline.py"))

    @p.stage
    def look(ctx):
        value = ctx.secret("TOKEN")
        return ctx.sh(f"test -n '{value}'; x=$(tr '\\\\0' ' ' < /proc/$$/cmdline); echo \"$x\"").stdout

    result = pk.run(
        p,
        backend=docker_backend,
        image_map={"busybox": busybox_image},
        log_file=io.StringIO(),
        secrets={"TOKEN": "cmdline-secret-value"},
    )
    assert result.status == "succeeded", result.stages
    assert "PIPEKIT_SCRIPT" in result["look"].output
    assert "cmdline-secret-value" not in result["look"].output


@pytest.mark.docker
def test_a_stage_secret_is_not_in_its_containers_configuration(
    docker_backend: Any, busybox_image: str, docker_client: Any, tmp_path: Path
) -> None:
    """env={"TOKEN": pk.secret(...)} reaches every command, but not the container's own
    configuration (what `docker inspect` shows)."""
    p = pk.Pipeline(name="inspect", image="busybox", path=str(tmp_path / "pipeline.py"))
    seen: dict[str, Any] = {}

    @p.stage(env={"TOKEN": pk.secret("TOKEN"), "PLAIN": "visible"})
    def check(ctx):
        [container] = docker_client.containers.list(filters={"label": f"io.pipekit.run={ctx.run_id}"})
        seen["env"] = container.attrs["Config"]["Env"]
        return ctx.sh('test "$TOKEN" = inspect-secret-value && echo has-it').stdout.strip()

    result = pk.run(
        p,
        backend=docker_backend,
        image_map={"busybox": busybox_image},
        log_file=io.StringIO(),
        secrets={"TOKEN": "inspect-secret-value"},
    )
    assert result["check"].output == "has-it"
    assert "PLAIN=visible" in seen["env"]
    assert not any("inspect-secret-value" in e for e in seen["env"])

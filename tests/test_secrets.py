"""Secrets: read at run time, masked everywhere they could show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._secrets import Masker, SecretStore, parse_dotenv

SECRET = "hunter2-Xy9-very-secret"


def test_masker_masks_whole_values_and_inside_longer_lines() -> None:
    """A value is replaced by *** wherever it stands in a line."""
    m = Masker()
    m.add(SECRET)
    assert m.mask(f"token={SECRET};") == "token=***;"
    assert m.mask(f"{SECRET}{SECRET}") == "******"
    assert m.mask("nothing here") == "nothing here"


def test_masker_masks_each_line_of_a_multiline_secret() -> None:
    """A secret spanning lines is masked line by line, as it shows in a line-based log."""
    m = Masker()
    m.add("-----BEGIN KEY-----\nAbCdEf123\n-----END KEY-----")
    assert m.mask("x AbCdEf123 y") == "x *** y"
    assert m.mask("-----END KEY-----") == "***"


def test_masker_is_a_structlog_processor_for_nested_values() -> None:
    """Every string in an event, nested or not, is masked."""
    m = Masker()
    m.add(SECRET)
    event = m(None, "info", {"event": "x", "error": f"e {SECRET}", "stages": [{"reason": SECRET}]})
    assert SECRET not in json.dumps(event)


def test_secret_refuses_to_become_text() -> None:
    """Formatting a pk.secret into a string is an error that says what to do instead."""
    s = pk.secret("TOKEN")
    with pytest.raises(TypeError, match=r"ctx.secret\('TOKEN'\)"):
        f"{s}"
    assert repr(s) == "Secret(name='TOKEN')"
    assert "password=***" in repr(pk.Credentials(username="u", password="p"))


def test_dotenv_file(tmp_path: Path) -> None:
    """The secrets file takes KEY=VALUE with export, quotes and comments."""
    f = tmp_path / "secrets.env"
    f.write_text("# comment\nexport A=1\nB=\"two words\"\nC='single'\nD=plain # trailing\n\n")
    assert parse_dotenv(f) == {"A": "1", "B": "two words", "C": "single", "D": "plain"}
    f.write_text("NOT A LINE\n")
    with pytest.raises(pk.UsageError, match="expected KEY=VALUE"):
        parse_dotenv(f)


def test_store_prefers_the_file_and_names_missing_secrets(tmp_path: Path) -> None:
    """The file overrides the environment; a missing secret names itself and the stage."""
    store = SecretStore(file_values={"A": "from-file"}, environ={"A": "from-env", "B": "env-only"})
    assert store.get("A", stage="s") == "from-file"
    assert store.get("B", stage="s") == "env-only"
    with pytest.raises(pk.SecretMissing, match="Stage 's' needs the secret 'C', which is not set"):
        store.get("C", stage="s")
    assert store.masker.mask("from-file env-only") == "*** ***"


LEAKY = r"""
import pipekit as pk

PASSWORD = pk.secret("REGISTRY_PASSWORD")

@pk.stage(image="busybox", env={"P": PASSWORD})
def leak(ctx):
    ctx.sh('echo "the password is $P"')
    ctx.sh('printf "%s" "$P" | cut -c1-6 | tr -d "\n"; sleep 0.3; printf "%s\n" "$P" | cut -c7-')
    ctx.sh('echo "prefix-${P}-suffix"; echo "$P" >&2')
    ctx.sh('printf "%s\n" "$MULTI"', env={"MULTI": pk.secret("MULTI_LINE")})

@pk.stage(image="busybox", env={"P": PASSWORD})
def fails(ctx):
    ctx.sh('echo "failing with $P"; exit 1')

@pk.stage
def raises(ctx):
    raise RuntimeError("bad value " + ctx.secret("REGISTRY_PASSWORD"))
"""


@pytest.mark.docker
@pytest.mark.parametrize("log_format", ["console", "json"])
def test_no_secret_in_any_output(tmp_path: Path, busybox_image: str, log_format: str, docker_client: Any) -> None:
    """Echoed whole, split across output chunks, inside longer lines, multi-line, or in errors: always ***."""
    (tmp_path / "pipeline.py").write_text(LEAKY)
    (tmp_path / "secrets.env").write_text(f"REGISTRY_PASSWORD={SECRET}\n")
    multi = "line-one-AAA\nline-two-BBB"
    env = {**os.environ, "MULTI_LINE": multi}
    env.pop("REGISTRY_PASSWORD", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipekit",
            "run",
            "-f",
            str(tmp_path),
            "--log-format",
            log_format,
            "--secrets-file",
            str(tmp_path / "secrets.env"),
            "--image-map",
            f"busybox={busybox_image}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1
    everything = proc.stdout + proc.stderr
    for forbidden in (SECRET, SECRET[:6], SECRET[6:], "line-one-AAA", "line-two-BBB"):
        assert forbidden not in everything, forbidden
    assert "the password is ***" in everything
    assert "prefix-***-suffix" in everything
    assert "failing with ***" in everything
    assert "bad value ***" in everything
    if log_format == "json":
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        outputs = [e["line"] for e in lines if e["event"] == "output" and e["stage"] == "leak"]
        assert outputs.count("***") >= 3  # the chunk-split line, the stderr line, both multi-line lines

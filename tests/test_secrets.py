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
from pipekit._dsl.secrets import Masker, SecretStore, parse_dotenv

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


# -- every encoded form a tool may print -------------------------------------------------------
UNICODE_SECRET = 'pä/ss+wörd&"ç-42'


def _quote_keeps_slash(v: str) -> str:
    from urllib.parse import quote

    return quote(v)  # the default safe='/'


def _quote_nothing_safe(v: str) -> str:
    from urllib.parse import quote

    return quote(v, safe="")


def _quote_plus(v: str) -> str:
    from urllib.parse import quote_plus

    return quote_plus(v)


def _quote_lower_hex(v: str) -> str:
    import re
    from urllib.parse import quote

    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(v, safe=""))


def _json_utf8(v: str) -> str:
    return json.dumps({"k": v}, ensure_ascii=False)


def _json_ascii(v: str) -> str:
    return json.dumps({"k": v})


def _json_upper_escapes(v: str) -> str:
    return json.dumps(v).replace("\\u00e4", "\\u00E4").replace("\\u00f6", "\\u00F6").replace("\\u00e7", "\\u00E7")


def _json_escaped_slash(v: str) -> str:
    return json.dumps(v, ensure_ascii=False).replace("/", "\\/")  # PHP's json_encode, some JS libraries


def _b64(v: str) -> str:
    import base64

    return base64.b64encode(v.encode()).decode()


def _b64_url_unpadded(v: str) -> str:
    import base64

    return base64.urlsafe_b64encode(v.encode()).decode().rstrip("=")


ENCODINGS = [
    _quote_keeps_slash,
    _quote_nothing_safe,
    _quote_plus,
    _quote_lower_hex,
    _json_utf8,
    _json_ascii,
    _json_upper_escapes,
    _json_escaped_slash,
    _b64,
    _b64_url_unpadded,
]


@pytest.mark.parametrize("encode", ENCODINGS, ids=lambda f: f.__name__.strip("_"))
def test_the_masker_masks_each_encoded_form(encode: Any) -> None:
    """Each form a tool prints a value in (URL, JSON with ASCII escapes or raw UTF-8, base64)
    is masked, inside a longer line too."""
    printed = encode(UNICODE_SECRET)
    assert printed != UNICODE_SECRET  # the encoding changes the text, or this test proves nothing
    m = Masker()
    m.add(UNICODE_SECRET)
    masked = m.mask(f"before {printed} after")
    assert masked.startswith("before ") and masked.endswith(" after")
    assert "***" in masked
    for part in ("ss", "42", "rd"):
        assert part not in masked.replace("before", "").replace("after", ""), masked


ENCODING_STAGE = '''
import pipekit as pk

PRINT_ENCODED = """
import base64, json, os
from urllib.parse import quote, quote_plus
v = os.environ["V"]
print("quote", quote(v))
print("quote-nothing-safe", quote(v, safe=""))
print("quote-plus", quote_plus(v))
print("json-utf8", json.dumps({"t": v}, ensure_ascii=False))
print("json-ascii", json.dumps({"t": v}))
print("b64", base64.b64encode(v.encode()).decode())
"""

@pk.stage
def leak(ctx):
    ctx.sh('python3 -c "$CODE"', env={"CODE": PRINT_ENCODED, "V": pk.secret("API_TOKEN"), "PYTHONIOENCODING": "utf-8"})
'''


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_encoded_forms_printed_by_a_stage_are_masked_in_a_real_run(tmp_path: Path, log_format: str) -> None:
    """A `pipekit run` process: a stage's command prints its secret URL-encoded (with '/' kept)
    and as JSON with raw UTF-8: the console, the JSON log and the stored log show only ***."""
    import shutil

    (tmp_path / "pipeline.py").write_text(ENCODING_STAGE)
    env = {**os.environ, "API_TOKEN": UNICODE_SECRET, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [shutil.which("pipekit") or "pipekit", "run", "-f", str(tmp_path), "--log-format", log_format],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    everything = proc.stdout + proc.stderr
    logs = "".join(p.read_text() for p in (tmp_path / ".pipekit").rglob("*") if p.is_file() and ".log" in p.name)
    for text in (everything, logs):
        for encode in ENCODINGS:
            assert encode(UNICODE_SECRET) not in text, encode.__name__
        for label in ("quote", "quote-nothing-safe", "quote-plus", "b64"):
            assert f"{label} ***" in text
        assert 'json-utf8 {\\"t\\": \\"***\\"}' in text or 'json-utf8 {"t": "***"}' in text


JUNIT_LEAK = """
import pathlib
import pipekit as pk

@pk.stage
def test(ctx):
    v = ctx.secret("API_TOKEN")
    pathlib.Path("reports").mkdir(exist_ok=True)
    pathlib.Path("reports/junit.xml").write_text(
        f'<testsuite name="suite {v}" tests="2">'
        f'<testcase classname="cls.{v}" name="test_login[{v}]">'
        f'<failure message="expected {v}">trace with {v}</failure></testcase>'
        f'<testcase classname="cls" name="test_skip_{v}"><skipped message="skipped {v}"/></testcase>'
        '</testsuite>'
    )
    ctx.junit("reports/junit.xml", fail_on_failure=False)
"""


def test_run_junit_masks_the_test_names_and_messages_it_read(tmp_path: Path) -> None:
    """`pipekit run --junit` writes the tests a stage read with ctx.junit: their suite, class and
    test names, messages and texts hold *** where the secret was; JUnit tools still parse it."""
    import shutil

    from junitparser import Failure, JUnitXml

    (tmp_path / "pipeline.py").write_text(JUNIT_LEAK)
    (tmp_path / "secrets.env").write_text(f"API_TOKEN={SECRET}\n")
    target = tmp_path / "out" / "pipekit.xml"
    proc = subprocess.run(
        [
            shutil.which("pipekit") or "pipekit",
            "run",
            "-f",
            str(tmp_path),
            "--secrets-file",
            str(tmp_path / "secrets.env"),
            "--junit",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "API_TOKEN"},
    )
    assert proc.returncode == 0, proc.stderr
    text = target.read_text()
    assert SECRET not in text and SECRET not in proc.stdout + proc.stderr
    xml = JUnitXml.fromfile(str(target))
    suites = {suite.name: suite for suite in xml}
    cases = {case.name: case for case in suites["test: suite ***"]}
    assert set(cases) == {"test_login[***]", "test_skip_***"}
    (failure,) = cases["test_login[***]"].result
    assert isinstance(failure, Failure) and failure.message == "expected ***" and failure.text == "trace with ***"
    assert cases["test_login[***]"].classname == "cls.***"
    assert cases["test_skip_***"].result[0].message == "skipped ***"

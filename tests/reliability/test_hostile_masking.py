"""Threat model: a container stage that tries to get its secret out encoded, past the masker.

The stage's command prints the secret URL-encoded (``quote`` with ``/`` kept, nothing kept,
``quote_plus``, lower-case hex), as JSON (raw UTF-8, ASCII escapes in either case, ``\\/``) and
base64, on stdout and stderr, in a failing command's last lines (the stage's error), and in the
names and messages of a JUnit report the stage reads with ``ctx.junit``. A real ``pipekit run``
process, in both workspace modes; none of the console, the JSON log, the history (every file of
``.pipekit/``, the database included), the HTML report or the JUnit file may hold any form.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

pytestmark = pytest.mark.docker

SECRET = 'pä/ss+wörd&"ç-42-exfil'

LEAK = r"""
import base64, json, os, re, sys
import xml.etree.ElementTree as ET
from urllib.parse import quote, quote_plus

v = os.environ["V"]
forms = {
    "quote": quote(v),
    "quote-none-safe": quote(v, safe=""),
    "quote-plus": quote_plus(v),
    "quote-lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(v, safe="")),
    "json-utf8": json.dumps(v, ensure_ascii=False),
    "json-ascii": json.dumps(v),
    "json-upper": re.sub(r"\\u[0-9a-f]{4}", lambda m: "\\u" + m.group()[2:].upper(), json.dumps(v)),
    "json-slash": json.dumps(v, ensure_ascii=False).replace("/", "\\/"),
    "b64": base64.b64encode(v.encode()).decode(),
    "b64-url": base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
}
for label, text in forms.items():
    print(f"leak {label} {text}", flush=True)
    print(f"leak-err {label} {text}", file=sys.stderr, flush=True)
if sys.argv[1:] == ["report"]:
    suite = ET.Element("testsuite", name="suite " + forms["json-utf8"], tests=str(len(forms)))
    for label, text in forms.items():
        case = ET.SubElement(suite, "testcase", classname="cls." + text, name=f"test_{label}[{text}]")
        ET.SubElement(case, "failure", message="expected " + text).text = "trace " + text
    os.makedirs("reports", exist_ok=True)
    ET.ElementTree(suite).write("reports/junit.xml", encoding="utf-8")
if sys.argv[1:] == ["fail"]:
    sys.exit(3)
"""

PIPELINE = """
import pipekit as pk

TOKEN = pk.secret("DEPLOY_TOKEN")

@pk.stage(image="{image}", env={{"V": TOKEN, "PYTHONIOENCODING": "utf-8"}})
def hostile(ctx):
    ctx.sh("python3 leak.py report")
    ctx.junit("reports/junit.xml", fail_on_failure=False)
    ctx.sh("python3 leak.py fail")
"""


def _forms(value: str) -> dict[str, str]:
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(value, safe=""))
    upper = re.sub(r"\\u[0-9a-f]{4}", lambda m: "\\u" + m.group()[2:].upper(), json.dumps(value)[1:-1])
    return {
        "raw": value,
        "quote": quote(value),
        "quote-none-safe": quote(value, safe=""),
        "quote-plus": quote_plus(value),
        "quote-lower": lower,
        "json-utf8": json.dumps(value, ensure_ascii=False)[1:-1],
        "json-ascii": json.dumps(value)[1:-1],
        "json-upper": upper,
        "json-slash": json.dumps(value, ensure_ascii=False)[1:-1].replace("/", "\\/"),
        "b64": base64.b64encode(value.encode()).decode(),
        "b64-url": base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
    }


def _holds(data: bytes) -> list[str]:
    """The forms of the secret found in a file's bytes (also once HTML or XML entities are read)."""
    text = data.decode("utf-8", errors="replace")
    found = []
    for label, form in _forms(SECRET).items():
        if form.encode() in data or form in text or form in html.unescape(text):
            found.append(label)
    return found


@pytest.mark.parametrize(("mode", "log_format"), [("mount", "json"), ("copy", "console")])
def test_no_encoded_form_of_a_secret_gets_out(
    tmp_path: Path, python_base_image: str, mode: str, log_format: str
) -> None:
    """Every form the stage prints or writes shows as *** wherever pipekit writes it."""
    (tmp_path / "leak.py").write_text(LEAK)
    (tmp_path / "pipeline.py").write_text(PIPELINE.format(image=python_base_image))
    out = tmp_path / "out"
    env = {**os.environ, "DEPLOY_TOKEN": SECRET, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [
            shutil.which("pipekit") or "pipekit",
            "run",
            "--workspace",
            mode,
            "--log-format",
            log_format,
            "--progress",
            "plain",
            "--junit",
            str(out / "pipekit.xml"),
            "--report",
            str(out / "report.html"),
        ],
        capture_output=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    console = proc.stdout + proc.stderr
    text = console.decode()
    assert proc.returncode == 1, text  # the stage's last command fails on purpose
    # the stage really did print every form, each masked: the test sees the attempt
    assert text.count("leak ") >= 10 and text.count("leak-err ") >= 10, text
    assert "exited with code 3" in text, text
    assert _holds(console) == [], text
    junit = (out / "pipekit.xml").read_bytes()
    assert junit.count(b"<testcase") == 11  # the stage and the 10 tests it read
    assert b"***" in junit
    assert _holds(junit) == []
    report = (out / "report.html").read_bytes()
    assert b"hostile" in report
    assert _holds(report) == []
    stored = [p for p in (tmp_path / ".pipekit").rglob("*") if p.is_file()]
    assert any(p.name == "pipekit.db" for p in stored)
    for p in stored:
        assert _holds(p.read_bytes()) == [], p
    # the workspace still holds the secret (the stage wrote it): only what pipekit writes is masked
    assert _holds((tmp_path / "reports" / "junit.xml").read_bytes()) != []

"""Logs: readable on a terminal, one JSON object per line for machines."""

from __future__ import annotations

import io
import json

from pipekit._console.log import make_logger


def test_json_lines_carry_timestamp_level_and_fields() -> None:
    """Each event is one JSON object with timestamp and level."""
    buf = io.StringIO()
    log = make_logger("json", file=buf)
    log.bind(stage="lint").info("output", line="hello", stream="stdout")
    log.info("stage finished", stage="lint", status="succeeded", duration_s=0.5)
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert events[0]["event"] == "output" and events[0]["stage"] == "lint" and events[0]["line"] == "hello"
    assert all("timestamp" in e and e["level"] == "info" for e in events)


def test_console_lines_are_prefixed_with_their_stage() -> None:
    """Console output prefixes each line with its stage, errors indented under it."""
    buf = io.StringIO()
    log = make_logger("console", file=buf)
    log.info("output", stage="lint", line="hello")
    log.error("stage finished", stage="lint", status="failed", duration_s=1.25, error="boom\nsecond line")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "lint         | hello"
    assert lines[1] == "lint         | = FAILED in 1.25s"
    assert lines[2] == "lint         |   boom"
    assert lines[3] == "lint         |   second line"


def test_summary_is_a_table() -> None:
    """The run finished event renders as a table on the console."""
    buf = io.StringIO()
    make_logger("console", file=buf).info(
        "run finished",
        run_id="r1",
        status="failed",
        duration_s=2.0,
        stages=[
            {"stage": "a", "status": "failed", "duration_s": 1.0},
            {"stage": "bb", "status": "skipped", "duration_s": None},
        ],
    )
    assert buf.getvalue().splitlines()[1:] == [
        "STAGE  STATUS   DURATION",
        "a      failed   1.00s",
        "bb     skipped  -",
        "run r1 failed in 2.00s",
    ]


def test_debug_is_filtered_by_default() -> None:
    """Debug events (each command) appear only at the verbose level."""
    quiet, loud = io.StringIO(), io.StringIO()
    make_logger("json", file=quiet).debug("command", command="ls")
    make_logger("json", file=loud, level=10).debug("command", command="ls")
    assert quiet.getvalue() == ""
    assert json.loads(loud.getvalue())["command"] == "ls"

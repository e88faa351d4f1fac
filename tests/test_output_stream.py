"""A command's output on its way out: batches of lines through the log chain, bounded memory."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._console.log import make_logger
from pipekit._core.streams import MAX_LINE, MEMORY_LIMIT, Captured, LineSplitter
from pipekit._dsl.secrets import Masker

LINES = ["plain", "\x1b[31mred\x1b[0m text", 'quotes " and \\ and é ✓', "", "the token s3cr3t-value here"]


def _render(log_format: str, *, batch: bool) -> str:
    masker = Masker()
    masker.add("s3cr3t-value")

    def per_event_only(_logger: Any, _name: str, event: Any) -> Any:  # no batch form: one event per line
        return event

    file = io.StringIO()
    processors: list[Any] = [masker] if batch else [masker, per_event_only]
    log = make_logger(log_format, file=file, processors=processors).bind(stage="build")
    log.output_lines("stdout", list(LINES))
    return re.sub(r'"timestamp": "[^"]+"', '"timestamp": "T"', file.getvalue())


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_batch_of_lines_is_written_as_the_same_events_one_at_a_time_would_be(log_format: str) -> None:
    batched, one_by_one = _render(log_format, batch=True), _render(log_format, batch=False)
    assert batched == one_by_one
    assert "s3cr3t-value" not in batched and "\x1b" not in batched
    assert batched.count("\n") == len(LINES)


def test_json_batches_are_one_valid_event_per_line() -> None:
    events = [json.loads(line) for line in _render("json", batch=True).splitlines()]
    assert [e["line"] for e in events] == ["plain", "red text", 'quotes " and \\ and é ✓', "", "the token *** here"]
    assert {e["event"] for e in events} == {"output"} and {e["stage"] for e in events} == {"build"}


def test_a_secret_that_spans_lines_is_masked_in_a_batch() -> None:
    masker = Masker()
    masker.add("first-line-of-key\nsecond-line-of-key")
    masked = masker.batch_lines("s", "stdout", ["before", "first-line-of-key", "second-line-of-key", "after"])
    assert "first-line-of-key" not in "\n".join(masked) and "second-line-of-key" not in "\n".join(masked)
    assert masked[0] == "before" and masked[-1] == "after"


class _Sink:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []

    def __call__(self, stream: str, line: str) -> None:
        raise AssertionError("a sink with a batch form gets batches")

    def batch_lines(self, stream: str, lines: list[str]) -> None:
        self.batches.append((stream, lines))


def test_the_splitter_hands_over_the_complete_lines_of_each_chunk_at_once() -> None:
    sink = _Sink()
    splitter = LineSplitter("stdout", sink)
    splitter.feed(b"one\r\ntwo\nthr")
    splitter.feed(b"ee\nfour")
    captured = splitter.close()
    assert sink.batches == [("stdout", ["one", "two"]), ("stdout", ["three"]), ("stdout", ["four"])]
    assert captured.text() == "one\r\ntwo\nthree\nfour"


def test_a_line_with_no_end_reaches_the_log_in_pieces_without_cutting_a_character() -> None:
    lines: list[str] = []
    splitter = LineSplitter("stdout", lambda _stream, line: lines.append(line))
    data = ("é" * MAX_LINE).encode()  # two bytes each: a piece boundary can fall inside one
    for i in range(0, len(data), 65536 + 1):
        splitter.feed(data[i : i + 65536 + 1])
    splitter.close()
    assert len(lines) >= 2 and all(len(line.encode()) <= MAX_LINE for line in lines)
    assert "".join(lines) == data.decode()


def test_captured_output_keeps_a_bounded_amount_in_memory_and_the_rest_in_an_unlinked_file() -> None:
    captured = Captured()
    chunk = b"x" * 65536
    for _ in range(3 * MEMORY_LIMIT // len(chunk)):
        captured.write(chunk)
    assert len(captured._memory) <= MEMORY_LIMIT
    assert captured._fd is not None
    assert os.fstat(captured._fd).st_nlink == 0  # nothing left on disk, whatever happens to the process
    assert captured.text() == "x" * (3 * MEMORY_LIMIT)
    assert captured.size == 3 * MEMORY_LIMIT


def test_a_large_output_is_logged_recorded_and_returned_whole(
    tmp_path: Path, docker_backend: Any, busybox_image: str
) -> None:
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        f"@pk.stage(image={busybox_image!r})\n"
        "def talk(ctx):\n"
        "    out = ctx.sh('seq 1 300000')\n"
        "    long = ctx.sh(\"head -c 3000000 /dev/zero | tr '\\\\0' x\")\n"
        "    return [len(out.stdout), out.stdout.splitlines()[-1], len(long.stdout)]\n"
    )
    log = io.StringIO()
    result = pk.run(tmp_path / "pipeline.py", backend=docker_backend, log_format="json", log_file=log, record=True)
    assert result.status == "succeeded", result.stages
    assert result["talk"].output == [len("".join(f"{i}\n" for i in range(1, 300001))), "300000", 3_000_000]
    output = [json.loads(line) for line in log.getvalue().splitlines()]
    printed = [e["line"] for e in output if e["event"] == "output"]
    assert printed[:3] == ["1", "2", "3"] and printed[299999] == "300000"
    assert "".join(printed[300000:]) == "x" * 3_000_000 and len(printed) == 300000 + 3
    stored = (tmp_path / ".pipekit" / "logs" / result.run_id / "talk.log").read_text().splitlines()
    assert stored[stored.index("1") : stored.index("1") + 300000] == [str(i) for i in range(1, 300001)]


def _peak_rss_mib(folder: Path, megabytes: int, image: str) -> float:
    (folder / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        f"@pk.stage(image={image!r})\n"
        "def talk(ctx):\n"
        f"    ctx.sh('yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789 | head -c {megabytes}000000', strict=False)\n"
    )
    with open(folder / "err.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipekit", "run", "-f", str(folder)], stdout=subprocess.DEVNULL, stderr=err
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped above
    assert status == 0, (folder / "err.txt").read_text()
    return usage.ru_maxrss / 1024


def test_memory_does_not_grow_with_the_output(tmp_path: Path, busybox_image: str) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    assert _peak_rss_mib(large, 80, busybox_image) - _peak_rss_mib(small, 2, busybox_image) < 10

"""Commands that show a run: ``pipekit report``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import click

from pipekit._cli_history import print_error

__all__ = ["register", "write_report"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def write_report(history: Any, run_id: str, target: str | os.PathLike[str]) -> Path:
    """The run's HTML report, written to ``target``."""
    from pipekit._report_data import report_data
    from pipekit._report_html import render_report

    path = Path(target)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(report_data(history, run_id)), encoding="utf-8")
    return path


def _streams() -> tuple[IO[str], IO[str]]:
    obj = click.get_current_context().obj or {}
    return obj.get("out") or click.get_text_stream("stdout"), obj.get("err") or click.get_text_stream("stderr")


@click.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit report last -o report.html\n  pipekit run --report report.html",
)
@click.argument("run", metavar="RUN")
@click.option("-o", "--output", metavar="PATH", default="report.html", show_default=True, help="Where to write it.")
@click.option(
    "-f", "--file", default="pipeline.py", show_default=True, metavar="PATH", help="The pipeline whose runs to read."
)
def report(run: str, output: str, file: str) -> None:
    """Write a run as one self-contained HTML page: its DAG, timeline, logs, tests and artifacts.

    RUN is a run id, a unique prefix of one, or 'last'.
    """
    from pipekit._cli_history import _history, _workspace_of
    from pipekit.exceptions import PipekitError

    out, err = _streams()
    try:
        history = _history(_workspace_of(type("Args", (), {"file": file})()), err)
        try:
            path = write_report(history, history.resolve(run), output)
        finally:
            history.close()
    except PipekitError as e:
        print_error(err, str(e))
        raise click.exceptions.Exit(2) from None
    except OSError as e:
        print_error(err, f"cannot write {output}: {e.strerror}")
        raise click.exceptions.Exit(2) from None
    print(f"wrote {path}", file=out)


def register(group: Any) -> None:
    group.add_command(report)

"""Commands that show a run: ``pipekit report``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import IO, Any

import click

from pipekit._cli_history import CONTEXT, print_error, streams

__all__ = ["register"]


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
    from pipekit._report_html import write_report
    from pipekit.exceptions import PipekitError

    out, err = streams()
    try:
        history = _history(_workspace_of(SimpleNamespace(file=file)), err)
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


@click.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit run --keep-failed\n  pipekit shell last test\n  pipekit shell last test -- ls -la",
)
@click.argument("run", metavar="RUN")
@click.argument("stage")
@click.argument("command", nargs=-1)
@click.option(
    "-f", "--file", default="pipeline.py", show_default=True, metavar="PATH", help="The pipeline whose runs to read."
)
def shell(run: str, stage: str, command: tuple[str, ...], file: str) -> None:
    """Open a shell in the container a failed stage left (`run --keep-failed`), or run COMMAND there."""
    import shutil
    import subprocess
    import sys

    from pipekit._cli_history import _history, _workspace_of
    from pipekit._runner import container_backend
    from pipekit.exceptions import PipekitError

    out, err = streams()
    try:
        history = _history(_workspace_of(SimpleNamespace(file=file)), err)
        try:
            run_id = history.resolve(run)
        finally:
            history.close()
        backend = container_backend()
        backend.check()
        cid = backend.kept_container(run_id, stage)
    except PipekitError as e:
        print_error(err, str(e))
        raise click.exceptions.Exit(2) from None
    if cid is None:
        print_error(err, f"run {run_id} kept no container of stage '{stage}'; run it again with --keep-failed")
        raise click.exceptions.Exit(2)
    docker = shutil.which("docker")
    if docker is None:
        print_error(err, "the docker command is not installed; pipekit shell runs `docker exec -it` in the container")
        raise click.exceptions.Exit(2)
    interactive = not command and sys.stdin.isatty()
    script = ["-c", " ".join(command)] if command else []
    argv = [docker, "exec", "-it" if interactive else "-i", cid, "sh", *script]
    if not command:
        print(f"pipekit: a shell in stage '{stage}' of run {run_id} (exit to leave it)", file=err)
    # on a terminal the shell has it; called with another output (main(out=...)) it is captured there
    code = subprocess.call(argv) if out is sys.__stdout__ else _captured(argv, out)
    raise click.exceptions.Exit(code)


def _captured(argv: list[str], out: IO[str]) -> int:
    import subprocess

    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    out.write(proc.stdout)
    return proc.returncode


def register(group: Any) -> None:
    group.add_command(report)
    group.add_command(shell)

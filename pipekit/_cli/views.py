"""Commands that show a run: ``pipekit report`` and ``pipekit shell``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

import click

from pipekit._cli.history import CONTEXT, opened_history, print_error, streams
from pipekit._cli.options import file_option
from pipekit._core.util import EXIT_NOT_FOUND
from pipekit.exceptions import UsageError

__all__ = ["register"]


@click.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit report last -o report.html\n  pipekit run --report report.html",
)
@click.argument("run", metavar="RUN")
@click.option("-o", "--output", metavar="PATH", default="report.html", show_default=True, help="Where to write it.")
@file_option
def report(run: str, output: str, file: str) -> None:
    """Write a run as one self-contained HTML page: its DAG, timeline, logs, tests and artifacts.

    RUN is a run id, a unique prefix of one, or 'last'.
    """
    from pipekit._report.page import write_report

    out, err = streams()
    with opened_history(file, err) as history:
        try:
            path = write_report(history, history.resolve(run), output)
        except OSError as e:
            raise UsageError(f"cannot write {output}: {e.strerror}") from None
    shown = os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else path
    print(f"wrote {shown}", file=out)


SHELL_EPILOG = """\b
Examples:
  pipekit run --keep-failed
  pipekit shell last test                       # a shell in the stage's container
  pipekit shell last test -- ls -la out/        # one command (its arguments as given)
  pipekit shell last test -- sh -c 'cat a; ls'  # a script
"""


@click.command(context_settings=CONTEXT, epilog=SHELL_EPILOG)
@click.argument("run", metavar="RUN")
@click.argument("stage")
@click.argument("command", nargs=-1, metavar="[-- COMMAND [ARG]...]")
@file_option
def shell(run: str, stage: str, command: tuple[str, ...], file: str) -> None:
    """Open a shell in the container a failed stage left (`run --keep-failed`), or run COMMAND there
    (as an argument list, like `docker exec`: use `sh -c '...'` for a script)."""
    out, err = streams()
    docker, cid, run_id = _kept(run, stage, file, err)
    if command:
        _check_command(docker, cid, command[0], f"the container of stage '{stage}' (run {run_id})", err)
    else:
        print(f"pipekit: a shell in stage '{stage}' of run {run_id} (exit to leave it)", file=err)
    if _is_process_stream(out, 1) and _is_process_stream(err, 2):
        # the command line: docker takes over this process, with its terminal (or pipes) as they are;
        # -t only on a terminal (docker refuses it for a stdin that is not; output redirected to a
        # file must not get the terminal's line ends)
        out.flush()
        err.flush()
        flags = ["-it"] if sys.stdin.isatty() and sys.stdout.isatty() else ["-i"]
        os.execv(docker, [docker, "exec", *flags, cid, *(command or ("sh",))])
    # main(out=..., err=...): no terminal and no input; the output goes to those streams
    proc = subprocess.run(
        [docker, "exec", cid, *(command or ("sh",))], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    out.write(proc.stdout)
    err.write(proc.stderr)
    click.get_current_context().exit(proc.returncode)  # the command's own exit code


def _kept(run: str, stage: str, file: str, err: IO[str]) -> tuple[str, str, str]:
    """The docker command, the id of the stage's kept container and the run's id (else a UsageError,
    or the backend's error: EngineUnavailable when the engine is down)."""
    from pipekit._run.runner import container_backend

    with opened_history(file, err) as history:
        run_id = history.resolve(run)
    backend = container_backend()
    backend.check()
    cid = backend.kept_container(run_id, stage)
    if cid is None:
        raise UsageError(f"run {run_id} kept no container of stage '{stage}'; run it again with --keep-failed")
    docker = shutil.which("docker")
    if docker is None:
        raise UsageError("the docker command is not installed; pipekit shell runs `docker exec` in the container")
    return docker, cid, run_id


def _is_process_stream(stream: IO[str], fd: int) -> bool:
    """Whether ``stream`` writes to this process's descriptor ``fd`` (the console), not to a buffer."""
    try:
        return stream.fileno() == fd
    except (OSError, ValueError, AttributeError):
        return False


#: exit 0 when $1 is a program docker exec can start (a path, or a file on the PATH), 3 when it is
#: only something of the shell's (a builtin, or a busybox applet without a link), else 1
_PROBE = """case $1 in */*) test -f "$1" && test -x "$1" && exit 0; exit 1;; esac
IFS=:
for d in $PATH; do test -f "${d:-.}/$1" && test -x "${d:-.}/$1" && exit 0; done
command -v "$1" >/dev/null && exit 3
exit 1"""


def _check_command(docker: str, cid: str, name: str, where: str, err: IO[str]) -> None:
    """Exit 127 when the container has no program ``name``, rather than with docker's OCI error (as a
    shell does); a UsageError when docker cannot run anything there."""
    proc = subprocess.run(
        [docker, "exec", cid, "sh", "-c", _PROBE, "sh", name], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if proc.returncode == 0:
        return
    if proc.stderr.strip():  # docker's own answer (the container is not running, ...)
        raise UsageError(f"cannot run a command in {where}: {proc.stderr.strip()}")
    builtin = " (a shell builtin: run it with sh -c '...')" if proc.returncode == 3 else ""
    print_error(err, f"no command {name!r} in {where}{builtin}")
    click.get_current_context().exit(EXIT_NOT_FOUND)


def register(group: click.Group) -> None:
    group.add_command(report)
    group.add_command(shell)

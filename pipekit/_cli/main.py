"""The command line, with click: ``pipekit run | runs | show | logs | artifacts | cache | prune | list |
graph | validate | completion``.

Exit codes: 0 success, 1 a stage failed, 2 the pipeline or the command line is wrong,
3 the backend (Docker engine) is not usable, 4 a gate awaits approval, 130 interrupted (SIGINT),
143 terminated (SIGTERM).
Only this module turns exceptions into exit codes. Every option can also come from a ``PIPEKIT_*``
environment variable, and ``pipekit run``'s defaults from ``[tool.pipekit]`` in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import click

from pipekit import __version__
from pipekit._cli import approvals, ci, commands, history, init, prune, server, views
from pipekit._cli.config import command_defaults
from pipekit._cli.history import CONTEXT, print_error
from pipekit._core.util import EXIT_INTERRUPTED, collector_on
from pipekit.exceptions import Interrupted, PipekitError, PipelineError

__all__ = ["cli", "main"]


@click.group(context_settings=CONTEXT, epilog="Run `pipekit COMMAND --help` for a command's options and examples.")
@click.version_option(__version__, "--version", prog_name="pipekit", message="%(prog)s %(version)s")
def cli() -> None:
    """Run CI/CD pipelines written in Python."""
    if click.get_current_context().invoked_subcommand != "run":
        collector_on()  # (a run turns it on once its pipeline is loaded and planned)


for module in (commands, history, approvals, prune, ci, init, views, server):  # each module adds its own commands
    module.register(cli)


COMPLETION_EPILOG = """\b
Examples:
  pipekit completion bash > /etc/bash_completion.d/pipekit
  pipekit completion zsh > "${fpath[1]}/_pipekit"
  pipekit completion fish > ~/.config/fish/completions/pipekit.fish
"""


@cli.command(context_settings=CONTEXT, epilog=COMPLETION_EPILOG)
@click.argument("shell", type=click.Choice(("bash", "zsh", "fish")))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish."""
    from click.shell_completion import get_completion_class

    import pipekit._cli.complete  # noqa: F401  (its bash and zsh scripts: no space after NAME=)

    completer = get_completion_class(shell)
    assert completer is not None
    ctx = click.get_current_context()
    print(completer(cli, {}, "pipekit", "_PIPEKIT_COMPLETE").source(), file=ctx.obj["out"])


class _PipeSafe:
    """A standard stream that stops writing, quietly, when its reader goes away (``pipekit run |
    head``), as Unix tools do: the command goes on (a run finishes and is recorded as it really
    ended) and no BrokenPipeError traceback is printed, now or at exit."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def _gone(self) -> None:
        self.broken = True
        try:  # what Python's docs advise: point the descriptor at /dev/null so the exit flush is quiet
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _usage_error(e: click.ClickException, err: IO[str]) -> int:
    message = e.format_message()
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    print_error(err, message)
    return e.exit_code


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run the command line in-process and return its exit code (never raises for user errors)."""
    stdout: IO[str] = out if out is not None else _PipeSafe(sys.stdout)  # type: ignore[assignment]
    stderr: IO[str] = err if err is not None else _PipeSafe(sys.stderr)  # type: ignore[assignment]
    return _main(argv, stdout, stderr)


def _main(argv: Sequence[str] | None, out: IO[str], err: IO[str]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        obj = {"out": out, "err": err, "argv": argv}
        default_map = command_defaults(Path.cwd())
        default_map["plan"] = dict(default_map["run"])  # the plan decides with the run's own defaults
        # every option without a variable of its own reads PIPEKIT_<COMMAND>_<OPTION> (PIPEKIT_RUNS_LIMIT);
        # click writes --help and --version to sys.stdout: send them where this call's output goes
        extra: dict[str, Any] = {"obj": obj, "default_map": default_map, "auto_envvar_prefix": "PIPEKIT"}
        with contextlib.redirect_stdout(out), cli.make_context("pipekit", argv, **extra) as ctx:
            cli.invoke(ctx)
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:
        print(e.ctx.get_help(), file=out)
        return 2
    except click.ClickException as e:
        return _usage_error(e, err)
    except click.exceptions.Abort:
        print_error(err, "interrupted")
        return EXIT_INTERRUPTED
    except Interrupted as e:
        print_error(err, f"{e}; stopped every running stage and removed its containers")
        return e.exit_code
    except KeyboardInterrupt:
        print_error(err, "interrupted; stopped every running stage and removed its containers")
        return EXIT_INTERRUPTED
    except PipelineError as e:
        print_error(err, f"{type(e).__name__}: {e}")
        return e.exit_code
    except PipekitError as e:
        print_error(err, str(e))
        return e.exit_code
    finally:
        try:
            out.flush()
        except (OSError, ValueError):
            pass


def console_main() -> None:
    if "_PIPEKIT_COMPLETE" in os.environ:  # the shell asks for completions (pipekit.__main__ answers first)
        from pipekit._cli.complete import complete

        raise SystemExit(complete(lambda: cli))
    code = main()
    # Python's last garbage collection at exit walks every object the run made (about 0.12 s
    # here, paid after the last container is gone); nothing is left to collect that matters, so
    # the objects are frozen out of it. atexit handlers and file flushing still run.
    gc.freeze()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others:
        # a stage stuck in Python code, or a thread pipeline.py started, must not keep pipekit
        # running after its work is done
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)

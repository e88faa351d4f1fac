"""The command line, with click: ``pipekit run | runs | show | logs | artifacts | cache | list |
graph | validate | completion``.

Exit codes: 0 success, 1 a stage failed, 2 the pipeline or the command line is wrong,
3 the backend (Docker engine) is not usable, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
Only this module turns exceptions into exit codes. Every option can also come from a ``PIPEKIT_*``
environment variable, and ``pipekit run``'s defaults from ``[tool.pipekit]`` in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import click
from click.core import ParameterSource

from pipekit import __version__
from pipekit._cli.ci import register as register_ci_commands
from pipekit._cli.commands import cmd_graph, cmd_list, cmd_plan, cmd_run, cmd_validate
from pipekit._cli.config import command_defaults
from pipekit._cli.history import CONTEXT, HISTORY_COMMANDS, print_error
from pipekit._cli.options import (
    BRANCH_OPTION,
    CHANGED_BASE_OPTION,
    IMAGE_MAP_OPTION,
    NO_IMAGE_CHECK_OPTION,
    PARAM_OPTION,
    SECRETS_FILE_OPTION,
)
from pipekit._cli.options import backend_option as _backend_option
from pipekit._cli.options import file_option as _file_option
from pipekit._cli.server import register as register_server_commands
from pipekit._cli.views import register as register_view_commands
from pipekit._console.log import LOG_FORMATS
from pipekit._core.util import collector_on
from pipekit.exceptions import Interrupted, PipekitError, PipelineError

__all__ = ["cli", "main"]

Command = Callable[[SimpleNamespace, IO[str], IO[str]], int]


def _dispatch(command: Command, **values: Any) -> None:
    """Run a command body with the parsed values; its exit code ends the program."""
    ctx = click.get_current_context()
    out, err = ctx.obj["out"], ctx.obj["err"]
    from_config = {name for name in values if ctx.get_parameter_source(name) is ParameterSource.DEFAULT_MAP}
    args = SimpleNamespace(**values, argv=ctx.obj["argv"], from_config=from_config)
    ctx.exit(command(args, out, err))


@click.group(context_settings=CONTEXT, epilog="Run `pipekit COMMAND --help` for a command's options and examples.")
@click.version_option(__version__, "--version", prog_name="pipekit", message="%(prog)s %(version)s")
def cli() -> None:
    """Run CI/CD pipelines written in Python."""
    if click.get_current_context().invoked_subcommand != "run":
        collector_on()  # (a run turns it on once its pipeline is loaded and planned)


RUN_EPILOG = """\b
Examples:
  pipekit run                                 # every stage of ./pipeline.py
  pipekit run package                         # package and everything it needs
  pipekit run -f ci/ -j 8 --fail-fast --log-format json
  pipekit run --param registry=localhost:5000 --secrets-file .env.ci
  pipekit run --dry-run                       # what would run, and what is skipped and why
  pipekit run --junit reports/pipekit.xml     # for the CI's test view (JUnit XML)
  DOCKER_HOST=ssh://ci@build-box pipekit run  # the workspace is copied to the remote engine

\b
Every option can also be set with PIPEKIT_<OPTION> (PIPEKIT_JOBS=8, PIPEKIT_LOG_FORMAT=json),
and defaults for the project under [tool.pipekit] in pyproject.toml (see docs/cli.md).
"""


@cli.command(context_settings=CONTEXT, epilog=RUN_EPILOG)
@click.argument("stages", nargs=-1, metavar="[STAGE]...")
@_file_option
@click.option("-j", "--jobs", type=int, default=4, show_default=True, envvar="PIPEKIT_JOBS", help="Stages run at once.")
@click.option(
    "--fail-fast", is_flag=True, envvar="PIPEKIT_FAIL_FAST", help="When a stage fails, stop the running ones."
)
@click.option("--dry-run", is_flag=True, help="Print the plan and start nothing.")
@click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="console", show_default=True, envvar="PIPEKIT_LOG_FORMAT"
)
@click.option("-v", "--verbose", is_flag=True, envvar="PIPEKIT_VERBOSE", help="Also log debug events.")
@click.option(
    "--ci",
    type=click.Choice(("github", "gitlab", "jenkins", "none")),
    default=None,
    envvar="PIPEKIT_CI",
    help="Print the way this CI shows logs (default: detected from GITHUB_ACTIONS, GITLAB_CI, JENKINS_URL).",
)
@click.option(
    "--progress",
    type=click.Choice(("auto", "live", "plain")),
    default="auto",
    show_default=True,
    envvar="PIPEKIT_PROGRESS",
    help="live: a live view of the stages; plain: every line as it comes (auto: live on a terminal, not in CI).",
)
@click.option(
    "--keep-failed",
    is_flag=True,
    envvar="PIPEKIT_KEEP_FAILED",
    help="Keep the container of a stage that fails, to look around in it (pipekit shell RUN STAGE).",
)
@click.option("--junit", metavar="PATH", envvar="PIPEKIT_JUNIT", help="Write the run as a JUnit XML file.")
@click.option(
    "--report",
    metavar="PATH",
    envvar="PIPEKIT_REPORT",
    help="Write the run as an HTML page at the end, whatever the outcome.",
)
@BRANCH_OPTION
@CHANGED_BASE_OPTION
@click.option("--timeout", metavar="DURATION", envvar="PIPEKIT_TIMEOUT", help="Fail the run after this long ('30m').")
@click.option(
    "--resume",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[RUN]",
    envvar="PIPEKIT_RESUME",
    help="Run again only what failed or did not run in RUN (default: the last run).",
)
@click.option("--no-cache", is_flag=True, envvar="PIPEKIT_NO_CACHE", help="Run every stage, ignoring cached results.")
@click.option(
    "--workspace",
    type=click.Choice(("auto", "mount", "copy")),
    default=None,
    envvar="PIPEKIT_WORKSPACE",
    help="How container stages get the pipeline's folder (auto: mount for a local engine, copy for a remote one).",
)
@_backend_option
@click.option(
    "--registry",
    metavar="HOST[:PORT]",
    envvar="PIPEKIT_REGISTRY",
    help="Where images the run builds travel to the swarm's nodes (login: PIPEKIT_REGISTRY_USER/_PASSWORD).",
)
@PARAM_OPTION
@SECRETS_FILE_OPTION
@IMAGE_MAP_OPTION
@NO_IMAGE_CHECK_OPTION
def run(**values: Any) -> None:
    """Run the pipeline, or the named stages and everything they need."""
    _dispatch(cmd_run, **values)


@cli.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit plan\n  pipekit plan deploy --branch main -p deploy=yes\n"
    "  pipekit plan --format json",
)
@click.argument("stages", nargs=-1, metavar="[STAGE]...")
@_file_option
@click.option("--format", type=click.Choice(("text", "json")), default="text", show_default=True)
@PARAM_OPTION
@SECRETS_FILE_OPTION
@IMAGE_MAP_OPTION
@NO_IMAGE_CHECK_OPTION
@BRANCH_OPTION
@CHANGED_BASE_OPTION
@click.option(
    "--resume",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[RUN]",
    envvar="PIPEKIT_RESUME",
    help="Plan the resumed run: what RUN's results restore (default: the last run).",
)
def plan(**values: Any) -> None:
    """What a run would do with each stage, and why: run, skip, or take from the stage cache (and,
    when the cache misses, what changed since the stage's last cached run)."""
    _dispatch(cmd_plan, **values)


@cli.command(name="list", context_settings=CONTEXT)
@_file_option
def list_(**values: Any) -> None:
    """List the stages, their images and dependencies, and the parameters."""
    _dispatch(cmd_list, **values)


@cli.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit graph --format svg --run last > graph.svg\n"
    "  pipekit graph --format dot | dot -Tpng > graph.png",
)
@_file_option
@click.option("--format", type=click.Choice(("text", "dot", "mermaid", "svg")), default="text", show_default=True)
@click.option("--run", metavar="RUN", help="Show the statuses of a recorded run (an id, a prefix, or 'last').")
def graph(**values: Any) -> None:
    """Print the stage graph."""
    _dispatch(cmd_graph, **values)


@cli.command(context_settings=CONTEXT)
@_file_option
@PARAM_OPTION
@SECRETS_FILE_OPTION
@IMAGE_MAP_OPTION
@NO_IMAGE_CHECK_OPTION
def validate(**values: Any) -> None:
    """Check the pipeline and report every problem: its definition, the secrets its stages declare,
    and the images they run in (present, or known to their registry; nothing is pulled)."""
    _dispatch(cmd_validate, **values)


RUN_REF = click.argument("run", metavar="RUN")
RUN_HELP = "RUN is a run id, a unique prefix of one, or 'last'."


@cli.command(context_settings=CONTEXT)
@_file_option
@click.option("-n", "--limit", type=click.IntRange(1, 1_000_000), default=20, show_default=True, help="How many.")
def runs(**values: Any) -> None:
    """List the recent runs of this workspace."""
    _dispatch(HISTORY_COMMANDS["runs"], **values)


@cli.command(context_settings=CONTEXT, epilog=RUN_HELP)
@RUN_REF
@_file_option
def show(**values: Any) -> None:
    """Show a run: stages, durations, errors, artifacts, tests."""
    _dispatch(HISTORY_COMMANDS["show"], **values)


@cli.command(context_settings=CONTEXT, epilog=RUN_HELP)
@RUN_REF
@click.argument("stage", required=False)
@_file_option
@click.option("--follow", is_flag=True, help="Keep printing until the run ends.")
def logs(**values: Any) -> None:
    """Print a run's logs (one stage's, or all)."""
    _dispatch(HISTORY_COMMANDS["logs"], **values)


@cli.command(context_settings=CONTEXT, epilog=RUN_HELP)
@RUN_REF
@_file_option
@click.option("--dest", metavar="DIR", help="Where to put them (default ./artifacts-RUN).")
def artifacts(**values: Any) -> None:
    """Copy a run's archived files out."""
    _dispatch(HISTORY_COMMANDS["artifacts"], **values)


@cli.command(context_settings=CONTEXT)
@click.argument("action", type=click.Choice(("list", "prune")))
@_file_option
@click.option("--results", is_flag=True, help="Prune only the cached stage results.")
@click.option("--volumes", is_flag=True, help="Prune only the cache volumes (cache_dirs=).")
def cache(**values: Any) -> None:
    """List or prune cached stage results and cache volumes."""
    _dispatch(HISTORY_COMMANDS["cache"], **values)


@cli.command(context_settings=CONTEXT, epilog="\b\nExamples:\n  pipekit cleanup last\n  pipekit cleanup --all")
@click.argument("run", metavar="[RUN]", required=False)
@_file_option
@click.option("--all", "all", is_flag=True, help="Every run whose pipekit process is gone, of any workspace.")
@_backend_option
def cleanup(**values: Any) -> None:
    """Remove the containers and networks a run left (after a kill -9, or an engine that was down)."""
    _dispatch(HISTORY_COMMANDS["cleanup"], **values)


register_ci_commands(cli)
register_view_commands(cli)
register_server_commands(cli)

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
        return 130
    except Interrupted as e:
        print_error(err, f"{e}; stopped every running stage and removed its containers")
        return e.exit_code
    except KeyboardInterrupt:
        print_error(err, "interrupted; stopped every running stage and removed its containers")
        return 130
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
    if "_PIPEKIT_COMPLETE" in os.environ:  # the shell asks for completions
        cli.main(prog_name="pipekit", complete_var="_PIPEKIT_COMPLETE")
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

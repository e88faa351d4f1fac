"""``pipekit run | plan | list | graph | validate``: the click commands (``register``) and their
bodies, plain functions of the parsed arguments and the output streams."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import IO, Any

import attrs
import click

from pipekit._ci.output import detect as detect_ci
from pipekit._cli.history import CONTEXT, print_error, table
from pipekit._cli.options import (
    BRANCH_OPTION,
    CACHE_MODE_OPTION,
    CACHE_REGISTRY_OPTION,
    CHANGED_BASE_OPTION,
    IMAGE_MAP_ENV,
    IMAGE_MAP_OPTION,
    NO_IMAGE_CHECK_OPTION,
    PARAM_OPTION,
    SECRETS_FILE_OPTION,
    backend_option,
    dispatch,
    file_option,
    resume_option,
)
from pipekit._cli.prune import retain
from pipekit._console.log import LOG_FORMATS, make_logger
from pipekit._core.util import collector_on
from pipekit._dsl.loader import load
from pipekit._dsl.params import parse_param_args
from pipekit._dsl.stage import Pipeline
from pipekit._plan.graph import plan as plan_of
from pipekit._run.runner import run_setup
from pipekit._run.session import RunRequest, setup
from pipekit.exceptions import Interrupted, PipelineError, UsageError

__all__ = ["IMAGE_MAP_ENV", "cmd_graph", "cmd_list", "cmd_run", "cmd_validate", "register"]


def _image_map(values: Sequence[str]) -> dict[str, str]:
    """The ``--image-map`` values (command line, ``PIPEKIT_IMAGE_MAP`` or [tool.pipekit], in that
    order of precedence: click picks one source) as a mapping."""
    mapping = {}
    for item in values:
        src, sep, dst = item.strip().partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise UsageError(f"--image-map takes IMAGE=LOCAL_IMAGE, got {item!r}")
        mapping[src.strip()] = dst.strip()
    return mapping


def _secrets_file(args: SimpleNamespace, err: IO[str]) -> str | None:
    """The secrets file to read. One named on the command line (or PIPEKIT_SECRETS_FILE) must
    exist; the project's default from [tool.pipekit] may be missing (a CI keeps its secrets in the
    environment): then the environment alone serves, said once."""
    path = args.secrets_file
    if not path:
        return None
    if not os.path.lexists(path):
        if "secrets_file" in getattr(args, "from_config", ()):
            print_error(err, f"secrets file {path} does not exist; secrets come from the environment")
            return None
        raise UsageError(f"The secrets file {path} does not exist (--secrets-file or PIPEKIT_SECRETS_FILE)")
    return str(path)


@contextmanager
def _signals_raise() -> Iterator[None]:
    """While running, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if received:  # already stopping: let the cleanup finish
            return
        received.append(signum)
        raise Interrupted(signum, signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _load_valid(path: str) -> Pipeline:
    return load(path)


def cmd_validate(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    request = RunRequest(
        pipeline=args.file,
        params=parse_param_args(args.param),
        secrets_file=_secrets_file(args, err),
        image_map=_image_map(args.image_map),
        check_images=not args.no_image_check,
    )
    run = setup(request)
    for e in run.errors:
        print_error(err, f"{type(e).__name__}: {e}")
    if run.errors:
        print_error(err, f"{len(run.errors)} problem(s) in {run.pipeline.path}")
        return 2
    run.preflight(run.dry_run(), lambda message: print_error(err, f"warning: {message}"))
    print(f"{run.pipeline.path}: {len(run.pipeline.stages)} stages, valid", file=out)
    return 0


def _cache_text(s: Any) -> str:
    """A stage's ``cache=`` in ``pipekit list``: its file globs and variables."""
    if s.cache is None:
        return "-"
    env = f" env {','.join(s.cache.env)}" if s.cache.env else ""
    return (",".join(s.cache.files) + env).strip() or "-"


#: the columns of `pipekit list`: a heading and how a stage (of plan p) shows in it; one line each
LIST_COLUMNS: tuple[tuple[str, Callable[[Any, Any], str]], ...] = (
    ("STAGE", lambda p, s: str(s.name)),
    ("IMAGE", lambda p, s: p.pipeline.describe_image(s)),
    ("NEEDS", lambda p, s: ", ".join(p.upstream(s.name)) or "-"),
    ("WHEN", lambda p, s: "always" if s.when is None else str(s.when)),
    ("CACHE", lambda p, s: _cache_text(s)),
    ("APPROVAL", lambda p, s: "-" if s.approval is None else ",".join(s.approval.approvers) or "anyone"),
    ("DEFINED AT", lambda p, s: str(s.location)),
)


def cmd_list(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    p = plan_of(_load_valid(args.file))
    rows = [tuple(heading for heading, _ in LIST_COLUMNS)]
    rows += [tuple(show(p, p.stage(name)) for _, show in LIST_COLUMNS) for name in p.order]
    table(rows, out)
    if p.pipeline.params:
        print("", file=out)
        prows = [("PARAMETER", "TYPE", "DEFAULT", "HELP")]
        for prm in p.pipeline.params.values():
            prows.append((prm.name, prm.type_name, repr(prm.default), prm.help or "-"))
        table(prows, out)
    return 0


def cmd_graph(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    from pipekit._plan.render import render

    p = plan_of(_load_valid(args.file))
    statuses: dict[str, str] = {}
    if args.run:
        from pipekit._cli.history import opened_history

        with opened_history(args.file, err) as history:
            statuses = {row.name: str(row.status) for row in history.stages(history.resolve(args.run))}
    render(p, args.format, out, statuses)
    return 0


def _decisions(run: Any, err: IO[str], *, preflight: bool = False) -> list[Any]:
    """What the run would do with each stage, decided as the run decides (:mod:`pipekit._run.planview`);
    ``preflight``: first the run's own checks (secrets, images)."""
    from pipekit._run.planview import plan_decisions

    return plan_decisions(run, lambda message: print_error(err, f"warning: {message}"), preflight=preflight)


_MARKS = {
    "skip": "skipped",
    "cached": "cached",
    "restored": "restored",
    "run": "runs",
    "maybe-cached": "cached or runs",
    "registry-cached": "registry hit",
    "fail": "fails",
}


def _print_plan(decisions: list[Any], out: IO[str], log_format: str, head: str = "dry run") -> None:
    if log_format == "json":
        log = make_logger("json", file=out)
        for i, d in enumerate(decisions, 1):
            fields = {"skip": d.why} if d.decision == "skip" else {}
            extra = {k: v for k, v in d.as_dict().items() if k in ("decision", "why", "changed")}
            log.info("stage planned", stage=d.stage, position=i, image=d.image, needs=list(d.needs), **extra, **fields)
        return
    for i, d in enumerate(decisions, 1):
        after = f" after {', '.join(d.needs)}" if d.needs else ""
        note = f"  [{_MARKS[d.decision]}: {d.why}]" if d.why else ""
        print(f"{i:>3}. {d.stage} ({d.image}){after}{note}", file=out)
    count = {k: sum(1 for d in decisions if d.decision == k) for k in _MARKS}
    more = "".join(
        f", {count[k]} {label}"
        for k, label in (
            ("cached", "from the stage cache"),
            ("restored", "restored"),
            ("registry-cached", "from the registry cache"),
            ("maybe-cached", "cached or run, decided as the run goes"),
            ("fail", "fail before anything starts"),
        )
        if count[k]
    )
    print(f"{head}: {count['run']} of {len(decisions)} stages would run{more}, nothing started", file=out)


def _shared(args: SimpleNamespace, err: IO[str]) -> dict[str, Any]:
    """The request's fields that `run`, `run --dry-run` and `plan` take alike: what decides
    which stages run (params, branch, changed files, image map, --resume, the cache)."""
    return dict(
        pipeline=args.file,
        targets=args.stages,
        params=parse_param_args(args.param),
        secrets_file=_secrets_file(args, err),
        branch=args.branch,
        changed_base=args.changed_base,
        image_map=_image_map(args.image_map),
        resume=args.resume,
        use_cache=not getattr(args, "no_cache", False),
        check_images=not args.no_image_check,
        cache_registry=args.cache_registry,
        cache_mode=args.cache_mode,
    )


def cmd_plan(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    run = setup(RunRequest(**_shared(args, err)))
    if run.errors:
        for e in run.errors:
            print_error(err, f"{type(e).__name__}: {e}")
        return 2
    decisions = _decisions(run, err)
    _print_plan(decisions, out, "json" if args.format == "json" else "console", head="plan")
    return 1 if any(d.decision == "fail" for d in decisions) else 0  # the run's exit code: a stage fails


def _request(args: SimpleNamespace, out: IO[str], err: IO[str]) -> RunRequest:
    return RunRequest(
        **_shared(args, err),
        jobs=args.jobs,
        fail_fast=args.fail_fast,
        timeout=args.timeout,
        workspace_mode=args.workspace,
        backend=args.backend,
        registry=args.registry,
        record=True,
        log_format=args.log_format,
        log_file=out,
        verbose=args.verbose,
        ci=args.ci or detect_ci(os.environ),
        junit=args.junit,
        report=args.report,
        progress=args.progress,
        keep_failed=args.keep_failed,
        argv=args.argv,
        warn=lambda message: print_error(err, f"warning: {message}"),
        approve=tuple(args.approve),
        approval_params=parse_param_args(args.approval_param),
    )


def _prompter(request: RunRequest, out: IO[str], view: Callable[[], Any]) -> Any:
    """On a terminal (not in a CI, console output), the question asked at an undecided gate;
    ``view()``: the run's live view, when it has one (the question is printed through it)."""
    import sys

    try:
        terminal = sys.stdin.isatty() and out.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if not terminal or request.ci != "none" or request.log_format != "console":
        return None
    from pipekit._console.prompt import TerminalPrompt
    from pipekit._history.approvals import may_decide
    from pipekit._run.gates import current_user

    def write(text: str) -> None:
        live = view()
        if live is not None:
            live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=out, flush=True)

    return TerminalPrompt(sys.stdin.fileno(), write, current_user(), may_decide)


def cmd_run(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    if getattr(args, "watch", False):
        return _cmd_watch(args, out, err)
    request = _request(args, out, err)
    made: list[Any] = []  # the run, once set up: its live view prints the question
    prompter = _prompter(request, out, lambda: made[0].view if made else None)
    run = setup(attrs.evolve(request, prompter=prompter))
    made.append(run)
    if run.errors:
        for e in run.errors:
            print_error(err, f"{type(e).__name__}: {e}")
        print_error(err, "nothing was run")
        return 2
    if args.dry_run:
        decisions = _decisions(run, err, preflight=True)
        _print_plan(decisions, out, args.log_format)
        return 1 if any(d.decision == "fail" for d in decisions) else 0
    with _signals_raise():
        collector_on()  # start-up is over (the pipeline is loaded and planned)
        result = run_setup(run)
    for name, r in result.stages.items():
        if r.status == "awaiting_approval":
            print_error(
                err, f"'{name}' awaits approval: pipekit approve {result.run_id} {name}, then pipekit run --resume"
            )
    if run.request.ci in (None, "none"):  # (a CI's checkout is new each time: it would say it every run)
        _hint_cache(run.pipeline, err)
    retain(args, err)
    return result.exit_code


def _cmd_watch(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    """``run --watch``: a run per change (:mod:`pipekit._cli.watch`)."""
    from pipekit._cli.history import workspace_of
    from pipekit._cli.watch import watch

    for flag, given in (("--dry-run", args.dry_run), ("--resume", args.resume is not None)):
        if given:
            raise UsageError(f"--watch runs the pipeline on every change; it does not go with {flag}")
    given = os.path.join(args.file, "pipeline.py") if os.path.isdir(args.file) else args.file
    if not os.path.isfile(given):
        raise UsageError(f"No pipeline file at {os.path.abspath(given)}: nothing to watch (-f PATH names one)")

    def one_run() -> Any:
        try:
            run = setup(_request(args, out, err))
        except PipelineError as problem:  # (pipeline.py does not import while being edited): wait for the fix
            print_error(err, f"{type(problem).__name__}: {problem}")
            return None
        if run.errors:
            for e in run.errors:
                print_error(err, f"{type(e).__name__}: {e}")
            return None
        result = run_setup(run)
        if run.request.ci in (None, "none"):
            _hint_cache(run.pipeline, err)
        return result

    with _signals_raise():
        collector_on()
        return watch(one_run, workspace_of(args.file), err)


CACHE_HINT = (
    'hint: no stage has cache=, so every run runs every stage; cache=pk.inputs("src/**") on a stage reuses its'
    " result while its inputs are unchanged (docs/history.md#stage-caching)"
)


def _hint_cache(pipeline: Pipeline, err: IO[str]) -> None:
    """Once per project (remembered in ``.pipekit/hints``), after a run of a pipeline that caches nothing."""
    from pipekit._core.safefile import write_file

    if not pipeline.path or any(s.cache is not None for s in pipeline.stages):
        return
    workspace = os.path.dirname(pipeline.path)
    shown = os.path.join(workspace, ".pipekit", "hints")
    try:
        with open(shown, encoding="utf-8") as f:
            if "cache" in f.read().split():
                return
    except OSError:
        pass
    if not os.path.isdir(os.path.join(workspace, ".pipekit")):
        return  # (no history was written: nothing to remember it in)
    try:
        write_file(shown, "cache\n", root=workspace)
    except OSError:
        return  # said next time, rather than every time without saying why
    print_error(err, CACHE_HINT)


RUN_EPILOG = """\b
Examples:
  pipekit run                                 # every stage of ./pipeline.py
  pipekit run package                         # package and everything it needs
  pipekit run -f ci/ -j 8 --fail-fast --log-format json
  pipekit run --param registry=localhost:5000 --secrets-file .env.ci
  pipekit run --dry-run                       # what would run, and what is skipped and why
  pipekit run --watch lint unit               # again on every saved change, until Ctrl-C
  pipekit run --junit reports/pipekit.xml     # for the CI's test view (JUnit XML)
  DOCKER_HOST=ssh://ci@build-box pipekit run  # the workspace is copied to the remote engine

\b
Every option can also be set with PIPEKIT_<OPTION> (PIPEKIT_JOBS=8, PIPEKIT_LOG_FORMAT=json),
and defaults for the project under [tool.pipekit] in pyproject.toml (see docs/cli.md).
"""


@click.command(context_settings=CONTEXT, epilog=RUN_EPILOG)
@click.argument("stages", nargs=-1, metavar="[STAGE]...")
@file_option
@click.option("-j", "--jobs", type=int, default=4, show_default=True, envvar="PIPEKIT_JOBS", help="Stages run at once.")
@click.option(
    "--fail-fast", is_flag=True, envvar="PIPEKIT_FAIL_FAST", help="When a stage fails, stop the running ones."
)
@click.option("--dry-run", is_flag=True, help="Print the plan and start nothing.")
@click.option(
    "--watch",
    is_flag=True,
    help="Run again on every change in the pipeline's folder (not .pipekit/, .git/ or what the run writes)"
    " until Ctrl-C; the stage cache decides what runs.",
)
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
@resume_option("Run again only what failed or did not run in RUN (default: the last run).")
@click.option("--no-cache", is_flag=True, envvar="PIPEKIT_NO_CACHE", help="Run every stage, ignoring cached results.")
@CACHE_REGISTRY_OPTION
@CACHE_MODE_OPTION
@click.option(
    "--keep-runs",
    type=click.IntRange(0),
    metavar="N",
    envvar="PIPEKIT_KEEP_RUNS",
    help="After the run, prune the history to the N most recent runs (keep-runs in [tool.pipekit]).",
)
@click.option(
    "--keep-days",
    type=click.FloatRange(min=0, min_open=True),
    metavar="DAYS",
    envvar="PIPEKIT_KEEP_DAYS",
    help="After the run, prune the runs started more than DAYS days ago (keep-days).",
)
@click.option(
    "--workspace",
    type=click.Choice(("auto", "mount", "copy")),
    default=None,
    envvar="PIPEKIT_WORKSPACE",
    help="How container stages get the pipeline's folder (auto: mount for a local engine, copy for a remote one).",
)
@backend_option
@click.option(
    "--registry",
    metavar="HOST[:PORT]",
    envvar="PIPEKIT_REGISTRY",
    help="Where images the run builds travel to the swarm's nodes (login: PIPEKIT_REGISTRY_USER/_PASSWORD).",
)
@click.option(
    "--approve",
    multiple=True,
    metavar="STAGE",
    envvar="PIPEKIT_APPROVE",
    help="Approve STAGE's gate (pk.Approval) before the run, as this user (repeatable; PIPEKIT_APPROVE=a b).",
)
@click.option(
    "--approval-param",
    multiple=True,
    metavar="STAGE.NAME=VALUE",
    help="A value an --approve'd gate asks for (repeatable).",
)
@PARAM_OPTION
@SECRETS_FILE_OPTION
@IMAGE_MAP_OPTION
@NO_IMAGE_CHECK_OPTION
def run(**values: Any) -> None:
    """Run the pipeline, or the named stages and everything they need."""
    dispatch(cmd_run, **values)


@click.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit plan\n  pipekit plan deploy --branch main -p deploy=yes\n"
    "  pipekit plan --format json",
)
@click.argument("stages", nargs=-1, metavar="[STAGE]...")
@file_option
@click.option("--format", type=click.Choice(("text", "json")), default="text", show_default=True)
@PARAM_OPTION
@SECRETS_FILE_OPTION
@IMAGE_MAP_OPTION
@NO_IMAGE_CHECK_OPTION
@BRANCH_OPTION
@CHANGED_BASE_OPTION
@resume_option("Plan the resumed run: what RUN's results restore (default: the last run).")
@CACHE_REGISTRY_OPTION
@CACHE_MODE_OPTION
def plan(**values: Any) -> None:
    """What a run would do with each stage, and why: run, skip, or take from the stage cache (and,
    when the cache misses, what changed since the stage's last cached run)."""
    dispatch(cmd_plan, **values)


@click.command(name="list", context_settings=CONTEXT)
@file_option
def list_(**values: Any) -> None:
    """List the stages, their images and dependencies, and the parameters."""
    dispatch(cmd_list, **values)


@click.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit graph --format svg --run last > graph.svg\n"
    "  pipekit graph --format dot | dot -Tpng > graph.png",
)
@file_option
@click.option("--format", type=click.Choice(("text", "dot", "mermaid", "svg")), default="text", show_default=True)
@click.option("--run", metavar="RUN", help="Show the statuses of a recorded run (an id, a prefix, or 'last').")
def graph(**values: Any) -> None:
    """Print the stage graph."""
    dispatch(cmd_graph, **values)


@click.command(context_settings=CONTEXT)
@file_option
@PARAM_OPTION
@SECRETS_FILE_OPTION
@IMAGE_MAP_OPTION
@NO_IMAGE_CHECK_OPTION
def validate(**values: Any) -> None:
    """Check the pipeline and report every problem: its definition, the secrets its stages declare,
    and the images they run in (present, or known to their registry; nothing is pulled)."""
    dispatch(cmd_validate, **values)


def register(group: click.Group) -> None:
    for command in (run, plan, list_, graph, validate):
        group.add_command(command)

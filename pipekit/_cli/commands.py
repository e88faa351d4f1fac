"""The command bodies behind ``pipekit run | list | graph | validate``: plain functions of the
parsed arguments and the output streams (``_cli/main.py`` parses; these do the work)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import IO, Any

from pipekit._ci.output import detect as detect_ci
from pipekit._cli.history import print_error, table
from pipekit._console.log import make_logger
from pipekit._core.util import collector_on
from pipekit._dsl.loader import load
from pipekit._dsl.params import parse_param_args
from pipekit._dsl.stage import Pipeline
from pipekit._plan.graph import plan
from pipekit._run.runner import run_setup
from pipekit._run.session import RunRequest, setup
from pipekit.exceptions import Interrupted, UsageError

__all__ = ["IMAGE_MAP_ENV", "cmd_graph", "cmd_list", "cmd_run", "cmd_validate"]

IMAGE_MAP_ENV = "PIPEKIT_IMAGE_MAP"


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


def cmd_list(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    p = plan(_load_valid(args.file))
    rows = [("STAGE", "IMAGE", "NEEDS", "DEFINED AT")]
    for name in p.order:
        s = p.stage(name)
        rows.append((name, p.pipeline.describe_image(s), ", ".join(p.upstream(name)) or "-", s.location))
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

    p = plan(_load_valid(args.file))
    statuses: dict[str, str] = {}
    if args.run:
        from pipekit._cli.history import _history, _workspace_of

        history = _history(_workspace_of(args), err)
        try:
            statuses = {row.name: str(row.status) for row in history.stages(history.resolve(args.run))}
        finally:
            history.close()
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
    )


def cmd_run(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    run = setup(_request(args, out, err))
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
    return result.exit_code

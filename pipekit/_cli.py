"""The command line: ``pipekit run | list | graph | validate``.

Exit codes: 0 success, 1 a stage failed, 2 the pipeline or the command line is wrong,
3 the backend (Docker engine) is not usable, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
Only this module turns exceptions into exit codes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from pipekit import __version__
from pipekit._cli_history import HISTORY_COMMANDS, print_error, table
from pipekit._graph import find_errors, plan
from pipekit._loader import load
from pipekit._logging import LOG_FORMATS, make_logger
from pipekit._params import parse_param_args
from pipekit._resolve import ResolvedPlan
from pipekit._session import RunRequest, setup
from pipekit._stage import Pipeline
from pipekit.exceptions import Interrupted, PipekitError, PipelineError, UsageError

__all__ = ["main"]

IMAGE_MAP_ENV = "PIPEKIT_IMAGE_MAP"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 itself; keep our own wording
        raise UsageError(f"{message} (see `pipekit {self.prog.split()[-1]} --help`)")


def _with_file(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "-f",
        "--file",
        default="pipeline.py",
        metavar="PATH",
        help="the pipeline file, or a folder holding pipeline.py (default: ./pipeline.py)",
    )
    return p


def _add_run(sub: Any) -> None:
    run = _with_file(sub.add_parser("run", help="run the pipeline (or the named stages and what they need)"))
    run.add_argument("stages", nargs="*", metavar="STAGE", help="stages to run, with everything upstream")
    run.add_argument("-j", "--jobs", type=int, default=4, metavar="N", help="stages run at once (default 4)")
    run.add_argument("--fail-fast", action="store_true", help="when a stage fails, stop the running ones too")
    run.add_argument("--dry-run", action="store_true", help="print the plan and start nothing")
    run.add_argument("--log-format", choices=LOG_FORMATS, default="console", help="console (default) or json")
    run.add_argument("-v", "--verbose", action="store_true", help="also log each command before it runs")
    run.add_argument("--branch", help="the branch for pk.branch conditions (default: the CI's variables, else git)")
    run.add_argument(
        "--changed-base",
        metavar="REF",
        help="the git ref pk.changed compares with (default: the merge base with the default branch)",
    )
    run.add_argument("--timeout", metavar="DURATION", help="fail the run after this long (seconds, '30m', '1h')")
    run.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN",
        help="run again only what failed or did not run in RUN (default: the last run of this pipeline)",
    )
    run.add_argument("--no-cache", action="store_true", help="run every stage, ignoring cached results")
    run.add_argument(
        "--workspace",
        choices=("auto", "mount", "copy"),
        default=None,
        help="how container stages get the pipeline's folder: a bind mount, a copy in and out, or auto"
        " (mount for a local engine, copy for DOCKER_HOST=tcp:// or ssh://; also $PIPEKIT_WORKSPACE)",
    )

    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a parameter declared with pk.param (repeatable)",
    )
    run.add_argument(
        "--secrets-file", metavar="PATH", help="a dotenv file of secrets (KEY=VALUE); the environment is read too"
    )
    run.add_argument(
        "--image-map",
        action="append",
        default=[],
        metavar="IMAGE=LOCAL",
        help=f"run stages that ask for IMAGE in LOCAL instead (repeatable; also ${IMAGE_MAP_ENV}=A=B,C=D)",
    )


def _add_history(sub: Any) -> None:
    runs = _with_file(sub.add_parser("runs", help="list the recent runs of this workspace"))
    runs.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    show = _with_file(sub.add_parser("show", help="show a run: stages, durations, errors, artifacts, tests"))
    show.add_argument("run", metavar="RUN", help="a run id, a unique prefix of one, or 'last'")
    logs = _with_file(sub.add_parser("logs", help="print a run's logs (one stage's, or all)"))
    logs.add_argument("run", metavar="RUN", help="a run id, a unique prefix of one, or 'last'")
    logs.add_argument("stage", nargs="?", metavar="STAGE")
    logs.add_argument("--follow", action="store_true", help="keep printing until the run ends")
    arts = _with_file(sub.add_parser("artifacts", help="copy a run's archived files out"))
    arts.add_argument("run", metavar="RUN", help="a run id, a unique prefix of one, or 'last'")
    arts.add_argument("--dest", metavar="DIR", help="where to put them (default ./artifacts-RUN)")
    cache = _with_file(sub.add_parser("cache", help="list or prune cached stage results and cache volumes"))
    cache.add_argument("action", choices=("list", "prune"))
    cache.add_argument("--results", action="store_true", help="prune only the cached stage results")
    cache.add_argument("--volumes", action="store_true", help="prune only the cache volumes (cache_dirs=)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipekit", description="Run CI/CD pipelines written in Python.")
    parser.add_argument("--version", action="version", version=f"pipekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_run(sub)
    _add_history(sub)
    _with_file(sub.add_parser("list", help="list the stages, their images and dependencies"))
    graph = _with_file(sub.add_parser("graph", help="print the stage graph"))
    graph.add_argument("--format", choices=("text", "dot", "mermaid"), default="text")
    _with_file(sub.add_parser("validate", help="check the pipeline and report every problem"))
    return parser


def _image_map(values: Sequence[str]) -> dict[str, str]:
    items = [v for v in os.environ.get(IMAGE_MAP_ENV, "").split(",") if v.strip()]
    items += list(values)
    mapping = {}
    for item in items:
        src, sep, dst = item.strip().partition("=")
        if not sep or not src or not dst:
            raise UsageError(f"--image-map takes IMAGE=LOCAL_IMAGE, got {item!r}")
        mapping[src] = dst
    return mapping


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


def cmd_validate(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    pipeline = _load_valid(args.file)
    errors = find_errors(pipeline)
    for e in errors:
        print_error(err, f"{type(e).__name__}: {e}")
    if errors:
        print_error(err, f"{len(errors)} problem(s) in {pipeline.path}")
        return 2
    print(f"{pipeline.path}: {len(pipeline.stages)} stages, valid", file=out)
    return 0


def cmd_list(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
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


def cmd_graph(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    p = plan(_load_valid(args.file))
    edges = [(u, v) for v in p.order for u in p.upstream(v)]
    if args.format == "dot":
        print(f'digraph "{p.pipeline.name}" {{', file=out)
        for n in p.order:
            print(f'  "{n}";', file=out)
        for u, v in edges:
            print(f'  "{u}" -> "{v}";', file=out)
        print("}", file=out)
    elif args.format == "mermaid":
        ids = {n: f"s{i}" for i, n in enumerate(p.order)}
        print("graph LR", file=out)
        for n in p.order:
            print(f'  {ids[n]}["{n}"]', file=out)
        for u, v in edges:
            print(f"  {ids[u]} --> {ids[v]}", file=out)
    else:
        for n in p.order:
            ups = p.upstream(n)
            print(f"{n} <- {', '.join(ups)}" if ups else n, file=out)
    return 0


def _print_plan(resolved: ResolvedPlan, out: IO[str], log_format: str) -> None:
    log = make_logger(log_format, file=out) if log_format == "json" else None
    skipped = 0
    for i, name in enumerate(resolved.order, 1):
        r = resolved[name]
        needs = list(resolved.plan.upstream(name))
        skipped += r.skip is not None
        if log is not None:
            fields = {"skip": r.skip} if r.skip else {}
            log.info("stage planned", stage=name, position=i, image=r.describe_image(), needs=needs, **fields)
        else:
            after = f" after {', '.join(needs)}" if needs else ""
            skip = f"  [skipped: {r.skip}]" if r.skip else ""
            print(f"{i:>3}. {name} ({r.describe_image()}){after}{skip}", file=out)
    if log is None:
        total = len(resolved.order)
        print(f"dry run: {total - skipped} of {total} stages would run, nothing started", file=out)


def _request(args: argparse.Namespace, out: IO[str], err: IO[str]) -> RunRequest:
    return RunRequest(
        pipeline=args.file,
        targets=args.stages,
        jobs=args.jobs,
        fail_fast=args.fail_fast,
        timeout=args.timeout,
        params=parse_param_args(args.param),
        secrets_file=args.secrets_file,
        branch=args.branch,
        changed_base=args.changed_base,
        image_map=_image_map(args.image_map),
        workspace_mode=args.workspace,
        record=True,
        resume=args.resume,
        use_cache=not args.no_cache,
        log_format=args.log_format,
        log_file=out,
        verbose=args.verbose,
        argv=args.argv,
        warn=lambda message: print_error(err, f"warning: {message}"),
    )


def cmd_run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    run = setup(_request(args, out, err))
    if run.errors:
        for e in run.errors:
            print_error(err, f"{type(e).__name__}: {e}")
        print_error(err, "nothing was run")
        return 2
    if args.dry_run:
        _print_plan(run.dry_run(), out, args.log_format)
        return 0
    with _signals_raise():
        result = run.execute()
    return result.exit_code


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "graph": cmd_graph,
    "validate": cmd_validate,
    **HISTORY_COMMANDS,
}


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run the command line in-process and return its exit code (never raises for user errors)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = _parser().parse_args(argv)
        args.argv = argv
        if not args.command:
            _parser().print_help(out)
            return 2
        return COMMANDS[args.command](args, out, err)
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
    code = main()
    if any(t.name.startswith("pipekit-stage") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # a stage stuck in Python code must not keep the process alive
    raise SystemExit(code)

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
from pathlib import Path
from typing import IO, Any

from pipekit import __version__
from pipekit._conditions import RunInfo
from pipekit._control import parse_duration
from pipekit._executor import Executor, new_run_id
from pipekit._graph import Plan, find_errors, plan
from pipekit._history import History, HistoryRecorder, redact_argv
from pipekit._loader import load
from pipekit._logging import LOG_FORMATS, make_logger
from pipekit._params import parse_param_args, resolve_params
from pipekit._secrets import SecretStore
from pipekit._stage import Pipeline
from pipekit.exceptions import Interrupted, PipekitError, PipelineError, StageFailed, UsageError

__all__ = ["main"]

IMAGE_MAP_ENV = "PIPEKIT_IMAGE_MAP"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 itself; keep our own wording
        raise UsageError(f"{message} (see `pipekit {self.prog.split()[-1]} --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipekit", description="Run CI/CD pipelines written in Python.")
    parser.add_argument("--version", action="version", version=f"pipekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def with_file(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-f",
            "--file",
            default="pipeline.py",
            metavar="PATH",
            help="the pipeline file, or a folder holding pipeline.py (default: ./pipeline.py)",
        )
        return p

    run = with_file(sub.add_parser("run", help="run the pipeline (or the named stages and what they need)"))
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

    runs = with_file(sub.add_parser("runs", help="list the recent runs of this workspace"))
    runs.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    show = with_file(sub.add_parser("show", help="show a run: stages, durations, errors, artifacts, tests"))
    show.add_argument("run", metavar="RUN", help="a run id, a unique prefix of one, or 'last'")
    logs = with_file(sub.add_parser("logs", help="print a run's logs (one stage's, or all)"))
    logs.add_argument("run", metavar="RUN", help="a run id, a unique prefix of one, or 'last'")
    logs.add_argument("stage", nargs="?", metavar="STAGE")
    logs.add_argument("--follow", action="store_true", help="keep printing until the run ends")
    arts = with_file(sub.add_parser("artifacts", help="copy a run's archived files out"))
    arts.add_argument("run", metavar="RUN", help="a run id, a unique prefix of one, or 'last'")
    arts.add_argument("--dest", metavar="DIR", help="where to put them (default ./artifacts-RUN)")
    cache = with_file(sub.add_parser("cache", help="list or prune cached stage results and cache volumes"))
    cache.add_argument("action", choices=("list", "prune"))
    cache.add_argument("--results", action="store_true", help="prune only the cached stage results")
    cache.add_argument("--volumes", action="store_true", help="prune only the cache volumes (cache_dirs=)")
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
    with_file(sub.add_parser("list", help="list the stages, their images and dependencies"))
    graph = with_file(sub.add_parser("graph", help="print the stage graph"))
    graph.add_argument("--format", choices=("text", "dot", "mermaid"), default="text")
    with_file(sub.add_parser("validate", help="check the pipeline and report every problem"))
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


def _print_error(err: IO[str], message: str) -> None:
    for line in message.rstrip().splitlines() or [""]:
        print(f"pipekit: {line}", file=err)


def _load_valid(path: str) -> Pipeline:
    return load(path)


def cmd_validate(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    pipeline = _load_valid(args.file)
    errors = find_errors(pipeline)
    for e in errors:
        _print_error(err, f"{type(e).__name__}: {e}")
    if errors:
        _print_error(err, f"{len(errors)} problem(s) in {pipeline.path}")
        return 2
    print(f"{pipeline.path}: {len(pipeline.stages)} stages, valid", file=out)
    return 0


def _table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(widths[i]) for i, c in enumerate(r[:-1])), r[-1]]).rstrip(), file=out)


def cmd_list(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    p = plan(_load_valid(args.file))
    rows = [("STAGE", "IMAGE", "NEEDS", "DEFINED AT")]
    for name in p.order:
        s = p.stage(name)
        rows.append((name, p.pipeline.describe_image(s), ", ".join(p.upstream(name)) or "-", s.location))
    _table(rows, out)
    if p.pipeline.params:
        print("", file=out)
        prows = [("PARAMETER", "TYPE", "DEFAULT", "HELP")]
        for prm in p.pipeline.params.values():
            prows.append((prm.name, prm.type_name, repr(prm.default), prm.help or "-"))
        _table(prows, out)
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


def _print_plan(p: Plan, out: IO[str], log_format: str, image_map: dict[str, str], skip: dict[str, str]) -> None:
    log = make_logger(log_format, file=out) if log_format == "json" else None
    for i, name in enumerate(p.order, 1):
        s = p.stage(name)
        image = p.pipeline.image_for(s)
        shown = image_map.get(image, image) if image else p.pipeline.describe_image(s)
        needs = list(p.upstream(name))
        if log is not None:
            fields = {"skip": skip[name]} if name in skip else {}
            log.info("stage planned", stage=name, position=i, image=shown, needs=needs, **fields)
        else:
            after = f" after {', '.join(needs)}" if needs else ""
            skipped = f"  [skipped: {skip[name]}]" if name in skip else ""
            print(f"{i:>3}. {name} ({shown}){after}{skipped}", file=out)
    if log is None:
        runs = len(p.order) - len(skip)
        print(f"dry run: {runs} of {len(p.order)} stages would run, nothing started", file=out)


def cmd_run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, got {args.jobs}")
    image_map = _image_map(args.image_map)
    p = _load_valid(args.file)
    errors = find_errors(p)
    if errors:
        for e in errors:
            _print_error(err, f"{type(e).__name__}: {e}")
        _print_error(err, "nothing was run")
        return 2
    params = resolve_params(p.params.values(), parse_param_args(args.param))
    secrets = SecretStore.from_file(args.secrets_file)
    try:
        run_timeout = parse_duration(args.timeout, "--timeout")
    except PipelineError as e:
        raise UsageError(e.message) from None
    the_plan = plan(p, args.stages, validated=True)
    workspace = Path(p.path).parent if p.path else Path.cwd()
    info = RunInfo(workspace=workspace, branch=args.branch, params=params, changed_base=args.changed_base)
    run_id = new_run_id()
    history: History | None = None
    extra: dict[str, Any] = {}

    def executor_on(backend: Any) -> Executor:
        return Executor(
            backend,
            jobs=args.jobs,
            fail_fast=args.fail_fast,
            log_format=args.log_format,
            log_file=out,
            log_level=10 if args.verbose else 20,
            image_map=image_map,
            params=params,
            secrets=secrets,
            run_info=info,
            run_timeout=run_timeout,
            run_id=run_id,
            **extra,
        )

    if args.dry_run:
        try:
            skip = executor_on(_NoBackend()).decide(the_plan)
        except StageFailed as e:
            raise UsageError(e.message) from None
        _print_plan(the_plan, out, args.log_format, image_map, skip)
        return 0
    from pipekit._docker import DockerBackend

    backend = DockerBackend()
    backend.check()
    history = _history(workspace, err, backend)
    restore: dict[str, tuple[str, str]] = {}
    resumed_from = None
    if args.resume is not None:
        resumed_from = history.resolve(args.resume) if args.resume else history.last_run_of(p.path or "")
        if resumed_from is None:
            raise UsageError(f"--resume: no earlier run of {p.path} is recorded in {history.dir}")
        restore = {
            row.name: (resumed_from, row.output)
            for row in history.stages(resumed_from)
            if row.status in ("succeeded", "cached", "restored")
            and row.output is not None
            and row.name in the_plan.order
        }
    recorder = HistoryRecorder(
        history,
        argv=redact_argv(["pipekit", *args.argv], secrets.masker.mask),
        branch=info.branch,
        resumed_from=resumed_from,
    )
    extra.update(
        observers=[recorder],
        records=recorder,
        log_processors=[history.log_processor(run_id)],
        cache=None if args.no_cache else history.cache_get,
        restore=restore,
    )
    executor = executor_on(backend)
    try:
        with _signals_raise():
            result = executor.run(the_plan)
    finally:
        history.close()
    return result.exit_code


def _history(workspace: Path, err: IO[str], backend: Any = None) -> History:
    """The workspace's run history, with runs whose process died marked interrupted (and cleaned up)."""
    history = History(workspace, warn=lambda message: _print_error(err, f"warning: {message}"))
    if backend is None:
        from pipekit._docker import DockerBackend
        from pipekit.exceptions import BackendError

        candidate = DockerBackend()
        try:
            candidate.check()
            backend = candidate
        except BackendError:
            backend = None
    history.reap(cleanup=backend.cleanup if backend is not None else None)
    return history


def _workspace_of(args: argparse.Namespace) -> Path:
    path = Path(args.file)
    folder = path if path.is_dir() else path.parent
    return folder.resolve()


def _when(ts: float | None) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(ts)) if ts else "-"


def _secs(value: float | None) -> str:
    return f"{value:.2f}s" if value is not None else "-"


def cmd_runs(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    history = _history(_workspace_of(args), err)
    rows: list[tuple[str, ...]] = [("RUN", "PIPELINE", "BRANCH", "STATUS", "STARTED", "DURATION")]
    for r in history.runs(args.limit):
        rows.append((r.id, r.pipeline, r.branch or "-", r.status, _when(r.started), _secs(r.duration_s)))
    history.close()
    if len(rows) == 1:
        print("no runs recorded yet", file=out)
        return 0
    _table(rows, out)
    return 0


def cmd_show(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    history = _history(_workspace_of(args), err)
    try:
        run = history.run(history.resolve(args.run))
        print(f"run {run.id}: {run.status}", file=out)
        print(f"  pipeline  {run.pipeline} ({run.path})", file=out)
        print(f"  branch    {run.branch or '-'} at {run.git_commit or '-'}", file=out)
        print(f"  started   {_when(run.started)} by {run.user}@{run.host}: {run.argv}", file=out)
        print(f"  duration  {_secs(run.duration_s)}", file=out)
        if run.resumed_from:
            print(f"  resumed   from run {run.resumed_from}", file=out)
        print("", file=out)
        rows: list[tuple[str, ...]] = [("STAGE", "STATUS", "ATTEMPTS", "DURATION", "EXIT", "NOTE")]
        stages = history.stages(run.id)
        for st in stages:
            note = st.reason or ("cache hit" if st.cache_hit else "")
            rows.append(
                (
                    st.name,
                    st.status,
                    str(st.attempts or "-"),
                    _secs(st.duration_s),
                    "-" if st.exit_code is None else str(st.exit_code),
                    note or "-",
                )
            )
        _table(rows, out)
        for st in stages:
            if st.error:
                print(f"\nerror in {st.name}:", file=out)
                for line in st.error.splitlines():
                    print(f"  {line}", file=out)
        arts = history.artifacts(run.id)
        if arts:
            print("\nartifacts:", file=out)
            for a in arts:
                print(f"  {a['stage']}: {a['path']} ({a['size']} bytes, sha256 {a['sha256'][:12]})", file=out)
        for t in history.tests(run.id):
            passed = t["tests"] - t["failures"] - t["errors"] - t["skipped"]
            print(
                f"\ntests in {t['stage']}: {t['tests']} tests, {passed} passed, {t['failures']} failed,"
                f" {t['errors']} errors, {t['skipped']} skipped",
                file=out,
            )
            for f in t["failed"]:
                print(f"  {f['kind']}: {f['name']}: {f['message']}", file=out)
    finally:
        history.close()
    return 0


def cmd_logs(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    import time as _time

    history = _history(_workspace_of(args), err)
    try:
        run_id = history.resolve(args.run)
        names = [args.stage] if args.stage else [st.name for st in history.stages(run_id)]
        if args.stage and args.stage not in {st.name for st in history.stages(run_id)}:
            raise UsageError(f"Run {run_id} has no stage '{args.stage}'")
        offsets = {n: 0 for n in names}
        while True:
            for name in names:
                path = history.log_path(run_id, name)
                if not path.exists():
                    continue
                with open(path, encoding="utf-8") as f:
                    f.seek(offsets[name])
                    chunk = f.read()
                    offsets[name] = f.tell()
                for line in chunk.splitlines():
                    print(f"{name} | {line}" if len(names) > 1 else line, file=out)
            out.flush()
            if not args.follow or history.run(run_id).status != "running":
                break
            _time.sleep(0.3)
            if not args.stage:
                for st in history.stages(run_id):
                    if st.name not in offsets:
                        names.append(st.name)
                        offsets[st.name] = 0
    finally:
        history.close()
    return 0


def cmd_artifacts(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    import shutil

    history = _history(_workspace_of(args), err)
    try:
        run_id = history.resolve(args.run)
        arts = history.artifacts(run_id)
        if not arts:
            print(f"run {run_id} archived no files", file=out)
            return 0
        dest = Path(args.dest or f"artifacts-{run_id}").resolve()
        for a in arts:
            target = (dest / a["path"].lstrip("/")).resolve()
            if not target.is_relative_to(dest):
                raise UsageError(f"artifact path {a['path']} would leave {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(history.artifact_file(a["sha256"]), target)
            print(f"{target}", file=out)
    finally:
        history.close()
    return 0


def cmd_cache(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from pipekit._docker import DockerBackend

    history = _history(_workspace_of(args), err)
    both = not args.results and not args.volumes
    try:
        results = history.cache_entries()
        backend = DockerBackend()
        try:
            backend.check()
            volumes = backend.cache_volumes()
        except PipekitError:
            backend, volumes = None, []  # type: ignore[assignment]
        if args.action == "list":
            print(f"{len(results)} cached stage results in {history.db_path}", file=out)
            for r in results:
                print(f"  {r['stage']}  from run {r['run_id']}  {_when(r['created'])}", file=out)
            print(f"{len(volumes)} cache volumes", file=out)
            for v in volumes:
                print(f"  {v['name']}  stage {v['stage']}  {v['created']}", file=out)
            return 0
        if both or args.results:
            print(f"removed {history.prune_cache()} cached stage results", file=out)
        if (both or args.volumes) and backend is not None:
            removed = sum(backend.remove_volume(v["name"]) for v in volumes)
            print(f"removed {removed} cache volumes", file=out)
    finally:
        history.close()
    return 0


class _NoBackend:
    """Stands in for a backend where nothing may run (--dry-run)."""

    name = "none"


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "graph": cmd_graph,
    "validate": cmd_validate,
    "runs": cmd_runs,
    "show": cmd_show,
    "logs": cmd_logs,
    "artifacts": cmd_artifacts,
    "cache": cmd_cache,
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
        _print_error(err, f"{e}; stopped every running stage and removed its containers")
        return e.exit_code
    except KeyboardInterrupt:
        _print_error(err, "interrupted; stopped every running stage and removed its containers")
        return 130
    except PipelineError as e:
        _print_error(err, f"{type(e).__name__}: {e}")
        return e.exit_code
    except PipekitError as e:
        _print_error(err, str(e))
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

"""The history commands: ``pipekit runs | show | logs | artifacts | cache``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import click

from pipekit._cli.options import CACHE_REGISTRY_OPTION, SECRETS_FILE_OPTION, backend_option, dispatch, file_option
from pipekit._history.approvals import gate_lines
from pipekit._history.store import History
from pipekit._run.runner import container_backend, open_history
from pipekit.backend import CacheVolume, CacheVolumes, Sweeps
from pipekit.exceptions import PipekitError, UsageError

__all__ = ["CONTEXT", "opened_history", "print_error", "register", "streams", "table", "workspace_of"]

#: the click context settings of every command
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def streams() -> tuple[IO[str], IO[str]]:
    """The output and error streams of the command being run (``main(out=, err=)``'s)."""
    obj = click.get_current_context().obj or {}
    return obj.get("out") or click.get_text_stream("stdout"), obj.get("err") or click.get_text_stream("stderr")


def print_error(err: IO[str], message: str) -> None:
    for line in message.rstrip().splitlines() or [""]:
        print(f"pipekit: {line}", file=err)


def table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(widths[i]) for i, c in enumerate(r[:-1])), r[-1]]).rstrip(), file=out)


def _indented(text: str, first: str, rest: str, out: IO[str]) -> None:
    """A message of one or more lines, its first line after ``first``, every other after ``rest``."""
    for i, line in enumerate(text.rstrip().splitlines() or [""]):
        print(f"{first if i == 0 else rest}{line}", file=out)


@contextlib.contextmanager
def opened_history(file: str | Path, err: IO[str]) -> Iterator[History]:
    """The run history of the workspace of the pipeline ``file`` (never created by a command that only
    reads it), with runs whose process died marked interrupted (and cleaned up); closed after use."""
    warn = lambda message: print_error(err, f"warning: {message}")  # noqa: E731
    history: History = open_history(workspace_of(file), warn=warn, create=False)
    try:
        yield history
    finally:
        history.close()


def workspace_of(file: str | Path) -> Path:
    """The workspace of the pipeline ``file`` (a pipeline.py, or the folder holding one)."""
    path = Path(file)
    folder = path if path.is_dir() else path.parent
    return folder.resolve()


def _when(ts: float | None) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(ts)) if ts else "-"


def _secs(value: float | None) -> str:
    return f"{value:.2f}s" if value is not None else "-"


def cmd_runs(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    rows: list[tuple[str, ...]] = [("RUN", "PIPELINE", "BRANCH", "COMMIT", "STATUS", "STARTED", "DURATION")]
    with opened_history(args.file, err) as history:
        for r in history.runs(args.limit):
            rows.append(
                (r.id, r.pipeline, r.branch or "-", r.commit_text, r.status, _when(r.started), _secs(r.duration_s))
            )
    if len(rows) == 1:
        print("no runs recorded yet", file=out)
        return 0
    kept = _kept_stages() if any(row[4] == "failed" for row in rows[1:]) else {}  # only failures keep any
    if kept:
        rows = [(*row, "KEPT" if i == 0 else ", ".join(kept.get(row[0], [])) or "-") for i, row in enumerate(rows)]
    table(rows, out)
    return 0


def _kept_stages() -> dict[str, list[str]]:
    """Runs whose failed stages' containers are kept (``--keep-failed``), when the engine answers."""
    try:
        backend = container_backend()
        backend.check()
        kept: dict[str, list[str]] = backend.kept()
        return kept
    except Exception:  # no engine: runs lists the history alone
        return {}


def cmd_show(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    with opened_history(args.file, err) as history:
        run = history.run(history.resolve(args.run))
        print(f"run {run.id}: {run.status}", file=out)
        print(f"  pipeline  {run.pipeline} ({run.path})", file=out)
        dirty = " (dirty: uncommitted changes to tracked files)" if run.dirty else ""
        print(f"  branch    {run.branch or '-'} at {run.git_commit or '-'}{dirty}", file=out)
        print(f"  started   {_when(run.started)} by {run.user}@{run.host}: {run.argv}", file=out)
        print(f"  duration  {_secs(run.duration_s)}", file=out)
        if run.resumed_from:
            print(f"  resumed   from run {run.resumed_from}", file=out)
        print("", file=out)
        rows: list[tuple[str, ...]] = [("STAGE", "STATUS", "ATTEMPTS", "DURATION", "EXIT", "NOTE")]
        stages = history.stages(run.id)
        for st in stages:
            note = (st.reason or ("cache hit" if st.cache_hit else "")).strip()
            if "\n" in note:  # the table keeps one line per stage: the rest is shown below it
                note = note.splitlines()[0] + " (more below)"
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
        table(rows, out)
        gates = gate_lines(history, run.id)
        if gates:
            print("\napprovals:", file=out)
            print("\n".join(gates), file=out)
        for st in stages:
            if st.reason and "\n" in st.reason.strip():
                print(f"\nnote on {st.name}:", file=out)
                _indented(st.reason, "  ", "  ", out)
            if st.error:
                print(f"\nerror in {st.name}:", file=out)
                _indented(st.error, "  ", "  ", out)
        arts = history.artifacts(run.id)
        if arts:
            print("\nartifacts:", file=out)
            for a in arts:
                print(f"  {a.stage}: {a.path} ({a.size} bytes, sha256 {a.sha256[:12]})", file=out)
        for t in history.tests(run.id):
            print(
                f"\ntests in {t.stage}: {t.tests} tests, {t.passed} passed, {t.failures} failed,"
                f" {t.errors} errors, {t.skipped} skipped",
                file=out,
            )
            for f in t.failed:
                _indented(f"{f.kind}: {f.name}: {f.message}", "  ", "    ", out)
    return 0


def cmd_logs(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    import time as _time

    with opened_history(args.file, err) as history:
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
    return 0


def cmd_artifacts(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    from pipekit._core.safefile import write_file

    with opened_history(args.file, err) as history:
        run_id = history.resolve(args.run)
        arts = history.artifacts(run_id)
        if not arts:
            print(f"run {run_id} archived no files", file=out)
            return 0
        # lexical paths: a link a stage left on the way is refused by write_file, not resolved away
        dest = Path(os.path.abspath(args.dest or f"artifacts-{run_id}"))
        targets = [(a, Path(os.path.normpath(dest / a.path.lstrip("/")))) for a in arts]
        for a, target in targets:  # every path is checked before anything is written
            if not target.is_relative_to(dest):
                raise UsageError(f"artifact path {a.path} would leave {dest}; nothing was copied")
        for a, target in targets:
            try:
                with open(history.artifact_file(a.sha256), "rb") as f:
                    write_file(target, f, root=workspace_of(args.file))
            except OSError as e:
                raise UsageError(f"cannot write {target}: {e.strerror}; copying stopped there") from e
            print(f"{target}", file=out)
    return 0


def cmd_cache(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    if args.remote:  # the shared cache's entries in the registry (pipekit._cli.cacheregistry)
        from pipekit._cli.cacheregistry import registry_cache

        return registry_cache(args, out)
    if args.action == "inspect":
        raise UsageError("pipekit cache inspect is for the registry's entries: add --remote and --cache-registry")
    both = not args.results and not args.volumes
    with opened_history(args.file, err) as history:
        results = history.cache_entries()
        backend: CacheVolumes | None = container_backend()
        volumes: list[CacheVolume] = []
        try:
            assert isinstance(backend, CacheVolumes)
            backend.check()
            volumes = backend.cache_volumes()
        except PipekitError:
            backend = None
        if args.action == "list":
            print(f"{len(results)} cached stage results in {history.db_path}", file=out)
            for r in results:
                print(f"  {r.stage}  from run {r.run_id}  {_when(r.created)}", file=out)
            print(f"{len(volumes)} cache volumes", file=out)
            for v in volumes:
                print(f"  {v.name}  stage {v.stage}  {v.created}", file=out)
            return 0
        if both or args.results:
            print(f"removed {history.prune_cache()} cached stage results", file=out)
        if (both or args.volumes) and backend is not None:
            removed = sum(backend.remove_volume(v.name) for v in volumes)
            print(f"removed {removed} cache volumes", file=out)
    return 0


def cmd_cleanup(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    """Remove the containers and networks of runs that are no longer running."""
    backend = container_backend(name=args.backend)
    if not isinstance(backend, Sweeps):
        raise UsageError(f"the {backend.name} backend keeps nothing to clean up")
    backend.check()
    if args.all:
        gone = backend.sweep()
        print(f"removed what {len(gone)} run(s) left: {', '.join(gone)}" if gone else "nothing was left", file=out)
        if hasattr(backend, "drop_workspace_bases"):  # (copy mode's copies of this folder kept in the engine)
            bases = backend.drop_workspace_bases(workspace_of(args.file))
            if bases:
                print(f"removed {len(bases)} copies of this workspace kept in the engine for copy mode", file=out)
        return 0
    if not args.run:
        raise UsageError("give a RUN to clean up after, or --all for every run that is no longer running")
    run_id = args.run
    if (workspace_of(args.file) / ".pipekit" / "pipekit.db").is_file():
        with opened_history(args.file, err) as history, contextlib.suppress(UsageError):
            run_id = history.resolve(args.run)  # (a run of another workspace: its id as given)
    left = backend.leftovers()
    if left.get(run_id):
        raise UsageError(f"run {run_id} is still running; stop it first (Ctrl-C or kill its pipekit process)")
    backend.cleanup(run_id)
    kept = backend.drop_kept(run_id) if hasattr(backend, "drop_kept") else 0
    said = [f"removed what run {run_id} left"] if run_id in left else []
    if kept:
        said.append(f"removed the {kept} container(s) kept for `pipekit shell`")
    print(f"run {run_id}: {'; '.join(said)}" if said else f"run {run_id} left nothing", file=out)
    return 0


RUN_REF = click.argument("run", metavar="RUN")
RUN_HELP = "RUN is a run id, a unique prefix of one, or 'last'."


@click.command(context_settings=CONTEXT)
@file_option
@click.option("-n", "--limit", type=click.IntRange(1, 1_000_000), default=20, show_default=True, help="How many.")
def runs(**values: Any) -> None:
    """List the recent runs of this workspace."""
    dispatch(cmd_runs, **values)


@click.command(context_settings=CONTEXT, epilog=RUN_HELP)
@RUN_REF
@file_option
def show(**values: Any) -> None:
    """Show a run: stages, durations, errors, artifacts, tests."""
    dispatch(cmd_show, **values)


@click.command(context_settings=CONTEXT, epilog=RUN_HELP)
@RUN_REF
@click.argument("stage", required=False)
@file_option
@click.option("--follow", is_flag=True, help="Keep printing until the run ends.")
def logs(**values: Any) -> None:
    """Print a run's logs (one stage's, or all)."""
    dispatch(cmd_logs, **values)


@click.command(context_settings=CONTEXT, epilog=RUN_HELP)
@RUN_REF
@file_option
@click.option("--dest", metavar="DIR", help="Where to put them (default ./artifacts-RUN).")
def artifacts(**values: Any) -> None:
    """Copy a run's archived files out."""
    dispatch(cmd_artifacts, **values)


CACHE_EPILOG = """\b
Examples:
  pipekit cache list
  pipekit cache list --remote --cache-registry ghcr.io/acme/app-cache
  pipekit cache inspect --remote 3f2a9c
  pipekit cache prune --remote --older-than 30d"""


@click.command(context_settings=CONTEXT, epilog=CACHE_EPILOG)
@click.argument("action", type=click.Choice(("list", "inspect", "prune")))
@click.argument("entry", required=False, metavar="[ENTRY]")
@file_option
@click.option("--results", is_flag=True, help="Prune only the cached stage results.")
@click.option("--volumes", is_flag=True, help="Prune only the cache volumes (cache_dirs=).")
@click.option("--remote", is_flag=True, help="The shared cache's entries in --cache-registry, not this machine's.")
@CACHE_REGISTRY_OPTION
@click.option("--older-than", metavar="DURATION", help="With prune --remote: only entries older than this ('7d').")
@click.option("--stage", metavar="STAGE", help="With prune --remote: only this stage's entries.")
@SECRETS_FILE_OPTION
def cache(**values: Any) -> None:
    """List or prune cached stage results and cache volumes; with --remote, the shared cache's
    entries in the registry (list, inspect ENTRY, prune)."""
    dispatch(cmd_cache, **values)


@click.command(context_settings=CONTEXT, epilog="\b\nExamples:\n  pipekit cleanup last\n  pipekit cleanup --all")
@click.argument("run", metavar="[RUN]", required=False)
@file_option
@click.option("--all", "all", is_flag=True, help="Every run whose pipekit process is gone, of any workspace.")
@backend_option
def cleanup(**values: Any) -> None:
    """Remove the containers and networks a run left (after a kill -9, or an engine that was down)."""
    dispatch(cmd_cleanup, **values)


def register(group: click.Group) -> None:
    for command in (runs, show, logs, artifacts, cache, cleanup):
        group.add_command(command)

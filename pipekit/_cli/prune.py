"""``pipekit prune``: history retention, and ``keep-runs``/``keep-days`` applied after each run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import IO, Any

import click

from pipekit._cli.history import CONTEXT, opened_history, print_error
from pipekit._cli.options import dispatch, file_option
from pipekit._history.prune import Pruned, format_size, parse_age, prune

__all__ = ["register", "retain"]


def _said(pruned: Pruned) -> str:
    if not pruned.runs:
        return "nothing to prune"
    verb = "would remove" if pruned.dry_run else "removed"
    freed = "would free" if pruned.dry_run else "freed"
    return (
        f"{verb} {len(pruned.runs)} run(s), {pruned.artifacts} archived file(s) and {pruned.cache_entries} cached"
        f" stage result(s) no kept run uses; {freed} {format_size(pruned.freed)}"
    )


def cmd_prune(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    older = parse_age(args.older_than) if args.older_than else None
    with opened_history(args.file, err) as history:
        pruned = prune(history, keep=args.keep, older_than=older, dry_run=args.dry_run)
    for run_id in pruned.runs if args.dry_run else ():
        print(f"  {run_id}", file=out)
    print(_said(pruned), file=out)
    return 0


def retain(args: SimpleNamespace, err: IO[str]) -> None:
    """After a run: prune as ``keep-runs``/``keep-days`` (``--keep-runs``/``--keep-days``) say;
    a failure to prune is a warning, never the run's outcome."""
    keep, days = getattr(args, "keep_runs", None), getattr(args, "keep_days", None)
    if keep is None and days is None:
        return
    try:
        with opened_history(args.file, err) as history:
            pruned = prune(history, keep=keep, older_than=float(days) * 86400 if days is not None else None)
    except Exception as e:
        print_error(err, f"warning: the history was not pruned (keep-runs/keep-days): {e}")
        return
    if pruned.runs:
        print_error(err, f"history: {_said(pruned)} (keep-runs={keep}, keep-days={days})")


PRUNE_EPILOG = """\b
Examples:
  pipekit prune --keep 20                # the 20 most recent runs stay
  pipekit prune --older-than 30d         # runs started more than 30 days ago go
  pipekit prune --keep 5 --dry-run       # what would go, and the space it would free

\b
A run still running or awaiting an approval is never pruned. Defaults: keep-runs and keep-days
in [tool.pipekit] (also applied after each `pipekit run`).
"""


@click.command(context_settings=CONTEXT, epilog=PRUNE_EPILOG)
@file_option
@click.option("--keep", type=click.IntRange(0), metavar="N", help="Keep the N most recent runs; remove the older ones.")
@click.option("--older-than", metavar="AGE", help="Remove the runs started longer ago than AGE (30d, 12h, 2w).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed and the space freed; change nothing.")
def prune_command(**values: Any) -> None:
    """Remove old runs from the history: their logs, and the archived files and cached results only they use."""
    dispatch(cmd_prune, **values)


def register(group: click.Group) -> None:
    group.add_command(prune_command, name="prune")

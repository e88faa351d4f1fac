"""``pipekit approve`` and ``pipekit deployments``: decide on a gate a run left awaiting approval,
and list what was deployed where (docs/approvals.md)."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from typing import IO, Any

import click

from pipekit._cli.history import CONTEXT, opened_history, table
from pipekit._cli.options import dispatch, file_option
from pipekit._dsl.approval import Decision
from pipekit._dsl.params import parse_param_args
from pipekit._history.approvals import deployments, record_approval
from pipekit._run.gates import current_user
from pipekit.exceptions import UsageError

__all__ = ["cmd_approve", "cmd_deployments", "register"]


def cmd_approve(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    if args.reason and not args.reject:
        raise UsageError("--reason goes with --reject (an approval's own values are --param NAME=VALUE)")
    if args.reject and args.param:
        raise UsageError("--param goes with an approval, not with --reject")
    decision = Decision(
        approved=not args.reject,
        by=current_user(),
        host=socket.gethostname(),
        via="pipekit approve",
        params=parse_param_args(args.param),
        reason=args.reason,
    )
    with opened_history(args.file, err) as history:
        run_id = history.resolve(args.run)
        names = [args.stage]
        if not any(st.name == args.stage for st in history.stages(run_id)):  # a matrix stage: each instance
            names = [st.name for st in history.stages(run_id) if st.name.startswith(f"{args.stage}[")] or names
        for stage in names:
            recorded = record_approval(history, run_id, stage, decision)
            what = "approved" if recorded.approved else f"rejected ({recorded.reason})"
            print(f"{stage} in run {run_id}: {what} by {recorded.by}@{recorded.host}", file=out)
    print(f"continue the run with: pipekit run --resume {run_id}", file=out)
    return 0


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_deployments(args: SimpleNamespace, out: IO[str], err: IO[str]) -> int:
    with opened_history(args.file, err) as history:
        rows = deployments(history, args.environment, args.limit)
    if not rows:
        where = f" to {args.environment}" if args.environment else ""
        print(f"no deployments{where} recorded yet", file=out)
        return 0
    lines: list[tuple[str, ...]] = [
        ("ENVIRONMENT", "COMMIT", "RUN", "STAGE", "APPROVED BY", "APPROVED", "STARTED", "OUTCOME")
    ]
    for d in rows:
        lines.append(
            (
                d.environment,
                (d.git_commit or "-")[:12],
                d.run_id,
                d.stage,
                d.approved_by or "-",
                _when(d.approved_at),
                _when(d.started),
                d.outcome,
            )
        )
    table(lines, out)
    return 0


APPROVE_EPILOG = """\b
Examples:
  pipekit approve last deploy
  pipekit approve 20261203-1412-ab12 deploy --param reason="release 2.1"
  pipekit approve last deploy --reject --reason "freeze until Monday"
  pipekit run --resume last        # continues the run: deploy starts (or fails, when rejected)

\b
The decision is recorded in the history with who (this machine's user), when and from which host.
"""


@click.command(context_settings=CONTEXT, epilog=APPROVE_EPILOG)
@click.argument("run", metavar="RUN")
@click.argument("stage", metavar="STAGE")
@file_option
@click.option("-p", "--param", multiple=True, metavar="NAME=VALUE", help="A value the gate asks for (repeatable).")
@click.option("--reject", is_flag=True, help="Reject: the stage fails with --reason when the run is resumed.")
@click.option("--reason", metavar="TEXT", help="Why it is rejected (with --reject).")
def approve(**values: Any) -> None:
    """Approve (or reject) a stage that a run left awaiting approval; then `pipekit run --resume RUN`."""
    dispatch(cmd_approve, **values)


@click.command(context_settings=CONTEXT)
@click.argument("environment", metavar="[ENV]", required=False)
@file_option
@click.option("-n", "--limit", type=click.IntRange(1, 1_000_000), default=20, show_default=True, help="How many.")
def deployments_(**values: Any) -> None:
    """List what was deployed to each environment (environment=): commit, run, approval, outcome."""
    dispatch(cmd_deployments, **values)


def register(group: click.Group) -> None:
    group.add_command(approve)
    group.add_command(deployments_, name="deployments")

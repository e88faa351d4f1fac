"""Manual approval gates: ``pk.Approval(...)`` (a stage's ``approval=``) and the decision a person
makes on one (``Decision``, what ``ctx.approval`` is).

A gated stage starts only once approved: at the prompt of ``pipekit run`` on a terminal, with
``--approve STAGE``, or with ``pipekit approve RUN STAGE`` and then ``pipekit run --resume RUN``.
See docs/approvals.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from pipekit._dsl.control import format_duration, parse_duration
from pipekit._dsl.params import Param, Params
from pipekit.exceptions import ParameterError, PipelineError

__all__ = ["APPROVED", "REJECTED", "TIMED_OUT", "Approval", "Decision", "Environment", "approval_params"]

APPROVED = "approved"
REJECTED = "rejected"
#: what a prompt returns when the gate's timeout passed while it asked
TIMED_OUT = "timed out"


def _approvers(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(a, str) and a.strip() for a in value):
        raise PipelineError(f"pk.Approval(approvers=...) takes a list of user or group names, got {value!r}")
    return tuple(a.strip() for a in value)


def _timeout(value: float | str | None) -> float | None:
    return parse_duration(value, "pk.Approval(timeout=...)")


def _params(value: Sequence[Param]) -> tuple[Param, ...]:
    if isinstance(value, (str, Param)) or not all(isinstance(p, Param) for p in value):
        raise PipelineError(f"pk.Approval(params=...) takes a list of pk.param(...), got {value!r}")
    names = [p.name for p in value]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PipelineError(f"pk.Approval(params=...) declares {twice[0]!r} twice")
    return tuple(value)


def _message(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PipelineError(f"pk.Approval(message=...) takes the question to ask, got {value!r}")
    return value


@attrs.frozen(kw_only=True)
class Approval:
    """A gate on a stage: a person approves before it starts.

    ``message``: the question asked; ``approvers``: the users (or Unix groups) who may decide
    (empty: anyone who can run ``pipekit approve`` on the history); ``timeout``: how long the gate
    waits from when the run first reached it (seconds or ``"24h"``), after which the stage fails;
    ``params``: ``pk.param(...)`` values the approver fills in (one without a default must be
    given), read in the stage as ``ctx.approval.params.NAME``.
    """

    message: str = attrs.field(default="Approve this stage?", converter=_message)
    approvers: tuple[str, ...] = attrs.field(default=(), converter=_approvers)
    timeout: float | None = attrs.field(default=None, converter=_timeout)
    params: tuple[Param, ...] = attrs.field(default=(), converter=_params)

    def describe_timeout(self) -> str:
        return format_duration(self.timeout) if self.timeout else "no timeout"

    def as_dict(self) -> dict[str, Any]:
        """What the history keeps of the gate (for ``pipekit approve``, which has no pipeline)."""
        return {
            "message": self.message,
            "approvers": list(self.approvers),
            "timeout": self.timeout,
            "params": [{"name": p.name, "default": p.default, "help": p.help} for p in self.params],
        }


def approval_params(declared: Sequence[Param], given: Mapping[str, str], stage: str) -> dict[str, Any]:
    """The approver's values (text, as from ``--param k=v``) converted to the declared types; a
    parameter without a default must be given (ParameterError naming it)."""
    by_name = {p.name: p for p in declared}
    for name in given:
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise ParameterError(f"the approval of '{stage}' has no parameter {name!r} (its parameters: {known})")
    values: dict[str, Any] = {}
    for p in declared:
        if p.name in given:
            values[p.name] = p.convert(given[p.name])
        elif p.default is None:
            hint = f" ({p.help})" if p.help else ""
            raise ParameterError(f"the approval of '{stage}' needs --param {p.name}=...{hint}")
        else:
            values[p.name] = p.default
    return values


def _values(value: Mapping[str, Any]) -> Params:
    return value if isinstance(value, Params) else Params(dict(value))


@attrs.frozen(kw_only=True)
class Decision:
    """A decision on a gate, as recorded and as the stage sees it (``ctx.approval``).

    ``by``: who decided; ``when``: the time (seconds since the epoch); ``host``: the machine it was
    made on; ``via``: how (``prompt``, ``--approve``, ``pipekit approve``, ``test``, or the server's
    name for itself); ``params``: the approver's values; ``reason``: a rejection's reason.
    """

    approved: bool
    by: str
    when: float = attrs.field(factory=time.time)
    host: str = ""
    via: str = ""
    params: Params = attrs.field(factory=lambda: Params({}), converter=_values)
    reason: str | None = None

    @property
    def verdict(self) -> str:
        return APPROVED if self.approved else REJECTED


QUEUES = ("all", "newest")


def _environment_name(value: Any) -> str:
    import re

    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise PipelineError(
            f"an environment takes a name like 'production' (letters, digits, '.', '_', '-'), got {value!r}"
        )
    return value


def _queue(value: Any) -> str:
    if value not in QUEUES:
        raise PipelineError(f"pk.Environment(queue=...) is 'all' or 'newest', got {value!r}")
    return str(value)


@attrs.frozen
class Environment:
    """Where a stage deploys (a stage's ``environment=``; a plain name is ``Environment(name)``).

    One run at a time deploys to an environment on a machine; the others wait. ``queue="all"``
    (the default): each waits its turn. ``queue="newest"``: only the newest waiting run stays in
    line; an older one that waits is cancelled (its stage ends ``cancelled``), since the newer one
    deploys a newer commit anyway.
    """

    name: str = attrs.field(converter=_environment_name)
    queue: str = attrs.field(default="all", converter=_queue, kw_only=True)

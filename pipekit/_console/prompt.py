"""The question ``pipekit run`` asks on a terminal at an approval gate, while the rest of the run
goes on: approve (filling the gate's params), reject (with a reason), or decide later (the gate
stays awaiting, and the run ends with it). It reads the terminal line by line with ``select``, so
that it gives up when the gate times out or the run stops (Ctrl-C) and leaves nothing behind."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pipekit._dsl.approval import TIMED_OUT, Decision
from pipekit._dsl.control import format_duration
from pipekit.exceptions import ParameterError

__all__ = ["TerminalPrompt"]

_POLL_S = 0.2


class _Gone(Exception):
    """The prompt ends without an answer: timed out, stopped, or the terminal closed."""

    def __init__(self, why: str | None) -> None:
        super().__init__(why or "")
        self.why = why


class TerminalPrompt:
    """Asks at a gate on the terminal ``fd`` (read) with ``write`` (one line of text each call).
    ``user``: who answers (the machine's user); ``may_decide(user, approvers)`` says if they may."""

    def __init__(
        self,
        fd: int,
        write: Callable[[str], None],
        user: str,
        may_decide: Callable[[str, tuple[str, ...]], bool],
        now: Callable[[], float] = time.time,
    ) -> None:
        self.fd = fd
        self.write = write
        self.user = user
        self.may_decide = may_decide
        self.now = now

    def __call__(self, ask: Any, stop: threading.Event) -> Decision | str | None:
        approval = ask.approval
        ran = ", ".join(f"{r.name} {r.status}" for r in ask.ran) or "nothing yet"
        left = f"; times out in {format_duration(max(1, round(ask.deadline - self.now())))}" if ask.deadline else ""
        self.write(f"\n=== approval: stage '{ask.stage}' (run {ask.run_id}) ===")
        self.write(f"  {approval.message}")
        self.write(f"  so far: {ran}")
        self.write(f"  approvers: {', '.join(approval.approvers) or 'anyone'}{left}")
        if not self.may_decide(self.user, approval.approvers):
            self.write(f"  you ({self.user}) are not one of its approvers: it stays awaiting approval;")
            self.write(f"  one of them runs: pipekit approve {ask.run_id} {ask.stage}")
            return None
        try:
            return self._answer(ask, stop)
        except _Gone as e:
            if e.why == TIMED_OUT:
                self.write(f"  '{ask.stage}': approval timed out")
            return e.why

    def _answer(self, ask: Any, stop: threading.Event) -> Decision | None:
        while True:
            answer = self._line(f"Approve '{ask.stage}'? [y]es / [n]o (reject) / [l]ater: ", ask, stop).lower()
            if answer in ("y", "yes"):
                return self._approved(ask, stop)
            if answer in ("n", "no"):
                reason = ""
                while not reason:
                    reason = self._line("  reason for rejecting: ", ask, stop)
                return self._decision(approved=False, reason=reason)
            if answer in ("l", "later"):
                self.write(f"  '{ask.stage}' stays awaiting approval: pipekit approve {ask.run_id} {ask.stage}")
                return None

    def _approved(self, ask: Any, stop: threading.Event) -> Decision:
        values: dict[str, Any] = {}
        for p in ask.approval.params:
            while True:
                shown = f" [{p.default}]" if p.default is not None else ""
                about = f" ({p.help})" if p.help else ""
                text = self._line(f"  {p.name}{about}{shown}: ", ask, stop)
                if not text and p.default is not None:
                    values[p.name] = p.default
                    break
                if not text:
                    self.write(f"  {p.name} is required")
                    continue
                try:
                    values[p.name] = p.convert(text)
                    break
                except ParameterError as e:
                    self.write(f"  {e.message}")
        return self._decision(approved=True, params=values)

    def _decision(self, **fields: Any) -> Decision:
        return Decision(by=self.user, host=socket.gethostname(), via="prompt", **fields)

    def _line(self, question: str, ask: Any, stop: threading.Event) -> str:
        """One line typed at the terminal; _Gone when the gate times out, the run stops, or EOF."""
        self.write(question)
        data = b""
        while not data.endswith(b"\n"):
            if stop.is_set():
                raise _Gone(None)
            if ask.deadline is not None and self.now() >= ask.deadline:
                raise _Gone(TIMED_OUT)
            ready, _, _ = select.select([self.fd], [], [], _POLL_S)
            if ready:
                chunk = os.read(self.fd, 1024)
                if not chunk:
                    raise _Gone(None)  # end of input: decide later
                data += chunk
        return data.decode(errors="replace").strip()

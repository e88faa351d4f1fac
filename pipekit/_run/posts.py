"""Post actions: a stage's ``post=`` and the pipeline's ``@pk.post``, run after the work is done."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipekit._core.results import StageResult, StageStatus
from pipekit._dsl.control import POST_WHEN, Outcome
from pipekit._run.context import Context
from pipekit._run.run import Run
from pipekit._run.usercode import error_text
from pipekit.backend import StageSpec

__all__ = ["call_posts", "pipeline_posts"]


def call_posts(actions: Mapping[str, Sequence[Callable[..., Any]]], ctx: Any, outcome: Outcome, log: Any) -> list[str]:
    """Run the actions in Jenkins' order (always, success, failure, cleanup); their errors."""
    failed = outcome.status not in (StageStatus.SUCCEEDED, StageStatus.SKIPPED)
    errors = []
    for when in POST_WHEN:
        if (when == "success" and failed) or (when == "failure" and not failed):
            continue
        for fn in actions.get(when, ()):
            action = getattr(fn, "__name__", repr(fn))
            log.info("post action started", when=when, action=action)
            try:
                fn(ctx, outcome)
            except Exception as e:
                text = f"post action '{action}' ({when}) failed: {error_text(outcome.stage or 'pipeline', e)}"
                log.error("post action failed", when=when, action=action, error=text)
                errors.append(text)
    return errors


def pipeline_posts(run: Run, status: str, results: Mapping[str, StageResult]) -> list[str]:
    """The pipeline's post actions, on the host, after every stage has ended."""
    hooks = run.resolved.plan.pipeline.posts
    if not hooks:
        return []
    log = run.log.bind(stage="pipeline")
    workspace = run.resolved.workspace
    spec = StageSpec(run_id=run.run_id, stage="pipeline", image=None, workspace=workspace)
    handle = run.host.prepare(spec)
    try:
        scope = run.scope_for("pipeline", workspace=workspace, env=dict(os.environ), log=log)
        ctx = Context(scope, run.host, handle)
        outcome = Outcome(
            str(status),
            stages={n: r.status for n, r in results.items()},
            error=next((r.error for r in results.values() if r.status == StageStatus.FAILED and r.error), None),
        )
        actions: dict[str, list[Callable[..., Any]]] = {}
        for hook in hooks:
            actions.setdefault(hook.when, []).append(hook.fn)
        return call_posts(actions, ctx, outcome, log)
    finally:
        run.host.release(handle)

"""A server run: ``pipekit run`` as the command line has it, and, right after the pipeline loads:

- for a project with ``host_stages = false``, a check that refuses a pipeline with a stage that
  would run on the host (no image, no ``image_from``, no Dockerfile) before anything runs;
- the server's ``[environments.NAME]`` approval rules put on the stages deploying there
  (``--environments JSON``), and the stages' environments written for the server
  (``--stage-environments FILE``), which checks an approval against them.

``python -m pipekit._cli.server_run [--no-host-stages] [--environments JSON] [--stage-environments FILE]
-- RUN-ARGUMENTS...``
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["environment_rules", "host_stages", "main"]


def host_stages(pipeline: Any) -> list[str]:
    """The stages of ``pipeline`` that would run on the host."""
    return [s.name for s in pipeline.stages if pipeline.image_for(s) is None and not (s.image_from or s.dockerfile)]


def _refuse_host_stages() -> None:
    from pipekit._run import session as _session
    from pipekit.exceptions import UsageError

    load = _session._load

    def checked(request: Any) -> Any:
        pipeline = load(request)
        found = host_stages(pipeline)
        if found:
            raise UsageError(
                f"this project refuses host stages (host_stages = false in pipekit-server.toml), and"
                f" {', '.join(found)} {'has' if len(found) == 1 else 'have'} no image: nothing was run"
            )
        return pipeline

    _session._load = checked  # type: ignore[assignment]


def environment_rules(pipeline: Any, rules: dict[str, dict[str, Any]]) -> None:
    """Put the server's approval rules on the stages of ``pipeline`` deploying to an environment it
    has rules for: its approvers, timeout and message replace the stage's own (a stage without
    ``approval=`` gets a gate); the approval's params stay the pipeline's."""
    import attrs

    from pipekit._dsl.approval import Approval

    stages = pipeline._stages  # the loaded pipeline's own list: the stages are frozen, so replaced
    for i, s in enumerate(stages):
        environment = s.environment.name if s.environment else None
        rule = rules.get(environment) if environment else None
        if rule is None:
            continue
        old = s.approval
        approval = Approval(
            message=rule.get("message") or (old.message if old else f"Deploy to {environment}?"),
            approvers=rule.get("approvers") or (old.approvers if old else ()),
            timeout=rule["timeout"] if rule.get("timeout") is not None else (old.timeout if old else None),
            params=old.params if old else (),
        )
        stages[i] = attrs.evolve(s, approval=approval)
    pipeline._ids = {id(s) for s in stages}


def _environments(rules: dict[str, dict[str, Any]], out: str | None) -> None:
    import json

    from pipekit._run import session as _session

    load = _session._load

    def ruled(request: Any) -> Any:
        pipeline = load(request)
        environment_rules(pipeline, rules)
        if out:
            with open(out, "w", encoding="utf-8") as f:
                json.dump({s.name: s.environment.name for s in pipeline.stages if s.environment}, f)
        return pipeline

    _session._load = ruled  # type: ignore[assignment]


def main(argv: Sequence[str]) -> None:
    """``pipekit run`` exactly as the ``pipekit`` command runs it (its exit code ends the process)."""
    import gc

    gc.disable()  # as the pipekit command: start-up objects are frozen out of the collector later
    import json

    from pipekit._cli.main import console_main

    args = list(argv)
    if args[:1] == ["--no-host-stages"]:
        _refuse_host_stages()
        args = args[1:]
    rules, out = {}, None
    while args[:1] in (["--environments"], ["--stage-environments"]):
        if args[0] == "--environments":
            rules = json.loads(args[1])
        else:
            out = args[1]
        args = args[2:]
    if rules or out:
        _environments(rules, out)
    if args[:1] == ["--"]:
        args = args[1:]
    sys.argv = ["pipekit", "run", *args]
    console_main()


if __name__ == "__main__":
    main(sys.argv[1:])

"""A server run: ``pipekit run`` as the command line has it, and, for a project with
``host_stages = false``, a check right after the pipeline loads that refuses a pipeline with a stage
that would run on the host (no image, no ``image_from``, no Dockerfile) before anything runs.

``python -m pipekit._cli.server_run [--no-host-stages] -- RUN-ARGUMENTS...``
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["host_stages", "main"]


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


def main(argv: Sequence[str]) -> None:
    """``pipekit run`` exactly as the ``pipekit`` command runs it (its exit code ends the process)."""
    import gc

    gc.disable()  # as the pipekit command: start-up objects are frozen out of the collector later
    from pipekit._cli.main import console_main

    args = list(argv)
    if args[:1] == ["--no-host-stages"]:
        _refuse_host_stages()
        args = args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    sys.argv = ["pipekit", "run", *args]
    console_main()


if __name__ == "__main__":
    main(sys.argv[1:])

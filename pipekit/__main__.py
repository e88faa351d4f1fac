"""``python -m pipekit`` and the ``pipekit`` command."""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click


def console_main() -> None:
    """The ``pipekit`` command.

    Start-up makes some 200,000 objects (modules, classes, the click commands, the pipeline and its
    plan) that live as long as the process; Python's cyclic collector would walk them again and
    again (about 15 ms here before a run's first container). It is held off until the command
    starts its work, and then what start-up made is frozen out of it (:func:`collector_on`).
    """
    gc.disable()
    if "_PIPEKIT_COMPLETE" in os.environ:  # the shell asks for completions: answer without the whole CLI
        from pipekit._cli.complete import complete

        raise SystemExit(complete(_real_cli))
    from pipekit._cli.main import console_main as cli_main

    cli_main()


def _real_cli() -> click.Command:
    from pipekit._cli.main import cli

    return cli


if __name__ == "__main__":
    console_main()

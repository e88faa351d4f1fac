"""``pipekit serve`` and ``pipekit triggers``."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from pipekit._cli.history import CONTEXT, streams
from pipekit._cli.options import file_option
from pipekit.exceptions import UsageError

__all__ = ["register"]


@click.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  PIPEKIT_SERVER_TOKEN=... pipekit serve --config pipekit-server.toml",
)
@click.option(
    "--config",
    "config",
    metavar="PATH",
    default="pipekit-server.toml",
    show_default=True,
    envvar="PIPEKIT_SERVER_CONFIG",
    help="The server's configuration (docs/server.md).",
)
def serve(config: str) -> None:
    """Run pipelines when code changes (webhooks, polling, cron) and show every run in a browser."""
    from pipekit._server.serve import serve as run_server

    click.get_current_context().exit(run_server(config))  # the server's own exit code


@click.command(context_settings=CONTEXT)
@file_option
@click.option(
    "--output",
    metavar="PATH",
    help="Write the JSON to this file (created, never through a link), not to standard output:"
    " what the pipeline prints while it loads cannot mix with it.",
)
def triggers(file: str, output: str | None) -> None:
    """Print what starts the pipeline under `pipekit serve` (its triggers=), as JSON."""
    from pipekit._dsl.loader import load

    out, _err = streams()
    pipeline = load(file)
    data: dict[str, Any] = {"pipeline": pipeline.name, "triggers": [t.to_json() for t in pipeline.triggers]}
    if output is None:
        print(json.dumps(data), file=out)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data))
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}") from None


def register(group: click.Group) -> None:
    group.add_command(serve)
    group.add_command(triggers)

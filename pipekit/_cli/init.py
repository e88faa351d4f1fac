"""``pipekit init``: a pipeline.py, its tests and ``[tool.pipekit]`` for the project in this folder."""

from __future__ import annotations

from pathlib import Path

import click

from pipekit._cli.history import CONTEXT, streams

__all__ = ["init", "register"]

EPILOG = """\b
Examples:
  pipekit init
  pipekit init --registry registry.example:5000
  pipekit init --from jenkinsfile --force
  pipekit init -C path/to/project --from github
"""


@click.command(context_settings=CONTEXT, epilog=EPILOG)
@click.option(
    "-C",
    "--directory",
    "directory",
    default=".",
    type=click.Path(file_okay=False),
    help="The project's folder (default: this one).",
)
@click.option(
    "--registry", metavar="HOST[:PORT]", help="Add a push stage to this registry (a parameter, -p registry=...)."
)
@click.option(
    "--from",
    "source",
    type=click.Choice(("jenkinsfile", "github", "gitlab")),
    help="Start from the project's Jenkinsfile, GitHub workflow or .gitlab-ci.yml instead of what it holds.",
)
@click.option("--force", is_flag=True, help="Replace pipeline.py and test_pipeline.py if they exist.")
def init(directory: str, registry: str | None, source: str | None, force: bool) -> None:
    """Look at the project (Dockerfile, tests, pyproject.toml, package.json, go.mod, Makefile, CI files) and
    write pipeline.py, test_pipeline.py and [tool.pipekit]. Exit 1 when --from left parts to convert by hand
    (listed, TODO in the file), 3 when the generated pipeline is wrong (kept as pipeline.py.rejected)."""
    from pipekit._ci.init.write import init_project
    from pipekit.exceptions import UsageError

    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{directory} is not a folder")
    out, err = streams()
    code = init_project(root, registry=registry, source=source, force=force, out=out, err=err)
    click.get_current_context().exit(code)


def register(group: click.Group) -> None:
    group.add_command(init)

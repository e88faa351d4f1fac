"""``pipekit ci init`` and ``pipekit import jenkinsfile``: moving a project's CI over."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipekit._cli.history import CONTEXT, print_error, streams
from pipekit._cli.options import file_option
from pipekit.exceptions import PipekitError

__all__ = ["ci", "import_", "register"]


@click.group(context_settings=CONTEXT)
def ci() -> None:
    """Run this project's pipeline in the CI a team already has."""


@ci.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit ci init github\n  pipekit ci init gitlab --force\n"
    "  pipekit ci init jenkins -f ci/\n  pipekit ci init github --install 0.2.0\n"
    "  pipekit ci init github --install git+https://github.com/ORG/pipekit.git@v0.2.0\n"
    "  pipekit ci init gitlab --install https://files.example/pipekit_ci-0.2.0-py3-none-any.whl",
)
@click.argument("system", type=click.Choice(("github", "gitlab", "jenkins")))
@file_option
@click.option("--force", is_flag=True, help="Overwrite the CI's file if there is one.")
@click.option(
    "--install",
    metavar="SPEC",
    help="How the CI installs pipekit: a version, a version specifier, a wheel or archive URL or path, or a git URL"
    " (default: pipekit-ci at this pipekit's version, from the package index).",
)
def init(system: str, file: str, force: bool, install: str | None) -> None:
    """Write the CI's file (.github/workflows/pipekit.yml, .gitlab-ci.yml or Jenkinsfile)."""
    from pipekit._ci.wrappers import install_spec, write
    from pipekit._dsl.loader import load
    from pipekit.exceptions import PipelineError

    out, err = streams()
    spec = install_spec(install)
    path = Path(file)
    secrets: list[str] = []
    try:
        secrets = sorted(load(path).secret_names)
    except PipelineError as e:
        print_error(err, f"warning: {e}; the wrapper passes no secrets (add them by hand)")
    root = Path.cwd()
    shown = os.path.relpath(path.resolve() if not path.is_dir() else path.resolve() / "pipeline.py", root)
    try:
        target = write(system, root, secrets, shown, force, install)
    except FileExistsError as e:
        raise PipekitError(f"{e} exists; pipekit leaves it as it is (--force replaces it)") from None
    more = [f"installs {spec}"] + ([f"secrets: {', '.join(secrets)}"] if secrets else [])
    print(f"wrote {os.path.relpath(target, root)} ({'; '.join(more)})", file=out)


@click.group(name="import", context_settings=CONTEXT)
def import_() -> None:
    """Turn another CI's pipeline into a pipeline.py."""


@import_.command(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  pipekit import jenkinsfile Jenkinsfile\n"
    "  pipekit import jenkinsfile ci/Jenkinsfile -o pipeline.py",
)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="PATH", help="Write pipeline.py here (default: print it).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def jenkinsfile(path: str, output: str | None, force: bool) -> None:
    """Convert a declarative Jenkinsfile; exit 1 when some parts need hands (listed), 2 when it cannot be
    read, 3 when the importer made a file that is not valid (kept as pipeline.py.rejected)."""
    from pipekit._ci.jenkins.check import convert_file

    out, err = streams()
    code = convert_file(Path(path), Path(output) if output else None, force=force, out=out, err=err)
    click.get_current_context().exit(code)  # the importer's own exit code


def register(group: click.Group) -> None:
    group.add_command(ci)
    group.add_command(import_)

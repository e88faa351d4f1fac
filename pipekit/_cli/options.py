"""The options several commands take: one definition each, with one environment variable each
(the same in `run`, `plan` and `validate`), documented in docs/cli.md. A command lists them as
decorators; ``-f/--file`` and ``--backend`` too. Also the one way a command body runs: ``dispatch``
(a command's own exit code ends the program; a ``PipekitError`` it raises goes to pipekit._cli.main)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import IO, Any

import click
from click.core import ParameterSource

__all__ = [
    "BRANCH_OPTION",
    "CACHE_MODE_OPTION",
    "CACHE_REGISTRY_OPTION",
    "CHANGED_BASE_OPTION",
    "IMAGE_MAP_OPTION",
    "NO_IMAGE_CHECK_OPTION",
    "PARAM_OPTION",
    "SECRETS_FILE_OPTION",
    "Command",
    "IMAGE_MAP_ENV",
    "backend_option",
    "dispatch",
    "file_option",
    "resume_option",
]

IMAGE_MAP_ENV = "PIPEKIT_IMAGE_MAP"

#: a command's body: the parsed values, the output and error streams; it returns the exit code
Command = Callable[[SimpleNamespace, IO[str], IO[str]], int]


def dispatch(command: Command, **values: Any) -> None:
    """Run a command body with the parsed values; its exit code ends the program."""
    ctx = click.get_current_context()
    out, err = ctx.obj["out"], ctx.obj["err"]
    from_config = {name for name in values if ctx.get_parameter_source(name) is ParameterSource.DEFAULT_MAP}
    args = SimpleNamespace(**values, argv=ctx.obj["argv"], from_config=from_config)
    ctx.exit(command(args, out, err))


def file_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-f",
        "--file",
        default="pipeline.py",
        show_default=True,
        envvar="PIPEKIT_FILE",
        metavar="PATH",
        help="The pipeline file, or a folder holding pipeline.py.",
    )(f)


def backend_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--backend",
        type=click.Choice(("docker", "swarm")),
        default=None,
        envvar="PIPEKIT_BACKEND",
        help="Where container stages run: one Docker engine (the default) or the swarm DOCKER_HOST manages.",
    )(f)


def resume_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--resume [RUN]`` (PIPEKIT_RESUME): a bare ``--resume`` is the last run."""
    return click.option(
        "--resume", is_flag=False, flag_value="", default=None, metavar="[RUN]", envvar="PIPEKIT_RESUME", help=help
    )


class _ImageMapping(click.ParamType):  # type: ignore[type-arg]  # (generic from click 8.2 on)
    """One ``IMAGE=LOCAL`` of ``--image-map``; its environment variable lists them with commas."""

    name = "IMAGE=LOCAL"
    envvar_list_splitter = ","

    def split_envvar_value(self, rv: str) -> list[str]:
        return [item for item in (rv or "").split(",") if item.strip()]  # (a trailing comma is no entry)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        src, sep, dst = text.partition("=")
        if not sep or not src.strip() or not dst.strip():
            self.fail(f"takes IMAGE=LOCAL_IMAGE, got {text!r}", param, ctx)
        return text


PARAM_OPTION = click.option(
    "-p", "--param", multiple=True, metavar="NAME=VALUE", envvar="PIPEKIT_PARAM", help="Set a pk.param (repeatable)."
)
SECRETS_FILE_OPTION = click.option(
    "--secrets-file",
    metavar="PATH",
    envvar="PIPEKIT_SECRETS_FILE",
    help="A dotenv file of secrets (it must exist; the [tool.pipekit] default may be missing).",
)
IMAGE_MAP_OPTION = click.option(
    "--image-map",
    multiple=True,
    type=_ImageMapping(),
    envvar=IMAGE_MAP_ENV,
    metavar="IMAGE=LOCAL",
    help=f"Use LOCAL where a stage, a service or a Dockerfile's FROM asks for IMAGE"
    f" (repeatable; {IMAGE_MAP_ENV}=A=B,C=D).",
)
NO_IMAGE_CHECK_OPTION = click.option(
    "--no-image-check",
    is_flag=True,
    envvar="PIPEKIT_NO_IMAGE_CHECK",
    help="Do not check before the run that every image exists (air-gapped planning).",
)
BRANCH_OPTION = click.option(
    "--branch", envvar="PIPEKIT_BRANCH", help="The branch for pk.branch (default: the CI's, else git's)."
)
CHANGED_BASE_OPTION = click.option(
    "--changed-base", metavar="REF", envvar="PIPEKIT_CHANGED_BASE", help="The git ref pk.changed compares with."
)
CACHE_REGISTRY_OPTION = click.option(
    "--cache-registry",
    metavar="REGISTRY/REPO",
    envvar="PIPEKIT_CACHE_REGISTRY",
    help="Share the stage cache through this registry repository (login: PIPEKIT_REGISTRY_USER/_PASSWORD).",
)
CACHE_MODE_OPTION = click.option(
    "--cache-mode",
    type=click.Choice(("read", "write", "readwrite", "off")),
    default=None,
    envvar="PIPEKIT_CACHE_MODE",
    help="What the run does with --cache-registry (default: read; readwrite only on trusted branches).",
)

"""What a stage option is: a name, its type as the decorator's signature writes it, a default, the
docs' line and a check that turns the value the user gave into the stage's field.

The table itself, ``STAGE_OPTIONS`` in :mod:`pipekit._dsl.stage`, is the one definition of
``@pk.stage``'s options: the decorator validates through it, the did-you-mean list is its names, the
option table in docs/dsl.md is :func:`markdown_table` of it, and tests check that ``StageOptions``
(the TypedDict that the overloads of ``pk.stage`` and ``Pipeline.stage`` unpack, written out so that
type checkers and IDEs read it) lists exactly its names and types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from pipekit._dsl.approval import Approval, Environment
from pipekit._dsl.cache import CacheInputs
from pipekit._dsl.control import Resources, Service, check_placement, parse_duration
from pipekit.exceptions import PipelineError

__all__ = ["Option", "Site", "markdown_table", "unknown_option"]


@attrs.frozen
class Site:
    """The stage being decorated, as option checks need it: for messages and for the checks that
    look at another option (``dockerfile=`` with ``image=``)."""

    stage: str
    location: str
    has_image: bool = False

    def bad(self, message: str) -> PipelineError:
        return PipelineError(f"Stage '{self.stage}': {message}", stage=self.stage, location=self.location)


def as_given(value: Any, site: Site) -> Any:
    return value


@attrs.frozen
class Option:
    """One option of ``@pk.stage``. ``type`` is written as in ``StageOptions``; options
    that share ``doc`` share one row of the docs' table."""

    name: str
    type: str
    default: Any
    doc: str
    check: Callable[[Any, Site], Any] = as_given


def unknown_option(given: Iterable[str], options: Sequence[Option], site: Site) -> PipelineError | None:
    """The error for the first option ``@pk.stage`` does not have, with the closest one it has."""
    known = [o.name for o in options]
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return None
    import difflib  # only for a mistake: a run that starts does not load it

    close = difflib.get_close_matches(unknown[0], known, n=1)
    hint = f". Did you mean {close[0]}=?" if close else ""
    return site.bad(f"@pk.stage has no option {unknown[0]}={hint}")


def markdown_table(options: Sequence[Option]) -> str:
    """The option table of docs/dsl.md: one row per run of options with the same ``doc``."""
    rows: list[tuple[list[str], str]] = []
    for o in options:
        if rows and rows[-1][1] == o.doc:
            rows[-1][0].append(o.name)
        else:
            rows.append(([o.name], o.doc))
    lines = ["| option | meaning |", "| --- | --- |"]
    lines += [f"| {', '.join(f'`{n}`' for n in names)} | {doc} |" for names, doc in rows]
    return "\n".join(lines) + "\n"


# The checks: misuse of an option fails at decoration time, saying what was expected.


def check_dockerfile(value: str | None, site: Site) -> str | None:
    if value is not None and site.has_image:
        raise site.bad("give image= or dockerfile=, not both")
    return value


def check_timeout(value: float | str | None, site: Site) -> float | None:
    try:
        return parse_duration(value)
    except PipelineError as e:
        raise site.bad(e.message) from None


def check_retries(value: int, site: Site) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise site.bad(f"retries= takes a whole number of retries (0 or more), got {value!r}")
    return value


def check_backoff(value: float, site: Site) -> float:
    if not isinstance(value, (int, float)) or value < 0:
        raise site.bad(f"backoff= takes seconds (0 or more), got {value!r}")
    return float(value)


def check_allow_failure(value: bool, site: Site) -> bool:
    return bool(value)


def check_services(value: Sequence[Service], site: Site) -> tuple[Service, ...]:
    for svc in value:
        if not isinstance(svc, Service):
            raise site.bad(f"services= takes pk.Service(...) objects, got {svc!r}")
    return tuple(value)


def instance_of(kind: type, usage: str, *, optional: bool = True) -> Callable[[Any, Site], Any]:
    """The check of an option that takes one kind of value (or None when ``optional``): ``usage``
    says what it takes, as in "cache= takes pk.inputs(...)"; an empty string is refused too."""

    def check(value: Any, site: Site) -> Any:
        if (value is None and optional) or (isinstance(value, kind) and value != ""):
            return value
        raise site.bad(f"{usage}, got {value!r}")

    return check


check_resource = instance_of(str, "resource= takes a name")
check_cache = instance_of(CacheInputs, "cache= takes pk.inputs(...)")


def check_cache_dirs(value: Sequence[str], site: Site) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(d, str) and d.startswith("/") for d in value):
        raise site.bad(f"cache_dirs= takes absolute paths in the container, like ['/root/.cache/pip'], got {value!r}")
    return tuple(value)


check_workdir = instance_of(str, "workdir= takes a folder (relative to the workspace, or absolute)")
check_workspace = instance_of(bool, "workspace= takes True or False", optional=False)
check_resources = instance_of(Resources, "resources= takes pk.Resources(cpus=..., memory=...)")


def check_stage_placement(value: Sequence[str], site: Site) -> tuple[str, ...]:
    return check_placement(value, site.bad)


check_approval = instance_of(Approval, "approval= takes pk.Approval(message=..., approvers=[...])")


def check_environment(value: str | Environment | None, site: Site) -> Environment | None:
    if value is None or isinstance(value, Environment):
        return value
    try:
        return Environment(value)
    except PipelineError as e:
        raise site.bad(f"environment= {e.message}") from None

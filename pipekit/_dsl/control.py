"""Stage control values: durations, services, post actions and their outcomes."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from pipekit._dsl.secrets import Secret
from pipekit.exceptions import PipelineError

__all__ = [
    "POST_WHEN",
    "Outcome",
    "Service",
    "check_placement",
    "normalize_post",
    "parse_duration",
    "format_duration",
]

#: When post actions run, in this order (Jenkins' ``post`` sections).
POST_WHEN = ("always", "success", "failure", "cleanup")

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def parse_duration(value: float | int | str | None, what: str = "timeout") -> float | None:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1h30m"``; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PipelineError(f"{what} takes seconds or a string like '10m', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if not text or not match or not any(match.groups()):
                raise PipelineError(
                    f"{what} takes seconds or a string like '90s', '10m', '1h30m', got {value!r}"
                ) from None
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise PipelineError(f"{what} must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 60 == 0:
        h, m = divmod(int(seconds) // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    if seconds >= 60 and seconds % 1 == 0:
        m, s = divmod(int(seconds), 60)
        return f"{m}m{s}s" if s else f"{m}m"
    return f"{seconds:g}s"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(value: int | str, what: str = "memory") -> int:
    """Bytes from ``512m``, ``4g``, ``1.5G`` or a number of bytes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PipelineError(f"{what} takes bytes or a size like '512m' or '4g', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if not match:
            raise PipelineError(f"{what} takes bytes or a size like '512m' or '4g', got {value!r}")
        size = int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " "))
    if size <= 0:
        raise PipelineError(f"{what} must be positive, got {value!r}")
    return size


@attrs.frozen
class Resources:
    """What a stage may use: ``pk.Resources(cpus=2, memory="4g", pids=512)``.

    On one engine they are the container's limits (``--cpus``, ``--memory``, ``--pids-limit``); a
    stage without ``pids`` gets a limit of 4096 processes, so a fork bomb cannot take the machine.
    """

    cpus: float | None = attrs.field(default=None)
    memory: int | str | None = None
    pids: int | None = None

    @cpus.validator
    def _check_cpus(self, _attribute: Any, value: float | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise PipelineError(f"pk.Resources(cpus=...) takes a positive number of CPUs, got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.memory is not None:
            parse_size(self.memory, "pk.Resources(memory=...)")
        if self.pids is not None and (not isinstance(self.pids, int) or self.pids < 1):
            raise PipelineError(f"pk.Resources(pids=...) takes a positive number of processes, got {self.pids!r}")

    @property
    def memory_bytes(self) -> int | None:
        return parse_size(self.memory) if self.memory is not None else None


class _StageImage(str):
    """``pk.Service(image=<stage>)``: the stage's name, standing for the image it builds in the run
    (a ``str`` so that code that only shows a service's image keeps working)."""

    stage: str

    @classmethod
    def of(cls, value: Any) -> Any:
        name = getattr(value, "name", None)
        if not isinstance(name, str) or not callable(getattr(value, "fn", None)):
            return value  # not a stage: __attrs_post_init__ says what an image is
        made = cls(f"<image of stage {name}>")
        made.stage = name
        return made


def _service_image(value: Any) -> str:
    return value if isinstance(value, str) else _StageImage.of(value)  # type: ignore[no-any-return]


@attrs.frozen
class Service:
    """A sidecar container for a stage (GitLab/GitHub ``services``), reachable by its name."""

    name: str
    #: an image name, or a stage that returns a ``pk.Image`` (``image=build``): the service then
    #: starts from the image that stage built in this run, and the stage depends on ``build``
    image: str = attrs.field(converter=_service_image)
    command: Sequence[str] | str | None = None
    env: Mapping[str, str | Secret] = attrs.field(factory=dict)
    healthcheck: Sequence[str] | str | None = None
    healthcheck_timeout: float = 60.0
    #: the ports it serves on; without a ``healthcheck``, it is healthy once each accepts a connection
    ports: Sequence[int] = ()

    def __attrs_post_init__(self) -> None:
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", self.name or ""):
            raise PipelineError(f"a service's name is its host name: letters, digits, '.', '_', '-'; got {self.name!r}")
        if isinstance(self.ports, (str, int)) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in self.ports
        ):
            raise PipelineError(
                f"service '{self.name}': ports= takes a list of port numbers like [8000], got {self.ports!r}"
            )
        object.__setattr__(self, "ports", tuple(self.ports))
        if isinstance(self.image, _StageImage):
            return
        if not isinstance(self.image, str) or not self.image:
            raise PipelineError(
                f"service '{self.name}' needs an image: a name like 'postgres:16', or a stage that returns"
                f" a pk.Image (image=build); got {self.image!r}"
            )

    @property
    def image_from(self) -> str | None:
        """The stage whose image the service starts from, or None for a named image."""
        return self.image.stage if isinstance(self.image, _StageImage) else None


@attrs.frozen
class Outcome:
    """What a post action sees: how the stage (or, for pipeline post actions, the run) ended."""

    status: str
    stage: str | None = None
    error: str | None = None
    attempts: int = 1
    duration_s: float | None = None
    stages: Mapping[str, str] = attrs.field(factory=dict)  # pipeline outcome: each stage's status

    @property
    def failed(self) -> bool:
        return self.status not in ("succeeded", "skipped")


PostAction = Callable[..., Any]


def normalize_post(
    post: Mapping[str, PostAction | Sequence[PostAction]] | None, where: str
) -> dict[str, tuple[PostAction, ...]]:
    if not post:
        return {}
    if not isinstance(post, Mapping):
        raise PipelineError(f"post= takes a mapping like {{'failure': notify}}, got {post!r}", location=where)
    out: dict[str, tuple[PostAction, ...]] = {}
    for when, actions in post.items():
        if when not in POST_WHEN:
            raise PipelineError(f"post= has '{when}'; post actions run at: {', '.join(POST_WHEN)}", location=where)
        items = tuple(actions) if isinstance(actions, (list, tuple)) else (actions,)
        for a in items:
            if not callable(a):
                raise PipelineError(f"post['{when}'] takes functions (ctx, outcome), got {a!r}", location=where)
        out[when] = items
    return out


def check_placement(placement: Sequence[str] | None, bad: Callable[[str], PipelineError]) -> tuple[str, ...]:
    """``placement=``: Swarm constraints such as ``node.labels.gpu==true`` or ``node.role!=manager``."""
    if placement is None:
        return ()
    if isinstance(placement, str) or not all(isinstance(c, str) for c in placement):
        raise bad(f"placement= takes a list of constraints like ['node.labels.gpu==true'], got {placement!r}")
    for c in placement:
        if "==" not in c and "!=" not in c:
            raise bad(f"placement= takes constraints of the form 'node.labels.NAME==VALUE' (or !=), got {c!r}")
    return tuple(c.strip() for c in placement)

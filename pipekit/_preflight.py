"""The checks before a run: what would only fail twenty minutes in is found before anything starts.

Every secret a stage that would run refers to (in its ``env``, its services' or the pipeline's;
in its code: ``ctx.secret("NAME")``, ``pk.secret("NAME")``, and module-level secrets and
``pk.Credentials`` it or a function of its module uses), the registry login of a swarm, and
every named image it or its services run in (present in the engine, or known to its registry:
nothing is pulled). All problems are reported at once.
"""

from __future__ import annotations

import dis
from collections.abc import Callable, Iterator
from types import CodeType, FunctionType
from typing import Any

from pipekit._resolve import ResolvedPlan, ResolvedStage
from pipekit._secrets import Credentials, Secret, SecretStore
from pipekit.backend import ImageBackend
from pipekit.exceptions import UsageError

__all__ = ["check", "problems"]


def _running(resolved: ResolvedPlan) -> Iterator[ResolvedStage]:
    for name in resolved.order:
        r = resolved[name]
        if r.skip is None and r.restore is None:
            yield r


def _codes(code: CodeType) -> Iterator[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _codes(const)


def _held(name: str, value: Any, depth: int = 0) -> Iterator[tuple[str, str]]:
    """The secrets a module-level value holds: (secret name, how the code refers to it)."""
    if isinstance(value, Secret):
        yield value.name, f"through {name} = pk.secret(...)"
    elif isinstance(value, Credentials):
        for part in (value.username, value.password):
            if isinstance(part, Secret):
                yield part.name, f"for the registry login {name} = pk.Credentials(...)"
    elif depth < 2 and isinstance(value, (dict, list, tuple, set, frozenset)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _held(name, item, depth + 1)


_LOOKUPS = ("LOAD_ATTR", "LOAD_METHOD", "LOAD_GLOBAL", "LOAD_NAME")


def _named_in_code(code: CodeType) -> Iterator[str]:
    """The names of ``ctx.secret("NAME")`` and ``pk.secret("NAME")`` calls written with a literal."""
    expect = False
    for ins in dis.get_instructions(code):
        if ins.opname in ("PUSH_NULL", "CACHE", "EXTENDED_ARG"):
            continue
        if expect and ins.opname == "LOAD_CONST" and isinstance(ins.argval, str) and ins.argval.isidentifier():
            yield ins.argval
        expect = ins.opname in _LOOKUPS and ins.argval == "secret"


def code_secrets(fn: Callable[..., Any]) -> dict[str, str]:
    """Every secret a stage function's code refers to, with how: literal ``secret("NAME")`` calls,
    and the module-level secrets and ``pk.Credentials`` it uses, also through the functions of its
    module it calls (and their closures)."""
    found: dict[str, str] = {}
    todo, seen = [fn], set()
    while todo:
        f = todo.pop()
        code = getattr(f, "__code__", None)
        if not isinstance(code, CodeType) or id(f) in seen:
            continue
        seen.add(id(f))
        if getattr(f, "__wrapped__", None) is not None:
            todo.append(f.__wrapped__)
        names = getattr(f, "__globals__", {})
        values = [(n, names[n]) for c in _codes(code) for n in c.co_names if n in names]
        for var, cell in zip(code.co_freevars, getattr(f, "__closure__", None) or ()):
            try:
                values.append((var, cell.cell_contents))
            except ValueError:  # a cell not filled yet
                pass
        for name, value in values:
            for secret_name, how in _held(name, value):
                found.setdefault(secret_name, how)
            if isinstance(value, FunctionType) and getattr(value, "__globals__", None) is names:
                todo.append(value)  # a helper of the same module
        for c in _codes(code):
            for secret_name in _named_in_code(c):
                found.setdefault(secret_name, f"in its code: secret({secret_name!r})")
    return found


def _secret_problems(resolved: ResolvedPlan, secrets: SecretStore) -> list[str]:
    found = []
    by_code: dict[int, dict[str, str]] = {}
    for r in _running(resolved):
        wanted = {v.name: "" for v in r.env.values() if isinstance(v, Secret)}
        for svc in r.services:
            wanted.update({v.name: "" for v in svc.env.values() if isinstance(v, Secret)})
        fn = r.stage.fn
        if id(fn) not in by_code:
            by_code[id(fn)] = code_secrets(fn)
        for name, how in by_code[id(fn)].items():
            wanted.setdefault(name, how)
        for name, how in wanted.items():
            if not secrets.has(name):
                found.append(
                    f"stage '{r.name}' needs the secret '{name}', which is not set{f' (used {how})' if how else ''}:"
                    " set it in the environment or in the --secrets-file"
                )
    return found


def _registry_login_problems(backend: Any, secrets: SecretStore) -> list[str]:
    """A swarm's registry login (PIPEKIT_REGISTRY_USER and _PASSWORD) is both or neither."""
    if not getattr(backend, "images_need_registry", False) or not getattr(backend, "registry", None):
        return []
    from pipekit._swarm import REGISTRY_PASSWORD, REGISTRY_USER

    if secrets.has(REGISTRY_USER) and not secrets.has(REGISTRY_PASSWORD):
        return [
            f"the registry login for {backend.registry} needs the secret '{REGISTRY_PASSWORD}'"
            f" ({REGISTRY_USER} is set), which is not set: set it in the environment or in the --secrets-file"
        ]
    return []


def _image_problems(resolved: ResolvedPlan, images: ImageBackend) -> list[str]:
    found: list[str] = []
    seen: dict[str, str | None] = {}
    for r in _running(resolved):
        if r.on_host:
            continue
        for image in [r.image, *(svc.image for svc in r.services)]:
            if image is None:
                continue
            if image not in seen:
                seen[image] = images.image_problem(image)
            if seen[image]:
                found.append(
                    f"stage '{r.name}' runs in '{image}': {seen[image]}. Build or pull it, or map it"
                    f" with --image-map {image}=LOCAL_IMAGE (--no-image-check skips this check)"
                )
    return found


def _travel_problems(resolved: ResolvedPlan, backend: Any) -> list[str]:
    """A backend whose stages run on other machines than the one that builds images (a swarm)
    needs a registry for every stage that runs in an image the run builds."""
    if not getattr(backend, "images_need_registry", False) or getattr(backend, "registry", None):
        return []
    return [
        f"stage '{r.name}' runs in the {r.describe_image()}, which the {backend.name} backend's nodes can only"
        " pull from a registry: give one with --registry HOST[:PORT] (or PIPEKIT_REGISTRY)"
        for r in _running(resolved)
        if not r.on_host and (r.stage.image_from or r.stage.dockerfile)
    ]


def problems(
    resolved: ResolvedPlan, secrets: SecretStore, images: ImageBackend | None, backend: Any = None
) -> list[str]:
    """Everything that would fail a stage for want of a secret, an image (images: when given) or a
    registry (for the backend, when given)."""
    found = _secret_problems(resolved, secrets) + _registry_login_problems(backend, secrets)
    found += _travel_problems(resolved, backend)
    if images is not None:
        found += _image_problems(resolved, images)
    return found


def check(resolved: ResolvedPlan, secrets: SecretStore, images: ImageBackend | None, backend: Any = None) -> None:
    """Raise one UsageError (exit 2) listing every problem, when there is any."""
    found = problems(resolved, secrets, images, backend)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise UsageError(f"{len(found)} problem(s) found before the run; nothing was started:\n{lines}")

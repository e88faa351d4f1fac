"""The checks before a run: what would only fail twenty minutes in is found before anything starts.

Every secret a stage that would run refers to (in its ``env``, its services' or the pipeline's;
in its code: ``ctx.secret("NAME")``, ``pk.secret("NAME")``, and module-level secrets and
``pk.Credentials`` it or a function of its module uses), the registry login of a swarm, and
every named image it or its services run in (present in the engine, or known to its registry:
nothing is pulled). All problems are reported at once.
"""

from __future__ import annotations

import ast
import dis
import inspect
import os
import textwrap
from collections.abc import Callable, Iterable, Iterator
from types import CodeType, FunctionType
from typing import Any

import attrs

from pipekit._dsl.secrets import Credentials, Secret, SecretStore
from pipekit._plan.resolve import ResolvedPlan, ResolvedStage
from pipekit.backend import ImageBackend
from pipekit.exceptions import UsageError

__all__ = ["builds", "check", "code_builds", "code_secrets", "problems", "unused_mappings"]


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


def _functions(fn: Callable[..., Any]) -> Iterator[tuple[Callable[..., Any], list[tuple[str, Any]]]]:
    """A stage function and the functions of its module it calls (directly or not), each with the
    module-level and closure values its code uses."""
    todo, seen = [fn], set()
    while todo:
        f = todo.pop()
        code = getattr(f, "__code__", None)
        if not isinstance(code, CodeType) or id(f) in seen:
            continue
        seen.add(id(f))
        wrapped = getattr(f, "__wrapped__", None)
        if wrapped is not None:
            todo.append(wrapped)
        names = getattr(f, "__globals__", {})
        values = [(n, names[n]) for c in _codes(code) for n in c.co_names if n in names]
        for var, cell in zip(code.co_freevars, getattr(f, "__closure__", None) or ()):
            try:
                values.append((var, cell.cell_contents))
            except ValueError:  # a cell not filled yet
                pass
        todo += [v for _n, v in values if isinstance(v, FunctionType) and getattr(v, "__globals__", None) is names]
        yield f, values


def code_secrets(fn: Callable[..., Any]) -> dict[str, str]:
    """Every secret a stage function's code refers to, with how: literal ``secret("NAME")`` calls,
    and the module-level secrets and ``pk.Credentials`` it uses, also through the functions of its
    module it calls (and their closures)."""
    found: dict[str, str] = {}
    for f, values in _functions(fn):
        for name, value in values:
            for secret_name, how in _held(name, value):
                found.setdefault(secret_name, how)
        for c in _codes(f.__code__):
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
    if backend is None or not backend.capabilities.images_need_registry or not backend.registry:
        return []
    from pipekit._backends.swarm.backend import REGISTRY_PASSWORD, REGISTRY_USER

    if secrets.has(REGISTRY_USER) and not secrets.has(REGISTRY_PASSWORD):
        return [
            f"the registry login for {backend.registry} needs the secret '{REGISTRY_PASSWORD}'"
            f" ({REGISTRY_USER} is set), which is not set: set it in the environment or in the --secrets-file"
        ]
    return []


def _text(node: ast.expr | None, default: str | None) -> str | None:
    if node is None:
        return default
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _calls(fn: Callable[..., Any]) -> Iterator[ast.Call]:
    """The ``ctx.docker.X(...)`` calls written in a function."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) and func.value.attr == "docker":
            yield node  # type: ignore[misc]


def code_builds(fn: Callable[..., Any]) -> tuple[list[tuple[str, str]], set[str]]:
    """The builds a stage's code makes with literal arguments, ``ctx.docker.build(context,
    dockerfile)`` as (context, dockerfile); and the tags it gives images (``build(tag=)``,
    ``tag(image, REF)``), which a later FROM may name before they exist."""
    builds: list[tuple[str, str]] = []
    tags: set[str] = set()
    for f, _values in _functions(fn):
        for call in _calls(f):
            args = [*call.args, None, None, None]
            kw = {k.arg: k.value for k in call.keywords if k.arg}
            attr = call.func.attr  # type: ignore[attr-defined]
            if attr == "build":
                context = _text(kw.get("context", args[0]), ".")
                dockerfile = _text(kw.get("dockerfile", args[1]), "Dockerfile")
                if context is not None and dockerfile is not None:
                    builds.append((context, dockerfile))
                tags.add(_text(kw.get("tag", args[2]), "") or "")
            elif attr == "tag":
                tags.add(_text(kw.get("ref", args[1]), "") or "")
    return builds, tags - {""}


@attrs.frozen
class _Build:
    stage: str
    dockerfile: str  # as the stage names it, relative to the workspace
    images: tuple[str, ...]  # its FROM images, before --image-map


def builds(resolved: ResolvedPlan, names: Iterable[str]) -> tuple[list[_Build], set[str]]:
    """The Dockerfiles the stages build from (``dockerfile=`` and literal ``ctx.docker.build``
    calls) with their FROM images, and the image names the run itself makes."""
    from pipekit._backends.docker.dockerfile import from_images

    found: list[_Build] = []
    made: set[str] = set()
    by_code: dict[int, tuple[list[tuple[str, str]], set[str]]] = {}  # a matrix's stages share one function
    for name in names:
        r = resolved[name]
        files = [r.stage.dockerfile] if r.stage.dockerfile else []
        made |= {r.build_tag} if r.build_tag else set()
        if id(r.stage.fn) not in by_code:
            by_code[id(r.stage.fn)] = code_builds(r.stage.fn)
        calls, tags = by_code[id(r.stage.fn)]
        made |= tags
        files += [os.path.normpath(os.path.join(context, dockerfile)) for context, dockerfile in calls]
        for file in dict.fromkeys(files):
            try:
                text = (resolved.workspace / file).read_text()
            except (OSError, UnicodeDecodeError):
                continue  # the build says what is wrong with it
            found.append(_Build(name, file, tuple(from_images(text))))
    return found, made


def _image_problems(resolved: ResolvedPlan, images: ImageBackend) -> list[str]:
    found: list[str] = []
    seen: dict[str, str | None] = {}

    def problem(image: str) -> str | None:
        if image not in seen:
            seen[image] = images.image_problem(image)
        return seen[image]

    running = list(_running(resolved))
    for r in running:
        if r.on_host:
            continue
        for image in [r.image, *(svc.image for svc in r.services if not svc.image_from)]:
            if image is not None and problem(image):
                found.append(
                    f"stage '{r.name}' runs in '{image}': {seen[image]}. Build or pull it, or map it"
                    f" with --image-map {image}=LOCAL_IMAGE (--no-image-check skips this check)"
                )
    made, built = builds(resolved, [r.name for r in running])
    built |= {r.build_tag for r in resolved.stages.values() if r.build_tag}
    for b in made:
        for image in b.images:
            local = resolved.image_map.get(image, image)
            if image in built or local in built or not problem(local):
                continue
            mapped = f" (mapped to '{local}')" if local != image else ""
            found.append(
                f"stage '{b.stage}' builds {b.dockerfile} FROM '{image}'{mapped}: {seen[local]}. Build or pull it,"
                f" or map it with --image-map {image}=LOCAL_IMAGE (--no-image-check skips this check)"
            )
    return found


def unused_mappings(resolved: ResolvedPlan) -> list[str]:
    """The ``--image-map`` entries that name no image of the pipeline (a stage's, a service's, or
    a FROM line of a Dockerfile it builds): most likely a typo."""
    if not resolved.image_map:
        return []
    pipeline = resolved.plan.pipeline
    known = {pipeline.image_for(r.stage) for r in resolved.stages.values()}
    known |= {svc.image for r in resolved.stages.values() for svc in r.stage.services}
    made, _built = builds(resolved, resolved.order)
    known |= {image for b in made for image in b.images}
    return [
        f"--image-map {image}={local} matches nothing: no stage, service or Dockerfile FROM line of"
        f" this pipeline names '{image}'"
        for image, local in resolved.image_map.items()
        if image not in known
    ]


def _travel_problems(resolved: ResolvedPlan, backend: Any) -> list[str]:
    """A backend whose stages run on other machines than the one that builds images (a swarm)
    needs a registry for every stage that runs in an image the run builds."""
    if backend is None or not backend.capabilities.images_need_registry or backend.registry:
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


def check(
    resolved: ResolvedPlan,
    secrets: SecretStore,
    images: ImageBackend | None,
    backend: Any = None,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Raise one UsageError (exit 2) listing every problem, when there is any; ``warn`` hears of
    what is likely a mistake but stops nothing (an ``--image-map`` that matches nothing)."""
    if warn is not None:
        for message in unused_mappings(resolved):
            warn(message)
    found = problems(resolved, secrets, images, backend)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise UsageError(f"{len(found)} problem(s) found before the run; nothing was started:\n{lines}")

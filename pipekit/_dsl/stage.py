"""Stages and pipelines: the objects that ``@pk.stage`` and ``pk.Pipeline`` make.

Defining a stage has no side effect outside the user's own module: a bare ``@pk.stage`` notes the
stage in the defining module's namespace (``__pipekit_stages__``) so that the loader can find every
stage defined there, including ones that a later definition shadowed.  ``@pipeline.stage`` adds the
stage to that pipeline object instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

import attrs

from pipekit._dsl.cache import CacheInputs
from pipekit._dsl.conditions import Condition, to_condition
from pipekit._dsl.control import PostAction, Resources, Service, check_placement, check_stage_options, normalize_post
from pipekit._dsl.matrix import validate_matrix
from pipekit._dsl.params import Param
from pipekit._dsl.secrets import Secret
from pipekit._dsl.signature import Parameter, _parameters
from pipekit._dsl.triggers import Trigger, check_triggers
from pipekit.exceptions import PipelineError

__all__ = ["Pipeline", "Stage", "image_description", "post", "stage"]

MODULE_REGISTRY = "__pipekit_stages__"
POST_REGISTRY = "__pipekit_posts__"
#: the options check_stage_options validates
STAGE_OPTIONS = frozenset(inspect.signature(check_stage_options).parameters) - {"bad", "has_image"}

F = TypeVar("F", bound=Callable[..., Any])


EnvValue = str | Secret


def _freeze_env(env: Mapping[str, object] | None) -> Mapping[str, EnvValue]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise PipelineError(f"env must be a mapping of names to values, got {type(env).__name__}")
    return {str(k): v if isinstance(v, Secret) else str(v) for k, v in env.items()}


def _location(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        return "<unknown>"
    return f"{code.co_filename}:{code.co_firstlineno}"


@attrs.frozen(eq=False)
class Stage:
    """A stage: a function plus how and where to run it.

    ``stage.fn`` is the plain function; calling the stage calls it, so tests can use a stage
    like the function it decorates.
    """

    fn: Callable[..., Any]
    name: str
    image: str | None = None
    needs: tuple[str, ...] = ()
    env: Mapping[str, EnvValue] = attrs.field(factory=dict)
    parameters: tuple[Parameter, ...] = ()
    location: str = "<unknown>"
    image_from: str | None = None  # a stage whose pk.Image this stage runs in
    dockerfile: str | None = None  # a Dockerfile (relative to the workspace) to build the image from
    when: Condition | None = None
    timeout: float | None = None  # seconds, per attempt
    retries: int = 0
    backoff: float = 0.0  # seconds before the first retry, doubled for each further one
    allow_failure: bool = False
    matrix: Mapping[str, tuple[Any, ...]] | None = None
    exclude: tuple[Mapping[str, Any], ...] = ()
    include: tuple[Mapping[str, Any], ...] = ()
    services: tuple[Service, ...] = ()
    resource: str | None = None
    post: Mapping[str, tuple[PostAction, ...]] = attrs.field(factory=dict)
    cache: CacheInputs | None = None
    cache_dirs: tuple[str, ...] = ()
    workdir: str | None = None  # where commands start: relative to the workspace, or absolute
    workspace: bool = True  # False: no workspace in the container; commands start in the image's WORKDIR
    resources: Resources | None = None  # limits (cpus, memory, pids); the pipeline's when None
    placement: tuple[str, ...] = ()  # Swarm constraints (node.labels.gpu==true); the pipeline's when empty
    # set on the instances of a matrix stage:
    group: str | None = None
    matrix_values: Mapping[str, Any] | None = None

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every stage this one depends on: needs, inputs, and the stage that builds its image."""
        names = [*self.needs, *self.inputs, *self.optional_inputs]
        if self.image_from:
            names.append(self.image_from)
        return tuple(dict.fromkeys(names))

    @property
    def value_inputs(self) -> tuple[str, ...]:
        """The stages whose value this stage cannot run without (parameters, image)."""
        names = list(self.inputs)
        if self.image_from:
            names.append(self.image_from)
        return tuple(dict.fromkeys(names))

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the stages whose results this stage receives as arguments."""
        return tuple(p.name for p in self.parameters if not p.is_context and not p.has_default)

    @property
    def optional_inputs(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters if not p.is_context and p.has_default)

    @property
    def wants_context(self) -> str | None:
        for p in self.parameters:
            if p.is_context:
                return p.name
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Stage {self.name!r} at {self.location}>"


def _need_names(needs: Iterable[Stage | str | Callable[..., Any]] | None, where: str) -> tuple[str, ...]:
    if needs is None:
        return ()
    if isinstance(needs, (str, Stage)):
        needs = [needs]
    names = []
    for n in needs:
        if isinstance(n, Stage):
            names.append(n.name)
        elif isinstance(n, str):
            names.append(n)
        else:
            raise PipelineError(
                f"needs= takes stages or stage names, got {n!r}; decorate the function with"
                " @pk.stage or pass its name as a string",
                location=where,
            )
    return tuple(dict.fromkeys(names))


ImageOption = str | Stage | None


def _make_stage(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    image: ImageOption = None,
    needs: Iterable[Stage | str] | None = None,
    env: Mapping[str, object] | None = None,
    when: Any = None,
    matrix: Mapping[str, Sequence[Any]] | None = None,
    exclude: Sequence[Mapping[str, Any]] = (),
    include: Sequence[Mapping[str, Any]] = (),
    post: Mapping[str, Any] | None = None,
    **control: Any,
) -> Stage:
    if isinstance(fn, Stage):
        raise PipelineError(f"{fn!r} is decorated as a stage twice", location=fn.location)
    if not callable(fn):
        raise PipelineError(f"@stage decorates functions, got {fn!r}")
    location = _location(fn)
    stage_name = name or fn.__name__

    def bad(message: str) -> PipelineError:
        return PipelineError(f"Stage '{stage_name}': {message}", stage=stage_name, location=location)

    if image is not None and not isinstance(image, (str, Stage)):
        raise bad(f"image= takes an image name such as 'alpine:3.20' or a stage that returns a pk.Image, got {image!r}")
    if isinstance(image, str) and not image.strip():
        raise bad("image= is empty: give an image name, or leave image= out to run the stage on the host")
    unknown = sorted(set(control) - STAGE_OPTIONS)
    if unknown:
        import difflib

        known = [*STAGE_OPTIONS, "name", "image", "needs", "env", "when", "matrix", "exclude", "include", "post"]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f". Did you mean {close[0]}=?" if close else ""
        raise bad(f"@pk.stage has no option {unknown[0]}={hint}")
    fields = check_stage_options(bad, image is not None, **control)
    return Stage(
        fn=fn,
        name=stage_name,
        image=image if isinstance(image, str) and image else None,
        image_from=image.name if isinstance(image, Stage) else None,
        needs=_need_names(needs, location),
        env=_freeze_env(env),
        parameters=_parameters(fn, stage_name, location),
        location=location,
        when=to_condition(when) if when is not None else None,
        matrix=validate_matrix(matrix, location, stage_name) if matrix is not None else None,
        exclude=tuple(dict(e) for e in exclude),
        include=tuple(dict(i) for i in include),
        post=normalize_post(post, location),
        **fields,
    )


@overload
def stage(fn: F, /) -> Stage: ...


@overload
def stage(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    image: ImageOption = None,
    needs: Iterable[Stage | str] | None = None,
    env: Mapping[str, object] | None = None,
    dockerfile: str | None = None,
    when: Any = None,
    timeout: float | str | None = None,
    retries: int = 0,
    backoff: float = 0.0,
    allow_failure: bool = False,
    matrix: Mapping[str, Sequence[Any]] | None = None,
    exclude: Sequence[Mapping[str, Any]] = (),
    include: Sequence[Mapping[str, Any]] = (),
    services: Sequence[Service] = (),
    resource: str | None = None,
    post: Mapping[str, Any] | None = None,
    cache: CacheInputs | None = None,
    cache_dirs: Sequence[str] = (),
    workdir: str | None = None,
    workspace: bool = True,
    resources: Resources | None = None,
    placement: Sequence[str] = (),
) -> Callable[[F], Stage]: ...


def stage(fn: Callable[..., Any] | None = None, /, **options: Any) -> Stage | Callable[[Callable[..., Any]], Stage]:
    """Declare a stage: ``@pk.stage`` or ``@pk.stage(image=..., needs=[...], ...)``.

    A parameter named ``ctx`` receives the :class:`pipekit.Context`; every other parameter names a
    stage, which this stage then depends on and whose return value it receives. ``image`` may be a
    stage that returns a ``pk.Image``; ``dockerfile`` builds the stage's image from that file.
    See docs/dsl.md and docs/control.md for every option.
    """

    def decorate(f: Callable[..., Any]) -> Stage:
        s = _make_stage(f, **options)
        module_globals = getattr(f, "__globals__", None)
        if isinstance(module_globals, dict):
            module_globals.setdefault(MODULE_REGISTRY, []).append(s)
        return s

    if fn is not None:
        return decorate(fn)
    return decorate


@attrs.frozen
class PostHook:
    """A pipeline-level post action."""

    when: str
    fn: Callable[..., Any]
    location: str


def _make_post(when: str, fn: Callable[..., Any]) -> PostHook:
    location = _location(fn)
    normalize_post({when: fn}, location)
    return PostHook(when, fn, location)


def post(when: str) -> Callable[[F], F]:
    """A pipeline-level post action: ``@pk.post("failure")`` on a function ``(ctx, outcome)``.

    ``when`` is one of always, success, failure, cleanup (run in that order after every stage).
    """

    def decorate(f: F) -> F:
        hook = _make_post(when, f)
        module_globals = getattr(f, "__globals__", None)
        if isinstance(module_globals, dict):
            module_globals.setdefault(POST_REGISTRY, []).append(hook)
        return f

    return decorate


class Pipeline:
    """A named set of stages with defaults (image, env) for all of them.

    Either made explicitly in pipeline.py (``pipeline = pk.Pipeline(name="ci", image="alpine")``
    and ``@pipeline.stage``), or made by :func:`pipekit.load` from the stages a module defines.
    """

    def __init__(
        self,
        name: str = "pipeline",
        *,
        image: str | None = None,
        env: Mapping[str, object] | None = None,
        stages: Iterable[Stage] = (),
        path: str | None = None,
        resources: Resources | None = None,
        placement: Sequence[str] = (),
        triggers: Iterable[Trigger] = (),
    ) -> None:
        self.name = name
        self.image = image or None
        self.resources = resources
        self.placement = check_placement(placement, lambda message: PipelineError(f"pk.Pipeline: {message}"))
        self.env: Mapping[str, EnvValue] = _freeze_env(env)
        self.path = path
        self._stages: list[Stage] = []
        self._ids: set[int] = set()  # the stages' ids: adding one is O(1), also for 10,000 stages
        self.params: dict[str, Param] = {}  # the pk.param values of its module (pipekit.load collects them)
        self.triggers = check_triggers(triggers)
        self.secret_names: set[str] = {v.name for v in self.env.values() if isinstance(v, Secret) and v.mask}
        self.posts: list[PostHook] = []
        for s in stages:
            self.add(s)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(self._stages)

    def add(self, s: Stage) -> Stage:
        """Add a stage made elsewhere (for example with ``pk.stage``) to this pipeline."""
        if id(s) not in self._ids:
            self._ids.add(id(s))
            self._stages.append(s)
            self.secret_names |= {v.name for v in s.env.values() if isinstance(v, Secret) and v.mask}
            for svc in s.services:
                self.secret_names |= {v.name for v in svc.env.values() if isinstance(v, Secret) and v.mask}
        return s

    def add_post(self, hook: PostHook) -> None:
        if not any(hook is existing for existing in self.posts):
            self.posts.append(hook)

    @overload
    def stage(self, fn: F, /) -> Stage: ...

    @overload
    def stage(self, fn: None = None, /, **options: Any) -> Callable[[F], Stage]: ...

    def stage(
        self, fn: Callable[..., Any] | None = None, /, **options: Any
    ) -> Stage | Callable[[Callable[..., Any]], Stage]:
        """Like :func:`pipekit.stage`, adding the stage to this pipeline."""

        def decorate(f: Callable[..., Any]) -> Stage:
            return self.add(_make_stage(f, **options))

        if fn is not None:
            return decorate(fn)
        return decorate

    def post(self, when: str) -> Callable[[F], F]:
        """A pipeline-level post action on this pipeline: ``@pipeline.post("failure")``."""

        def decorate(f: F) -> F:
            self.add_post(_make_post(when, f))
            return f

        return decorate

    def image_for(self, s: Stage) -> str | None:
        """The named image a stage runs in: its own, else the pipeline's; None: the host, or an
        image that another stage or a Dockerfile makes (``image_from``, ``dockerfile``)."""
        if s.image_from or s.dockerfile:
            return None
        return s.image or self.image

    def describe_image(self, s: Stage) -> str:
        """How the stage's image is chosen, for listings and plans."""
        return image_description(s, self.image_for(s))

    def env_for(self, s: Stage) -> dict[str, EnvValue]:
        """Pipeline environment overlaid with the stage's."""
        return {**self.env, **s.env}

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r} with {len(self._stages)} stages>"


def image_description(s: Stage, image: str | None) -> str:
    """How a stage's image is chosen, for listings and plans; ``image``: the named one it runs in."""
    if s.image_from:
        return f"image of stage {s.image_from}"
    if s.dockerfile:
        return f"built from {s.dockerfile}"
    return image or "host"

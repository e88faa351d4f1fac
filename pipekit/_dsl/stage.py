"""Stages and pipelines: the objects that ``@pk.stage`` and ``pk.Pipeline`` make.

Defining a stage has no side effect outside the user's own module: a bare ``@pk.stage`` notes the
stage in the defining module's namespace (``__pipekit_stages__``) so that the loader can find every
stage defined there, including ones that a later definition shadowed.  ``@pipeline.stage`` adds the
stage to that pipeline object instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, overload

import attrs

from pipekit._dsl.approval import Approval, Environment
from pipekit._dsl.cache import CacheInputs
from pipekit._dsl.conditions import Condition, to_condition
from pipekit._dsl.control import PostAction, Resources, Service, check_placement, normalize_post
from pipekit._dsl.matrix import validate_matrix
from pipekit._dsl.options import (
    Option,
    Site,
    check_allow_failure,
    check_approval,
    check_backoff,
    check_cache,
    check_cache_dirs,
    check_dockerfile,
    check_environment,
    check_resource,
    check_resources,
    check_retries,
    check_services,
    check_stage_placement,
    check_timeout,
    check_workdir,
    check_workspace,
    unknown_option,
)
from pipekit._dsl.params import Param
from pipekit._dsl.secrets import Secret
from pipekit._dsl.signature import Parameter, _parameters
from pipekit._dsl.triggers import Trigger, check_triggers
from pipekit.exceptions import PipelineError

if TYPE_CHECKING:
    from typing_extensions import Unpack  # (typing has it from 3.11 only; never imported at run time)

__all__ = ["Pipeline", "Stage", "image_description", "post", "stage"]

MODULE_REGISTRY = "__pipekit_stages__"
POST_REGISTRY = "__pipekit_posts__"

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
    approval: Approval | None = None  # a person approves before the stage starts
    environment: Environment | None = None  # where the stage deploys: one run at a time per environment
    # set on the instances of a matrix stage:
    group: str | None = None
    matrix_values: Mapping[str, Any] | None = None

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every stage this one depends on: needs, inputs, and the stage that builds its image."""
        names = [*self.needs, *self.inputs, *self.optional_inputs]
        if self.image_from:
            names.append(self.image_from)
        names.extend(self.service_images)
        return tuple(dict.fromkeys(names))

    @property
    def service_images(self) -> tuple[str, ...]:
        """The stages whose images this stage's services start from (``pk.Service(image=build)``)."""
        return tuple(dict.fromkeys(svc.image_from for svc in self.services if svc.image_from))

    @property
    def value_inputs(self) -> tuple[str, ...]:
        """The stages whose value this stage cannot run without (parameters, image)."""
        names = list(self.inputs)
        if self.image_from:
            names.append(self.image_from)
        names.extend(self.service_images)
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


def _check_image(image: ImageOption, site: Site) -> ImageOption:
    if image is not None and not isinstance(image, (str, Stage)):
        raise site.bad(
            f"image= takes an image name such as 'alpine:3.20' or a stage that returns a pk.Image, got {image!r}"
        )
    if isinstance(image, str) and not image.strip():
        raise site.bad("image= is empty: give an image name, or leave image= out to run the stage on the host")
    return image


def _one_per_item(value: Sequence[Mapping[str, Any]], site: Site) -> tuple[Mapping[str, Any], ...]:
    return tuple(dict(e) for e in value)


_RETRY = "[timeouts, retries and allowed failures](timeouts-and-retries.md)"
_MATRIX = "one instance per combination ([matrix](matrix.md))"
_CACHE = "reuse results and keep directories across runs ([history](history.md))"

#: The options of ``@pk.stage``, in the order of the docs' table: the one definition that the
#: decorator's check, its did-you-mean and docs/dsl.md's table come from, and that ``StageOptions`` below
#: (the types the overloads of ``stage`` and ``Pipeline.stage`` unpack) is tested against (tests/test_stage.py).
STAGE_OPTIONS: tuple[Option, ...] = (
    Option(
        "image",
        "ImageOption",
        None,
        "the image the stage's container is made from; without one (and no pipeline default) the stage runs"
        " on the host",
        _check_image,
    ),
    Option(
        "needs",
        "Iterable[Stage | str] | None",
        None,
        "stages (the decorated functions or their names) that must succeed first; no value is passed",
        lambda value, site: _need_names(value, site.location),
    ),
    Option(
        "env",
        "Mapping[str, object] | None",
        None,
        "environment variables for every command of the stage",
        lambda value, site: _freeze_env(value),
    ),
    Option("name", "str | None", None, "the stage's name, if not the function's"),
    Option(
        "dockerfile",
        "str | None",
        None,
        "build the stage's image from this Dockerfile first ([images](images.md))",
        check_dockerfile,
    ),
    Option(
        "when",
        "Any",
        None,
        "run only when the condition holds ([conditions](conditions.md))",
        lambda value, site: to_condition(value) if value is not None else None,
    ),
    Option(
        "post",
        "Mapping[str, Any] | None",
        None,
        'post actions: `{"always": f, "success": f, "failure": f, "cleanup": f}` ([post actions](post-actions.md))',
        lambda value, site: normalize_post(value, site.location),
    ),
    Option("timeout", "float | str | None", None, _RETRY, check_timeout),
    Option("retries", "int", 0, _RETRY, check_retries),
    Option("backoff", "float", 0.0, _RETRY, check_backoff),
    Option("allow_failure", "bool", False, _RETRY, check_allow_failure),
    Option(
        "matrix",
        "Mapping[str, Sequence[Any]] | None",
        None,
        _MATRIX,
        lambda value, site: validate_matrix(value, site.location, site.stage) if value is not None else None,
    ),
    Option("exclude", "Sequence[Mapping[str, Any]]", (), _MATRIX, _one_per_item),
    Option("include", "Sequence[Mapping[str, Any]]", (), _MATRIX, _one_per_item),
    Option("services", "Sequence[Service]", (), "sidecar containers ([services](services.md))", check_services),
    Option("resource", "str | None", None, "hold a lock while running ([locks](locks.md))", check_resource),
    Option("cache", "CacheInputs | None", None, _CACHE, check_cache),
    Option("cache_dirs", "Sequence[str]", (), _CACHE, check_cache_dirs),
    Option(
        "resources",
        "Resources | None",
        None,
        '`pk.Resources(cpus=2, memory="4g", pids=512)`: the container\'s limits (a `pk.Pipeline(resources=...)`'
        " default applies to every stage); without `pids`, 4096 processes ([security](security.md))",
        check_resources,
    ),
    Option(
        "placement",
        "Sequence[str]",
        (),
        'Swarm constraints such as `["node.labels.gpu==true"]` (a `pk.Pipeline(placement=...)` default applies'
        " to every stage that has none); ignored on one engine ([swarm](swarm.md))",
        check_stage_placement,
    ),
    Option(
        "workdir",
        "str | None",
        None,
        'where the stage\'s commands start: a folder relative to the workspace (`workdir="frontend"`), or an'
        " absolute one in the image",
        check_workdir,
    ),
    Option(
        "workspace",
        "bool",
        True,
        "`False`: the container gets no workspace at all, and commands start in the image's own `WORKDIR`; for"
        " smoke tests of a built image ([images](images.md#smoke-testing-the-image-itself)). Needs an image.",
        check_workspace,
    ),
    Option(
        "approval",
        "Approval | None",
        None,
        '`pk.Approval(message=..., approvers=[...], timeout="24h", params=[...])`: a person approves before the'
        " stage starts ([approvals](approvals.md))",
        check_approval,
    ),
    Option(
        "environment",
        "str | Environment | None",
        None,
        'the environment the stage deploys to (`"production"`, or `pk.Environment("production", queue="newest")`):'
        " one run at a time per environment, recorded for `pipekit deployments`"
        " ([approvals](approvals.md#environments))",
        check_environment,
    ),
)


class StageOptions(TypedDict, total=False):
    """``@pk.stage``'s options as type checkers and IDEs read them (``**options: Unpack[StageOptions]``
    in the overloads of ``stage`` and ``Pipeline.stage``): the names and types of ``STAGE_OPTIONS``,
    in its order, which tests/test_stage.py keeps equal to it. Defaults and checks are the table's."""

    image: ImageOption
    needs: Iterable[Stage | str] | None
    env: Mapping[str, object] | None
    name: str | None
    dockerfile: str | None
    when: Any
    post: Mapping[str, Any] | None
    timeout: float | str | None
    retries: int
    backoff: float
    allow_failure: bool
    matrix: Mapping[str, Sequence[Any]] | None
    exclude: Sequence[Mapping[str, Any]]
    include: Sequence[Mapping[str, Any]]
    services: Sequence[Service]
    resource: str | None
    cache: CacheInputs | None
    cache_dirs: Sequence[str]
    resources: Resources | None
    placement: Sequence[str]
    workdir: str | None
    workspace: bool
    approval: Approval | None
    environment: str | Environment | None


def _make_stage(fn: Callable[..., Any], **options: Any) -> Stage:
    if isinstance(fn, Stage):
        raise PipelineError(f"{fn!r} is decorated as a stage twice", location=fn.location)
    if not callable(fn):
        raise PipelineError(f"@stage decorates functions, got {fn!r}")
    location = _location(fn)
    site = Site(options.get("name") or fn.__name__, location, has_image=options.get("image") is not None)
    unknown = unknown_option(options, STAGE_OPTIONS, site)
    if unknown is not None:
        raise unknown
    fields = {opt.name: opt.check(options.get(opt.name, opt.default), site) for opt in STAGE_OPTIONS}
    image = fields.pop("image")
    fields["name"] = site.stage
    return Stage(
        fn=fn,
        image=image if isinstance(image, str) else None,
        image_from=image.name if isinstance(image, Stage) else None,
        parameters=_parameters(fn, site.stage, location),
        location=location,
        **fields,
    )


@overload
def stage(fn: F, /) -> Stage: ...


@overload
def stage(fn: None = None, /, **options: Unpack[StageOptions]) -> Callable[[F], Stage]: ...


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


def _params_by_name(params: Iterable[Param]) -> dict[str, Param]:
    if isinstance(params, (str, Param)) or not isinstance(params, Iterable):
        raise PipelineError(f"pk.Pipeline: params= takes a list of pk.param(...) values, got {params!r}")
    by_name: dict[str, Param] = {}
    for p in params:
        if not isinstance(p, Param):
            raise PipelineError(f"pk.Pipeline: params= takes pk.param(...) values, got {p!r}")
        if by_name.setdefault(p.name, p) != p:
            raise PipelineError(f"pk.Pipeline: params= declares the parameter '{p.name}' twice; declare it once")
    return by_name


class Pipeline:
    """A named set of stages with defaults (image, env) for all of them.

    Either made explicitly in pipeline.py (``pipeline = pk.Pipeline(name="ci", image="alpine")``
    and ``@pipeline.stage``), or made by :func:`pipekit.load` from the stages a module defines.

    Every parameter after ``name`` is keyword-only, as ``@pk.stage``'s options are: they are what a
    user writes in pipeline.py, read by their names, and a new one takes its place without an order
    to keep. So this constructor may take more than the 8 parameters that tests/test_architecture.py
    allows the internal ones (``WIDE_BY_DESIGN`` there).
    """

    def __init__(
        self,
        name: str = "pipeline",
        *,
        image: str | None = None,
        env: Mapping[str, object] | None = None,
        params: Iterable[Param] = (),
        resources: Resources | None = None,
        placement: Sequence[str] = (),
        triggers: Iterable[Trigger] = (),
        stages: Iterable[Stage] = (),
        path: str | None = None,
    ) -> None:
        self.name = name
        self.image = image or None
        self.resources = resources
        self.placement = check_placement(placement, lambda message: PipelineError(f"pk.Pipeline: {message}"))
        self.env: Mapping[str, EnvValue] = _freeze_env(env)
        self.path = path
        self._stages: list[Stage] = []
        self._ids: set[int] = set()  # the stages' ids: adding one is O(1), also for 10,000 stages
        # its own and the pk.param values of its module (pipekit.load collects them)
        self.params: dict[str, Param] = _params_by_name(params)
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
    def stage(self, fn: None = None, /, **options: Unpack[StageOptions]) -> Callable[[F], Stage]: ...

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

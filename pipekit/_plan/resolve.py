"""The resolved plan: everything about a run that can be decided before its first container.

For each stage of a :class:`pipekit.Plan`: which backend takes it (the host or the container
backend), the image it runs in after ``--image-map`` (or how its image is made), its layered
environment (secrets still by reference), its services, its cache volumes, and whether it is
skipped (its condition, or an input from a skipped stage) or restored by ``--resume``.
``--dry-run`` prints it without any backend; the scheduler only reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pipekit._core.util import slug
from pipekit._dsl.conditions import RunInfo
from pipekit._dsl.control import Resources, Service
from pipekit._dsl.stage import EnvValue, Stage, image_description
from pipekit._plan.graph import Plan
from pipekit.exceptions import PipekitError, PipelineError, StageFailed

__all__ = ["ResolvedPlan", "ResolvedStage", "resolve"]


@attrs.frozen
class ResolvedStage:
    """One stage as the run will treat it."""

    stage: Stage = attrs.field(repr=False)
    position: int
    on_host: bool
    image: str | None  # a named image after --image-map; None on the host or when made by the run
    build_tag: str | None = None  # the tag of the image built from ``stage.dockerfile``
    env: Mapping[str, EnvValue] = attrs.field(factory=dict, repr=False)
    services: tuple[Service, ...] = ()
    volumes: Mapping[str, str] = attrs.field(factory=dict)  # cache volume -> path in the container
    resources: Resources | None = None
    placement: tuple[str, ...] = ()  # Swarm constraints; only a backend that places stages uses them
    skip: str | None = None
    restore: tuple[str, str] | None = attrs.field(default=None, repr=False)  # (run id, output JSON)

    @property
    def name(self) -> str:
        return self.stage.name

    def describe_image(self) -> str:
        return image_description(self.stage, self.image)


@attrs.frozen
class ResolvedPlan:
    """The plan with every stage resolved, the workspace, and conditions that could not be decided."""

    plan: Plan = attrs.field(repr=False)
    workspace: Path
    stages: Mapping[str, ResolvedStage]
    condition_errors: Mapping[str, str] = attrs.field(factory=dict)
    image_map: Mapping[str, str] = attrs.field(factory=dict)  # --image-map: also for builds' FROM lines

    @property
    def order(self) -> tuple[str, ...]:
        return self.plan.order

    def __getitem__(self, name: str) -> ResolvedStage:
        return self.stages[name]

    @property
    def needs_container_backend(self) -> bool:
        return any(not r.on_host and r.skip is None and r.restore is None for r in self.stages.values())


def cache_volume(plan: Plan, s: Stage, path: str) -> str:
    """The named volume that keeps ``path`` of this stage across runs (one per pipeline, stage, path)."""
    group = s.group or s.name
    digest = hashlib.sha256(f"{plan.pipeline.path}\0{group}\0{path}".encode()).hexdigest()[:10]
    return f"pipekit-cache-{slug(plan.pipeline.name, lower=True)[:20]}-{slug(group, lower=True)[:20]}-{digest}"


def _map(image_map: Mapping[str, str], image: str) -> str:
    return image_map.get(image, image)


def _resolve_stage(plan: Plan, s: Stage, position: int, image_map: Mapping[str, str]) -> ResolvedStage:
    pipeline = plan.pipeline
    named = pipeline.image_for(s)
    made = bool(s.image_from or s.dockerfile)
    build_tag = None
    if s.dockerfile:
        build_tag = f"pipekit-dockerfile/{slug(pipeline.name, lower=True)}-{slug(s.group or s.name, lower=True)}:latest"
    services = tuple(
        svc if svc.image_from else attrs.evolve(svc, image=_map(image_map, svc.image)) for svc in s.services
    )
    on_host = named is None and not made
    if on_host and not s.workspace:
        raise PipelineError(
            f"Stage '{s.name}' has workspace=False but no image: a stage on the host always works in"
            " the pipeline's folder. Give it an image (or image=<stage that builds one>)",
            stage=s.name,
            location=s.location,
        )
    if not s.workspace and s.workdir and not s.workdir.startswith("/"):
        raise PipelineError(
            f"Stage '{s.name}' has workspace=False and a relative workdir={s.workdir!r}: with no"
            " workspace, give an absolute folder of the image",
            stage=s.name,
            location=s.location,
        )
    return ResolvedStage(
        stage=s,
        position=position,
        on_host=on_host,
        image=_map(image_map, named) if named else None,
        build_tag=build_tag,
        env=pipeline.env_for(s),
        services=services,
        volumes={cache_volume(plan, s, path): path for path in s.cache_dirs},
        resources=s.resources or pipeline.resources,
        placement=s.placement or pipeline.placement,
    )


def decide_skips(plan: Plan, info: RunInfo) -> dict[str, str]:
    """Which stages are skipped before the run starts, and why (conditions, skipped inputs).

    Raises :class:`StageFailed` naming the stage whose condition cannot be evaluated.
    """
    skip: dict[str, str] = {}
    for name in plan.order:
        s = plan.stage(name)
        if s.when is not None:
            try:
                met = s.when.evaluate(info)
            except PipekitError:
                raise
            except Exception as e:
                raise StageFailed(f"Stage '{name}': its condition raised {type(e).__name__}: {e}", stage=name) from e
            if not met:
                skip[name] = f"condition not met: {s.when}"
                continue
        for dep in s.value_inputs:
            if any(n in skip for n in plan.groups.get(dep, (dep,))):
                skip[name] = f"needs the value of skipped stage '{dep}'"
                break
    return skip


def resolve(
    plan: Plan,
    *,
    workspace: Path,
    info: RunInfo,
    image_map: Mapping[str, str] | None = None,
    restore: Mapping[str, tuple[str, str]] | None = None,
) -> ResolvedPlan:
    """Decide everything about the run that does not need a backend."""
    condition_errors: dict[str, str] = {}
    try:
        skip = decide_skips(plan, info)
    except StageFailed as e:
        skip, condition_errors = {}, {e.stage or "?": e.message}
    restore = restore or {}
    stages: dict[str, Any] = {}
    for position, name in enumerate(plan.order):
        r = _resolve_stage(plan, plan.stage(name), position, image_map or {})
        stages[name] = attrs.evolve(r, skip=skip.get(name), restore=restore.get(name) if name not in skip else None)
    return ResolvedPlan(
        plan=plan,
        workspace=workspace,
        stages=stages,
        condition_errors=condition_errors,
        image_map=dict(image_map or {}),
    )

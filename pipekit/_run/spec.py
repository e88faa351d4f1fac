"""A stage's :class:`pipekit.backend.StageSpec`: what its backend is asked to prepare, with the
run's secrets resolved (plain values in ``env``, secret ones in ``secret_env``)."""

from __future__ import annotations

from collections.abc import Mapping

from pipekit._dsl.secrets import Secret
from pipekit._plan.resolve import ResolvedStage
from pipekit._run.run import Run
from pipekit.backend import ServiceSpec, StageSpec

__all__ = ["stage_spec"]


def stage_spec(
    run: Run, resolved: ResolvedStage, image: str | None, built: Mapping[str, str] | None = None
) -> StageSpec:
    """The spec of ``resolved`` running in ``image`` (None: on the host); ``built``: the images
    that the stages its services start from made in this run, by stage. Raises what resolving a
    secret raises (a missing one)."""
    secrets, name, built = run.secrets, resolved.name, built or {}
    services = tuple(
        ServiceSpec(
            name=svc.name,
            image=built[svc.image_from] if svc.image_from else svc.image,
            command=svc.command,
            env=secrets.resolve_env(svc.env, stage=name),
            healthcheck=svc.healthcheck,
            healthcheck_timeout=svc.healthcheck_timeout,
            ports=tuple(svc.ports),
        )
        for svc in resolved.services
    )
    limits = resolved.resources
    plain = {k: v for k, v in resolved.env.items() if not isinstance(v, Secret)}
    hidden = {k: v for k, v in resolved.env.items() if isinstance(v, Secret)}
    return StageSpec(
        run_id=run.run_id,
        stage=name,
        image=image,
        workspace=run.resolved.workspace,
        env=secrets.resolve_env(plain, stage=name),
        secret_env=secrets.resolve_env(hidden, stage=name),
        services=services,
        volumes=dict(resolved.volumes),
        workdir=resolved.stage.workdir,
        with_workspace=resolved.stage.workspace,
        cpus=limits.cpus if limits else None,
        memory=limits.memory_bytes if limits else None,
        pids=limits.pids if limits else None,
        placement=resolved.placement,
        hidden=secrets.files,
    )

"""The checks before a run: what would only fail twenty minutes in is found before anything starts.

Every secret a stage that would run declares (in its ``env``, its services' or the pipeline's),
and every named image it or its services run in (present in the engine, or known to its
registry: nothing is pulled). All problems are reported at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipekit._resolve import ResolvedPlan, ResolvedStage
from pipekit._secrets import Secret, SecretStore
from pipekit.backend import ImageBackend
from pipekit.exceptions import UsageError

__all__ = ["check", "problems"]


def _running(resolved: ResolvedPlan) -> Iterator[ResolvedStage]:
    for name in resolved.order:
        r = resolved[name]
        if r.skip is None and r.restore is None:
            yield r


def _secret_problems(resolved: ResolvedPlan, secrets: SecretStore) -> list[str]:
    found = []
    for r in _running(resolved):
        wanted = [v for v in r.env.values() if isinstance(v, Secret)]
        wanted += [v for svc in r.services for v in svc.env.values() if isinstance(v, Secret)]
        for name in dict.fromkeys(s.name for s in wanted):
            if not secrets.has(name):
                found.append(
                    f"stage '{r.name}' needs the secret '{name}', which is not set: set it in the"
                    " environment or in the --secrets-file"
                )
    return found


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
    found = _secret_problems(resolved, secrets) + _travel_problems(resolved, backend)
    if images is not None:
        found += _image_problems(resolved, images)
    return found


def check(resolved: ResolvedPlan, secrets: SecretStore, images: ImageBackend | None, backend: Any = None) -> None:
    """Raise one UsageError (exit 2) listing every problem, when there is any."""
    found = problems(resolved, secrets, images, backend)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise UsageError(f"{len(found)} problem(s) found before the run; nothing was started:\n{lines}")

"""What ``ctx.docker.run(image, ..., detach=True)`` returns: a container running in the background
of the stage, reachable from it by its name, removed when the stage ends (like docker-py's
``containers.run(detach=True)``, small)."""

from __future__ import annotations

from collections.abc import Callable

from pipekit.backend import DetachedContainers

__all__ = ["Container"]


class Container:
    """A background container of a stage: ``id``, ``name`` (its host name on the stage's network),
    ``image``; ``logs()``, ``stop()``, ``wait()``, ``remove()``. pipekit removes it when the stage ends,
    whatever happens (a failure, a timeout, Ctrl-C)."""

    def __init__(self, backend: DetachedContainers, id: str, name: str, image: str, mask: Callable[[str], str]) -> None:
        self.id = id
        self.name = name
        self.image = image
        self._backend = backend
        self._mask = mask
        self.removed = False
        self.exit_code: int | None = None

    def logs(self) -> str:
        """Its output so far, stdout and stderr (secrets masked)."""
        return self._mask(self._backend.detached_logs(self.id))

    def stop(self, timeout: float = 10) -> int | None:
        """Stop it: SIGTERM, then SIGKILL after ``timeout`` seconds. Its exit code."""
        if not self.removed:
            self.exit_code = self._backend.stop_detached(self.id, timeout)
        return self.exit_code

    def wait(self, timeout: float | None = None) -> int:
        """Wait until it exits; its exit code. TimeoutError after ``timeout`` seconds."""
        self.exit_code = self._backend.wait_detached(self.id, timeout)
        return self.exit_code

    def remove(self) -> None:
        """Remove it now (stopped or not); the stage's end does it otherwise."""
        if not self.removed:
            self._backend.remove_detached(self.id)
            self.removed = True

    def __repr__(self) -> str:
        return f"<Container {self.name} ({self.image}) {self.id[:12]}>"

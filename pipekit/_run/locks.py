"""Resource locks (``resource=``): one holder at a time, across the runs on one machine."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCK_DIR_ENV", "ResourceLock"]

LOCK_DIR_ENV = "PIPEKIT_LOCK_DIR"


def lock_dir() -> Path:
    folder = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "pipekit-locks")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ResourceLock:
    """An exclusive ``flock`` on a file named after the resource; released when the holder dies."""

    def __init__(self, resource: str) -> None:
        self.resource = resource
        digest = hashlib.sha256(resource.encode()).hexdigest()[:16]
        self.path = lock_dir() / f"{digest}.lock"
        self._fd: int | None = None

    def acquire(
        self,
        cancelled: threading.Event,
        on_wait: Callable[[], None] | None = None,
        poll: float = 0.1,
        give_up: Callable[[], bool] | None = None,
    ) -> bool:
        """Block until held (True), or until ``cancelled`` is set or ``give_up()`` says so (False)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
            if cancelled.is_set() or (give_up is not None and give_up()):
                os.close(fd)
                return False
            time.sleep(poll)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

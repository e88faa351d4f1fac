"""What the test engines (tests/remote_engine.py, tests/swarm_lab.py) and the session fixtures share
when several test processes run on one machine at once: two pytest-xdist workers, or a benchmark
and a test session.

- :func:`machine_lock`: one process at a time for a step done once per machine (building a test
  image, choosing a free subnet, removing what a killed session left).
- :func:`instance_name`: a short name of this process's own, so that each process's engines have
  folders, namespaces, bridges and subnets of their own and never stop another process's.
- :func:`claim` / :func:`stale`: each engine's folder names the process that owns it; what a
  killed process left (its owner is gone) is removed by the next session, and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: the owner of a lab started by hand (``python tests/swarm_lab.py up``): never removed as stale
BY_HAND = "by-hand"


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold the machine-wide lock ``name`` (an flock on a file in the temporary folder)."""
    path = Path(tempfile.gettempdir()) / f"pipekit-tests-{name}.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def instance_name() -> str:
    """This process's id in base 36 (at most 5 characters: fits in a 15-character link name)."""
    n, digits = os.getpid(), "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def claim(folder: Path, by_hand: bool = False) -> None:
    """Write into ``folder`` who owns it: this process (its id and start time), or a person."""
    folder.mkdir(parents=True, exist_ok=True)
    owner = BY_HAND if by_hand else f"{os.getpid()} {_start_time(os.getpid())}"
    (folder / "owner").write_text(owner + "\n")


def _owner_alive(folder: Path) -> bool:
    try:
        owner = (folder / "owner").read_text().split()
    except OSError:
        return False
    if owner == [BY_HAND]:
        return True
    try:
        pid, started = int(owner[0]), owner[1]
    except (IndexError, ValueError):
        return False
    return _start_time(pid) == started


def stale(base: Path) -> list[str]:
    """The names of the folders in ``base`` whose owner is gone (call it under the machine lock)."""
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not _owner_alive(p))

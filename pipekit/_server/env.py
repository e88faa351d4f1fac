"""What the server's children see: exactly the environment each needs, from an allow-list.

The server's own secrets (its token, the webhook secrets, the status tokens) and every project's
``pass_env`` variables are read once at start and then taken out of the server's environment: the
server re-executes itself without them (they travel through a pipe), so that neither its
``os.environ`` nor ``/proc/PID/environ`` holds them. A child gets:

- git: the basics (``PATH``, ``HOME``, locale, time zone), what fetching may need (``SSH_AUTH_SOCK``,
  ``GIT_SSH_COMMAND``, proxies, CA files), and ``GIT_TERMINAL_PROMPT=0``;
- the triggers probe (``pipekit triggers``, which imports ``pipeline.py``): the basics and Python's
  (``PYTHONPATH``, ``VIRTUAL_ENV``), nothing else;
- a run (``pipekit run``): the probe's, the engine's (``DOCKER_*``), ``PIPEKIT_*`` settings (not
  ``PIPEKIT_APPROVE``: a server user decides on a gate, see ``NOT_PASSED``), the project's
  ``pass_env`` variables, and the run's ``PIPEKIT_COMMIT``, ``PIPEKIT_TRIGGER``, ``PIPEKIT_SERVER_RUN``;
  git in it has hooks and fsmonitor switched off.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping

__all__ = ["BASE", "NOT_PASSED", "child_env", "git_env", "hide_and_reexec", "not_dumpable", "received_secrets"]

BASE = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR")
FETCH = (
    "SSH_AUTH_SOCK", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
)  # fmt: skip
PYTHON = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONUTF8", "PYTHONIOENCODING")
ENGINE = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG", "DOCKER_CONTEXT", "BUILDKIT_HOST")
# git in a run: hooks and fsmonitor off whatever a .git/config says (command-line config wins)
GIT_SAFE = {"core.hooksPath": "/dev/null", "core.fsmonitor": "false"}
SECRETS_FD = "PIPEKIT_SERVE_SECRETS_FD"
# a gate of a server run is decided by a server user (approvers, separate_approver, [environments]):
# never by these settings of the server's own environment, which would approve as its Unix user
NOT_PASSED = ("PIPEKIT_APPROVE", "PIPEKIT_RUN_APPROVAL_PARAM")


def _pick(names: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    return {n: environ[n] for n in names if n in environ}


def git_env() -> dict[str, str]:
    return {**_pick(BASE + FETCH, os.environ), "GIT_TERMINAL_PROMPT": "0", **_git_config(GIT_SAFE)}


def _git_config(values: Mapping[str, str]) -> dict[str, str]:
    env = {"GIT_CONFIG_COUNT": str(len(values))}
    for i, (key, value) in enumerate(values.items()):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return env


def child_env(hidden: Iterable[str], passed: Mapping[str, str] | None = None) -> dict[str, str]:
    """A probe's environment (``passed`` None), or a run's: with the engine's variables, the
    ``PIPEKIT_*`` settings (never a hidden one) and ``passed`` (the project's ``pass_env``)."""
    env = _pick(BASE + PYTHON, os.environ)
    if passed is None:
        return env
    no = set(hidden)
    env.update(_pick(FETCH + ENGINE, os.environ))
    no |= {SECRETS_FD, *NOT_PASSED}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIPEKIT_") and k not in no})
    env.update(passed)
    env.update(_git_config(GIT_SAFE))
    return env


def hide_and_reexec(names: Iterable[str], argv: list[str]) -> None:
    """Start this process again (same pid) without the variables ``names``; their values come to the
    new image through a pipe (``received_secrets``). Nothing happens when none is set."""
    found = {n: os.environ[n] for n in sorted(set(names)) if n in os.environ}
    if not found or sys.platform == "win32":
        return
    data = json.dumps(found).encode()
    if len(data) > 60_000:  # a pipe holds 64 KiB: more would block this write forever
        return
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    os.set_inheritable(read, True)
    env = {k: v for k, v in os.environ.items() if k not in found}
    env[SECRETS_FD] = str(read)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "pipekit", *argv], env)


def received_secrets() -> dict[str, str]:
    """The values ``hide_and_reexec`` sent (empty when this process was not re-executed)."""
    fd = os.environ.pop(SECRETS_FD, None)
    if fd is None or not fd.isdigit():
        return {}
    chunks = []
    try:
        while chunk := os.read(int(fd), 65536):
            chunks.append(chunk)
        os.close(int(fd))
        values = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}


def not_dumpable() -> bool:
    """Linux: make this process non-dumpable, so that a process of the same user (a host stage) can
    neither ``ptrace`` it nor read its ``/proc/PID/mem`` or ``environ`` (children start dumpable
    again). False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(4, 0, 0, 0, 0) == 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        return False

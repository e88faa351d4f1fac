"""Project defaults for the command line: ``[tool.pipekit]`` in the nearest ``pyproject.toml``.

```toml
[tool.pipekit]
jobs = 2
log-format = "json"
workspace = "copy"
fail-fast = true
timeout = "30m"
secrets-file = ".env.ci"
image-map = { "python:3.12" = "mirror.example/python:3.12" }
params = { registry = "registry.example:5000" }
keep-runs = 50        # after each run, prune the history to the 50 most recent runs
keep-days = 30        # ... and the runs started more than 30 days ago
```

A value given on the command line wins, then a ``PIPEKIT_*`` environment variable, then this file,
then pipekit's own default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipekit.exceptions import UsageError

__all__ = ["KNOWN_KEYS", "command_defaults", "find_pyproject", "run_defaults"]

#: [tool.pipekit] key -> the `run` option it sets by default
KNOWN_KEYS = {
    "jobs": "jobs",
    "log-format": "log_format",
    "workspace": "workspace",
    "fail-fast": "fail_fast",
    "timeout": "timeout",
    "secrets-file": "secrets_file",
    "image-map": "image_map",
    "params": "param",
    "verbose": "verbose",
    "no-cache": "no_cache",
    "cache-registry": "cache_registry",
    "cache-mode": "cache_mode",
    "keep-runs": "keep_runs",
    "keep-days": "keep_days",
}


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml in ``start`` or a folder above it."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _load(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"Cannot read {path}: {e}") from e
    section = data.get("tool", {}).get("pipekit", {})
    if not isinstance(section, dict):
        raise UsageError(f"{path}: [tool.pipekit] must be a table")
    return section


def run_defaults(start: Path) -> dict[str, Any]:
    """The defaults of ``pipekit run`` from [tool.pipekit], as click's ``default_map`` wants them."""
    path = find_pyproject(start)
    if path is None:
        return {}
    defaults: dict[str, Any] = {}
    for key, value in _load(path).items():
        option = KNOWN_KEYS.get(key.replace("_", "-"))
        if option is None:
            known = ", ".join(sorted(KNOWN_KEYS))
            raise UsageError(f"{path}: [tool.pipekit] has no setting '{key}' (known: {known})")
        if option in ("image_map", "param"):
            if not isinstance(value, dict):
                raise UsageError(f"{path}: [tool.pipekit] {key} must be a table of NAME = VALUE")
            value = [f"{k}={v}" for k, v in value.items()]
        if option == "secrets_file" and isinstance(value, str) and path.parent.resolve() != start.resolve():
            value = str(path.parent / value)  # relative to the pyproject.toml that names it
        defaults[option] = value
    return defaults


#: the [tool.pipekit] defaults that `plan` and `validate` take too (the options they share with `run`)
SHARED = ("param", "secrets_file", "image_map", "cache_registry", "cache_mode")


def command_defaults(start: Path) -> dict[str, dict[str, Any]]:
    """click's ``default_map`` of every command: `run`'s defaults, and the shared ones for `plan`
    and `validate`, so that the three read the same project settings."""
    run = run_defaults(start)
    shared = {k: v for k, v in run.items() if k in SHARED}
    validate = {k: v for k, v in shared.items() if k in ("param", "secrets_file", "image_map")}
    cache = {k: v for k, v in run.items() if k == "cache_registry"}
    prune = {"keep": run.get("keep_runs"), "older_than": f"{run['keep_days']}d" if "keep_days" in run else None}
    return {
        "run": run,
        "plan": dict(shared),
        "validate": validate,
        "cache": cache,
        "prune": {k: v for k, v in prune.items() if v is not None},
    }

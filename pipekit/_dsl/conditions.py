"""Stage conditions (``when=``): ``pk.branch``, ``pk.env``, ``pk.param_is``, ``pk.changed``,
callables, and the combinators ``&``, ``|``, ``~``.

Conditions are evaluated once, before the run starts, against a :class:`RunInfo`; so
``--dry-run`` shows exactly which stages would be skipped and why.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pipekit.exceptions import PipelineError, UsageError

__all__ = [
    "Condition",
    "RunInfo",
    "branch",
    "changed",
    "detect_branch",
    "env",
    "glob_filter",
    "glob_match",
    "param_is",
    "to_condition",
]

#: CI variables that name the branch, in the order they are consulted.
BRANCH_VARIABLES = ("BRANCH_NAME", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME")


def _git(workspace: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def detect_branch(workspace: Path, environ: Mapping[str, str]) -> str | None:
    """The branch: the CI's own variables (Jenkins, GitHub, GitLab), else git, else None."""
    for name in BRANCH_VARIABLES:
        value = environ.get(name)
        if value:
            return value
    current = _git(workspace, "rev-parse", "--abbrev-ref", "HEAD")
    return current if current and current != "HEAD" else None


def _default_base(workspace: Path) -> str | None:
    head = _git(workspace, "symbolic-ref", "--quiet", "refs/remotes/origin/HEAD")
    candidates = [head.removeprefix("refs/remotes/")] if head else []
    candidates += ["origin/main", "origin/master", "main", "master"]
    for ref in candidates:
        if _git(workspace, "rev-parse", "--verify", "--quiet", ref) is not None:
            return _git(workspace, "merge-base", "HEAD", ref) or ref
    return None


def _flags() -> int:
    from wcmatch import glob

    # `*` stays within one path segment, `**` crosses them, {a,b} alternatives, [abc] classes,
    # and dot files match like any other (as in .gitignore and GitHub's paths filters)
    return int(glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB)


@functools.lru_cache(maxsize=1024)
def _matcher(pattern: str) -> Any:
    from wcmatch import glob

    return glob.compile(pattern, flags=_flags())


def glob_match(pattern: str, text: str) -> bool:
    """Whether a path (relative, with ``/``) matches a glob: ``src/**/*.{py,toml}``."""
    return bool(_matcher(pattern).match(text))


@functools.lru_cache(maxsize=256)
def _regexes(pattern: str) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
    from wcmatch import glob

    include, exclude = glob.translate(pattern, flags=_flags())
    return [re.compile(p) for p in include], [re.compile(p) for p in exclude]


def _literal(path: str) -> bool:
    """A path without glob characters, `.`, `..` or empty components."""
    parts = path.split("/")
    return not any(c in path for c in "*?[]{}\\!") and all(p not in ("", ".", "..") for p in parts)


def _plain(rest: str) -> bool:
    """``rest`` (``/a/b``) has no `.` or `..` component."""
    return "/." not in rest or all(p not in (".", "..") for p in rest.split("/"))


def glob_filter(pattern: str, names: Sequence[str]) -> list[str]:
    """The paths among ``names`` that :func:`glob_match` ``pattern``: its regular expressions
    (wcmatch's ``translate``, what its matcher runs for a path it is not asked to look up) run on
    every name, without the matcher's cost per name (100,000 files in a cache's inputs)."""
    root = pattern[:-3]
    if pattern.endswith("/**") and _literal(root):  # `dir/**`: every path under dir, no `.`/`..` in it
        under = root + "/"
        return [n for n in names if n.startswith(under) and _plain(n[len(root) :])]
    include, exclude = _regexes(pattern)
    out = (
        [n for n in names if any(r.fullmatch(n) for r in include)]
        if len(include) != 1
        else list(filter(include[0].fullmatch, names))
    )
    return [n for n in out if not any(r.fullmatch(n) for r in exclude)] if exclude else out


def check_glob(pattern: object, what: str) -> str:
    """A glob that can match something, or a PipelineError saying what is wrong with it."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise PipelineError(f"{what} takes glob patterns such as 'src/**/*.py', got {pattern!r}")
    depth_brace = depth_bracket = 0
    escaped = False
    for c in pattern:
        if escaped:
            escaped = False
            continue
        if c == "\\":
            escaped = True
        elif c == "{":
            depth_brace += 1
        elif c == "}":
            depth_brace -= 1
        elif c == "[":
            depth_bracket += 1
        elif c == "]" and depth_bracket:
            depth_bracket -= 1
        if depth_brace < 0:
            break
    problem = None
    if depth_brace != 0:
        problem = "its { and } do not pair up"
    elif depth_bracket:
        problem = "a [ has no closing ]"
    elif escaped:
        problem = "it ends with a lone backslash"
    if problem:
        raise PipelineError(f"{what}: the pattern {pattern!r} cannot be read: {problem}")
    return pattern


class RunInfo:
    """What conditions can see: branch, environment, parameters, workspace, changed files."""

    def __init__(
        self,
        *,
        workspace: Path,
        branch: str | None = None,
        environ: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        changed_files: list[str] | None = None,
        changed_base: str | None = None,
    ) -> None:
        self.workspace = workspace
        self.env: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self.branch = branch if branch is not None else detect_branch(workspace, self.env)
        self.params: Mapping[str, Any] = params or {}
        self._changed = changed_files
        self._changed_base = changed_base

    @property
    def changed_files(self) -> list[str]:
        """Files changed against the base ref (default: the merge base with the default branch)."""
        if self._changed is None:
            base = self._changed_base or _default_base(self.workspace)
            if base is None:
                raise UsageError(
                    f"pk.changed needs a git base to compare with, and none was found in {self.workspace}."
                    " Give one with --changed-base REF"
                )
            if base.startswith("-") or not base.strip():
                raise UsageError(f"--changed-base takes a git ref (a branch, tag or commit), got {base!r}")
            if (
                _git(self.workspace, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{base}^{{commit}}")
                is None
            ):
                raise UsageError(f"--changed-base {base!r} is not a commit in {self.workspace}; check the ref")
            out = _git(self.workspace, "diff", "--name-only", base, "--")
            if out is None:
                raise UsageError(f"git diff against '{base}' failed in {self.workspace}; check --changed-base")
            top = _git(self.workspace, "rev-parse", "--show-prefix") or ""
            untracked = _git(self.workspace, "ls-files", "--others", "--exclude-standard") or ""
            files = [f for f in out.splitlines() if f]
            files += [top + f for f in untracked.splitlines() if f]
            self._changed = sorted(set(files))
        return self._changed


@attrs.frozen
class Condition:
    """A condition on the run; combine with ``&``, ``|`` and ``~``."""

    test: Callable[[RunInfo], bool] = attrs.field(repr=False)
    text: str

    def evaluate(self, info: RunInfo) -> bool:
        return bool(self.test(info))

    def __and__(self, other: Any) -> Condition:
        o = to_condition(other)
        return Condition(lambda i: self.evaluate(i) and o.evaluate(i), f"({self.text} and {o.text})")

    def __or__(self, other: Any) -> Condition:
        o = to_condition(other)
        return Condition(lambda i: self.evaluate(i) or o.evaluate(i), f"({self.text} or {o.text})")

    def __invert__(self) -> Condition:
        return Condition(lambda i: not self.evaluate(i), f"not {self.text}")

    def __rand__(self, other: Any) -> Condition:
        return to_condition(other) & self

    def __ror__(self, other: Any) -> Condition:
        return to_condition(other) | self

    def __str__(self) -> str:
        return self.text


def to_condition(value: Any) -> Condition:
    if isinstance(value, Condition):
        return value
    if callable(value):
        name = getattr(value, "__name__", repr(value))
        return Condition(value, f"{name}(run)")
    raise PipelineError(f"when= takes a condition (pk.branch, pk.env, ...) or a callable, got {value!r}")


def branch(*patterns: str) -> Condition:
    """True when the run's branch matches one of the glob patterns (``"main"``, ``"release/*"``)."""
    if not patterns:
        raise PipelineError("pk.branch needs at least one pattern")
    text = "branch is " + " or ".join(repr(p) for p in patterns)
    return Condition(lambda i: i.branch is not None and any(glob_match(p, i.branch) for p in patterns), text)


def env(name: str, value: str | None = None) -> Condition:
    """True when the variable is set and non-empty (or, with ``value``, equal to it)."""
    if value is None:
        return Condition(lambda i: bool(i.env.get(name)), f"${name} is set")
    return Condition(lambda i: i.env.get(name) == value, f"${name} == {value!r}")


def param_is(name: str, value: Any) -> Condition:
    """True when the parameter ``name`` has ``value``."""
    return Condition(lambda i: i.params.get(name) == value, f"param {name} == {value!r}")


def changed(*patterns: str) -> Condition:
    """True when a file matching one of the globs changed against the base ref (``src/**``)."""
    if not patterns:
        raise PipelineError("pk.changed needs at least one pattern")
    for p in patterns:
        check_glob(p, "pk.changed")
    text = "changed " + ", ".join(repr(p) for p in patterns)
    return Condition(lambda i: any(glob_match(p, f) for p in patterns for f in i.changed_files), text)

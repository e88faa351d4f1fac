"""``pipekit serve``'s configuration: ``pipekit-server.toml``, read into attrs values.

Every mistake is a :class:`UsageError` naming the key and what it takes. Secrets (the token,
webhook secrets, status tokens, what a project's runs get with ``pass_env``) are never in the file:
it names the environment variables that hold them. Their values are read once, when the
configuration is loaded (``values``), and the server then takes them out of its environment
(``_server_env.hide_and_reexec``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pipekit.exceptions import UsageError

__all__ = ["ADMIN", "EnvironmentRules", "Project", "ServerConfig", "User", "load_config", "with_values"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ADMIN = "admin"  # the user the shared token (``token_env``) logs in as
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@attrs.frozen
class User:
    """A named user of the server: ``[users.NAME]`` with a token of their own, from the variable
    ``token_env`` or as the SHA-256 (hex) of the token (``token_sha256``); ``groups`` for approvers."""

    name: str
    token_env: str | None = None
    token_sha256: str | None = None
    groups: tuple[str, ...] = ()


@attrs.frozen
class EnvironmentRules:
    """``[environments.NAME]``: the approval of every stage deploying there (``environment=NAME``),
    whatever the pipeline says: who may approve, whether the user who triggered the run may, how
    long the gate waits, the question asked. A stage of that environment without ``approval=`` gets
    a gate too."""

    name: str
    approvers: tuple[str, ...] = ()
    separate_approver: bool = False
    timeout: float | None = None
    message: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"approvers": list(self.approvers), "timeout": self.timeout, "message": self.message}


@attrs.frozen
class Project:
    """A repository the server runs the pipeline of."""

    name: str
    repo: str  # a git URL or a local path
    branches: tuple[str, ...] = ("main",)  # globs
    pipeline: str = "pipeline.py"  # in the repository
    poll: float | None = None  # seconds between `git ls-remote`s; None: webhooks only
    webhook_secret_env: str | None = None
    secrets_file: str | None = None  # a dotenv file of the project's secrets, on the server
    cancel_superseded: bool = False
    status_token_env: str | None = None  # report commit statuses to GitHub or GitLab
    status_api: str | None = None  # https://api.github.com (the default), or a GitLab's https://HOST/api/v4
    status_repo: str | None = None  # owner/repo (GitLab: the project's path); default: from repo
    args: tuple[str, ...] = ()  # more `pipekit run` options (-j 8, --backend swarm, ...)
    host_stages: bool = True  # False: a run whose pipeline has a stage without an image fails before it starts
    pass_env: tuple[str, ...] = ()  # the server's variables this project's runs get (its secrets)
    separate_approver: bool = False  # True: the user who triggered a run may not approve its gates
    values: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)  # those read at start

    def secret(self, env_name: str | None) -> str | None:
        return self.values.get(env_name) if env_name else None

    def passed(self) -> dict[str, str]:
        """The ``pass_env`` variables (with their values at the server's start) a run gets."""
        return {n: self.values[n] for n in self.pass_env if n in self.values}


@attrs.frozen
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    state_dir: Path = Path("/var/lib/pipekit")
    token_env: str = "PIPEKIT_SERVER_TOKEN"
    max_parallel_runs: int = 2
    public_read: bool = False
    projects: tuple[Project, ...] = ()
    max_webhook_body: int = 25_000_000  # bytes; forms and API bodies are capped at 64 KiB
    session_lifetime: float = 12 * 3600.0  # seconds a login lasts
    users: tuple[User, ...] = ()
    environments: tuple[EnvironmentRules, ...] = ()
    values: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)  # secrets read at start

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def token(self) -> str:
        """The shared token (the user ``admin``); "" when ``[users]`` are configured and it is not set."""
        value = self.values.get(self.token_env, "")
        if not value and self.users:
            return ""
        if len(value) < 16:
            raise UsageError(
                f"set {self.token_env} to a token of 16 or more characters: every action (trigger, cancel,"
                " re-run) and, unless public_read = true, every page needs it"
            )
        return value

    def project(self, name: str) -> Project | None:
        return next((p for p in self.projects if p.name == name), None)

    def environment(self, name: str | None) -> EnvironmentRules | None:
        return next((e for e in self.environments if e.name == name), None)

    def hidden_env(self) -> set[str]:
        """The variables the server takes out of its environment: its token, the projects' secrets
        and their ``pass_env`` variables (each run gets its own project's)."""
        names = {self.token_env} | {u.token_env for u in self.users if u.token_env}
        for p in self.projects:
            names |= {n for n in (p.webhook_secret_env, p.status_token_env) if n} | set(p.pass_env)
        return names

    def logins(self) -> dict[str, User]:
        """The SHA-256 (hex) of each token, and the user it logs in as (the shared token: ``admin``).
        A missing or short token, or two users with one token, is a :class:`UsageError`."""
        found: dict[str, User] = {}
        if self.token:
            found[_digest(self.token)] = User(ADMIN)
        for user in self.users:
            if user.token_env:
                value = self.values.get(user.token_env, "")
                if len(value) < 16:
                    raise UsageError(
                        f"set {user.token_env} to a token of 16 or more characters: it is the token of the user"
                        f" {user.name} ([users.{user.name}] in pipekit-server.toml)"
                    )
                digest = _digest(value)
            else:
                digest = str(user.token_sha256)
            if digest in found:
                raise UsageError(
                    f"pipekit-server.toml: the users {found[digest].name} and {user.name} have the same token:"
                    " give each user a token of their own"
                )
            found[digest] = user
        return found


def _digest(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _users(tables: Any) -> tuple[User, ...]:
    if not isinstance(tables, dict):
        raise UsageError("pipekit-server.toml: users are tables: [users.NAME] with token_env or token_sha256")
    users = []
    for name, table in tables.items():
        where = f"[users.{name}]"
        if not NAME.match(name) or name == ADMIN:
            why = "is the shared token's user" if name == ADMIN else "takes letters, digits, '-', '_', '.'"
            raise UsageError(f"pipekit-server.toml: {where}: a user's name {why}")
        if not isinstance(table, dict):
            raise UsageError(f"pipekit-server.toml: {where} is a table (token_env, token_sha256, groups)")
        unknown = sorted(set(table) - {"token_env", "token_sha256", "groups"})
        if unknown:
            raise UsageError(
                f"pipekit-server.toml: {where} has no key {unknown[0]!r} (keys: groups, token_env, token_sha256)"
            )
        env, digest = _typed(table, "token_env", str, where), _typed(table, "token_sha256", str, where)
        if (env is None) == (digest is None):
            raise UsageError(
                f"pipekit-server.toml: {where} needs one of token_env (the variable holding the user's token)"
                " or token_sha256 (the SHA-256 of the token, in hex)"
            )
        if digest is not None and not SHA256.match(digest.lower()):
            raise UsageError(f"pipekit-server.toml: {where}.token_sha256 takes 64 hex digits (sha256sum of the token)")
        groups = _typed(table, "groups", list, where) or []
        if not all(isinstance(g, str) and NAME.match(g) for g in groups):
            raise UsageError(f"pipekit-server.toml: {where}.groups takes names of letters, digits, '-', '_', '.'")
        env_names = _names([env] if env else [], f"{where}.token_env")
        users.append(User(name, env_names[0] if env_names else None, digest.lower() if digest else None, tuple(groups)))
    return tuple(users)


def _environments(tables: Any) -> tuple[EnvironmentRules, ...]:
    if not isinstance(tables, dict):
        raise UsageError("pipekit-server.toml: environments are tables: [environments.NAME] with approvers = [...]")
    found = []
    for name, table in tables.items():
        where = f"[environments.{name}]"
        if not isinstance(table, dict):
            raise UsageError(
                f"pipekit-server.toml: {where} is a table (approvers, separate_approver, timeout, message)"
            )
        keys = {"approvers", "separate_approver", "timeout", "message"}
        unknown = sorted(set(table) - keys)
        if unknown:
            raise UsageError(
                f"pipekit-server.toml: {where} has no key {unknown[0]!r} (keys: {', '.join(sorted(keys))})"
            )
        approvers = _typed(table, "approvers", list, where) or []
        if not all(isinstance(a, str) and NAME.match(a) for a in approvers):
            raise UsageError(f"pipekit-server.toml: {where}.approvers takes names of users or groups")
        timeout = table.get("timeout")
        found.append(
            EnvironmentRules(
                name=name,
                approvers=tuple(approvers),
                separate_approver=bool(_typed(table, "separate_approver", bool, where)),
                timeout=_duration(timeout, f"{where}.timeout") if timeout is not None else None,
                message=_typed(table, "message", str, where),
            )
        )
    return tuple(found)


def _duration(value: Any, key: str) -> float:
    from pipekit._dsl.control import parse_duration
    from pipekit.exceptions import PipelineError

    try:
        seconds = parse_duration(value, key)
    except PipelineError as e:
        raise UsageError(f"pipekit-server.toml: {e.message}") from None
    if not seconds:
        raise UsageError(f"pipekit-server.toml: {key} takes a duration like '60s', got {value!r}")
    return seconds


def _typed(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if value is not None and not isinstance(value, kind):
        raise UsageError(f"pipekit-server.toml: {where}.{key} takes a {kind.__name__}, got {value!r}")
    return value


def _project(table: Mapping[str, Any], base: Path) -> Project:
    name = _typed(table, "name", str, "[[project]]")
    if not name or not NAME.match(name):
        raise UsageError(
            f"pipekit-server.toml: every [[project]] needs a name of letters, digits, '-', '_', got {name!r}"
        )
    where = f"[[project]] {name}"
    repo = _typed(table, "repo", str, where)
    if not repo:
        raise UsageError(f"pipekit-server.toml: {where} needs repo = a git URL or a local path")
    known = set(attrs.fields_dict(Project)) | {"name"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UsageError(f"pipekit-server.toml: {where} has no key {unknown[0]!r} (keys: {', '.join(sorted(known))})")
    branches = _typed(table, "branches", list, where) or ["main"]
    args = tuple(str(a) for a in _typed(table, "args", list, where) or ())
    _no_decisions(args, _typed(table, "pass_env", list, where) or [], where)
    poll = table.get("poll")
    secrets_file = _typed(table, "secrets_file", str, where)
    return Project(
        name=name,
        repo=repo if "://" in repo or repo.startswith("git@") else str((base / repo).resolve()),
        branches=tuple(str(b) for b in branches),
        pipeline=_typed(table, "pipeline", str, where) or "pipeline.py",
        poll=_duration(poll, f"{where}.poll") if poll is not None else None,
        webhook_secret_env=_typed(table, "webhook_secret_env", str, where),
        secrets_file=str((base / secrets_file).resolve()) if secrets_file else None,
        cancel_superseded=bool(_typed(table, "cancel_superseded", bool, where)),
        status_token_env=_typed(table, "status_token_env", str, where),
        status_api=_typed(table, "status_api", str, where),
        status_repo=_typed(table, "status_repo", str, where),
        args=args,
        host_stages=_typed(table, "host_stages", bool, where) is not False,
        pass_env=_names(_typed(table, "pass_env", list, where) or [], f"{where}.pass_env"),
        separate_approver=bool(_typed(table, "separate_approver", bool, where)),
    )


def _no_decisions(args: tuple[str, ...], passed: list[Any], where: str) -> None:
    """A project's runs get no approval from the configuration (``--approve`` in ``args``,
    ``PIPEKIT_APPROVE`` in ``pass_env``): a user of the server decides on a gate."""
    from pipekit._server.env import NOT_PASSED

    options = [a.partition("=")[0] for a in args]
    for key, found in (("args", options), ("pass_env", [str(n) for n in passed])):
        decided = next((o for o in found if o in ("--approve", "--approval-param", *NOT_PASSED)), None)
        if decided:
            raise UsageError(
                f"pipekit-server.toml: {where}.{key} may not hold {decided}: a gate of a server run is decided by a"
                " user of the server (its approvers, separate_approver), on the run's page or with"
                " POST /api/runs/ID/approvals"
            )


def _names(values: list[Any], key: str) -> tuple[str, ...]:
    bad = [v for v in values if not isinstance(v, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v)]
    if bad:
        raise UsageError(f"pipekit-server.toml: {key} takes names of environment variables, got {bad[0]!r}")
    return tuple(values)


def _size(value: Any, key: str) -> int:
    units = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
    m = re.match(r"^\s*(\d+)\s*([a-z]*)\s*$", str(value).lower()) if isinstance(value, (int, str)) else None
    if m is None or m.group(2) not in units or isinstance(value, bool) or int(m.group(1)) < 1:
        raise UsageError(f"pipekit-server.toml: {key} takes a size in bytes like 25000000 or '25MB', got {value!r}")
    return int(m.group(1)) * units[m.group(2)]


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    import tomllib

    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except OSError as e:
        raise UsageError(f"cannot read the server configuration {file}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{file} is not valid TOML: {e}") from None
    server = data.get("server", {})
    keys = {"listen", "state_dir", "token_env", "max_parallel_runs", "public_read"}
    keys |= {"max_webhook_body", "session_lifetime"}
    unknown = sorted(set(server) - keys)
    if unknown:
        raise UsageError(f"pipekit-server.toml: [server] has no key {unknown[0]!r}")
    listen = _typed(server, "listen", str, "[server]") or "127.0.0.1:8080"
    if not re.match(r"^[^:]*:\d+$", listen):
        raise UsageError(f"pipekit-server.toml: [server].listen takes HOST:PORT, got {listen!r}")
    projects = tuple(_project(t, file.parent) for t in data.get("project", []))
    names = [p.name for p in projects]
    if len(set(names)) != len(names):
        raise UsageError("pipekit-server.toml: two [[project]] tables have the same name")
    parallel = _typed(server, "max_parallel_runs", int, "[server]") or 2
    if parallel < 1:
        raise UsageError("pipekit-server.toml: [server].max_parallel_runs must be 1 or more")
    lifetime = server.get("session_lifetime")
    unknown = sorted(set(data) - {"server", "project", "users", "environments"})
    if unknown:
        raise UsageError(
            f"pipekit-server.toml has no table {unknown[0]!r}"
            " (tables: [server], [users.NAME], [environments.NAME], [[project]])"
        )
    config = ServerConfig(
        listen=listen,
        state_dir=(file.parent / (_typed(server, "state_dir", str, "[server]") or "/var/lib/pipekit")).resolve(),
        token_env=_typed(server, "token_env", str, "[server]") or "PIPEKIT_SERVER_TOKEN",
        max_parallel_runs=parallel,
        public_read=bool(_typed(server, "public_read", bool, "[server]")),
        projects=projects,
        max_webhook_body=_size(server.get("max_webhook_body", 25_000_000), "[server].max_webhook_body"),
        session_lifetime=_duration(lifetime, "[server].session_lifetime") if lifetime is not None else 12 * 3600.0,
        users=_users(data.get("users", {})),
        environments=_environments(data.get("environments", {})),
    )
    return with_values(config)


def with_values(config: ServerConfig) -> ServerConfig:
    """The configuration with its secrets' values: from the environment, or from the pipe of a
    server that re-executed itself without them."""
    from pipekit._server.env import received_secrets

    names = config.hidden_env()
    values = {n: os.environ[n] for n in names if n in os.environ}
    values.update({k: v for k, v in received_secrets().items() if k in names})
    projects = tuple(attrs.evolve(p, values=values) for p in config.projects)
    return attrs.evolve(config, projects=projects, values=values)

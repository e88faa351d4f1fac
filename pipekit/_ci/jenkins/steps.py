"""Jenkinsfile steps as Python statements (``ast`` nodes) for the body of a stage function."""

from __future__ import annotations

import ast
import re
import shlex
import textwrap
from collections.abc import Callable
from typing import Any

import attrs

from pipekit._ci.jenkins.emit import Comment, call, comment, name, text, value
from pipekit._ci.jenkins.parse import Assign, Call, Chain, Concat, GString, Raw, Ref

__all__ = ["Notes", "Scope", "StepWriter", "identifier", "secret_name"]

Item = ast.stmt | Comment
#: Jenkins' own variables that have a pipekit equivalent inside a stage
BUILTINS = {"BUILD_ID": "ctx.run_id", "BUILD_NUMBER": "ctx.run_id", "BUILD_TAG": "ctx.run_id"}
#: variables Jenkins sets that pipekit does not
JENKINS_VARS = {
    "BRANCH_NAME", "GIT_COMMIT", "GIT_BRANCH", "GIT_URL", "GIT_PREVIOUS_COMMIT", "GIT_LOCAL_BRANCH", "WORKSPACE",
    "JOB_NAME", "JOB_BASE_NAME", "BUILD_URL", "JOB_URL", "JENKINS_URL", "CHANGE_ID", "CHANGE_TARGET",
    "CHANGE_BRANCH", "CHANGE_URL", "CHANGE_AUTHOR", "CHANGE_TITLE", "TAG_NAME", "NODE_NAME", "EXECUTOR_NUMBER",
    "BUILD_DISPLAY_NAME", "GIT_AUTHOR_NAME", "GIT_COMMITTER_EMAIL", "BUILD_TIMESTAMP",
}  # fmt: skip
#: variables every shell has
SYSTEM_VARS = {"PATH", "HOME", "USER", "PWD", "SHELL", "HOSTNAME", "LANG", "TMPDIR", "TERM", "UID"}
#: steps that only matter to Jenkins itself: left out, with a note
JENKINS_ONLY = {"cleanWs", "deleteDir", "checkout", "git", "milestone", "properties", "buildName", "buildDescription"}
#: wrappers whose steps run as they are without them
HARMLESS_WRAPPERS = {"timestamps", "ansiColor", "node"}
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
PARAM = re.compile(r"params\.([A-Za-z_][A-Za-z0-9_]*)$")
ENV = re.compile(r"(?:env\.)?([A-Za-z_][A-Za-z0-9_]*)$")


@attrs.define
class Notes:
    """What needs hands, by Jenkinsfile line."""

    todos: list[tuple[int, str]] = attrs.field(factory=list)

    def todo(self, line: int, why: str, original: str = "") -> Comment:
        self.todos.append((line, why))
        head = f"TODO(Jenkinsfile:{line}): {why}" + (":" if original else "")
        return comment(head, *("    " + t for t in textwrap.dedent(original).strip("\n").split("\n") if original))


@attrs.define
class Scope:
    """What the steps of one function see."""

    env: dict[str, ast.expr] = attrs.field(factory=dict)  # set on every ctx.sh
    cwd: str | None = None
    axes: tuple[str, ...] = ()
    assigned: set[str] = attrs.field(factory=set)
    noted: set[str] = attrs.field(factory=set)  # notes already written in this function

    def inner(self, **changes: Any) -> Scope:
        return attrs.evolve(self, **changes)


def identifier(label: str) -> str:
    """A Python name for a stage or function: 'Build & Test' -> build_test."""
    ident = re.sub(r"[^0-9a-zA-Z]+", "_", label).strip("_").lower()[:60].strip("_") or "stage"
    return f"s_{ident}" if ident[0].isdigit() else ident


def secret_name(credentials_id: str) -> str:
    """The pk.secret name for a Jenkins credentials id: 'docker-hub' -> DOCKER_HUB."""
    found = re.sub(r"[^0-9A-Za-z]+", "_", credentials_id).strip("_").upper() or "SECRET"
    return f"S_{found}" if found[0].isdigit() else found


def pyvar(groovy: str) -> str:
    """A Groovy variable's Python name: the same where it can be, never one the function needs."""
    found = groovy if IDENT.match(groovy) else identifier(groovy)
    return found + "_" if found in ("ctx", "pk", "str", "RuntimeError", "outcome") else found


def _flat(parts: list[tuple[str, Any]]) -> str | None:
    """The text of parts that are all text; None when some are Python."""
    if any(kind != "text" for kind, _ in parts):
        return None
    return "".join(v for _, v in parts)


def _dedent(parts: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A multi-line script without the common indentation and the blank first and last lines."""
    marker = "\x00"
    joined = "".join(v if kind == "text" else f"{marker}{i}{marker}" for i, (kind, v) in enumerate(parts))
    if marker in "".join(v for kind, v in parts if kind == "text"):
        return parts
    lines = textwrap.dedent(joined).split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    out: list[tuple[str, Any]] = []
    for i, piece in enumerate("\n".join(lines).split(marker)):
        if i % 2:
            out.append(parts[int(piece)])
        elif piece:
            out.append(("text", piece))
    return out


def _in(cwd: str | None, pattern: str) -> str:
    return f"{cwd}/{pattern}" if cwd and not pattern.startswith("/") else pattern


class StepWriter:
    """Turns the steps of a stage (or of a post condition) into the body of a Python function."""

    def __init__(self, notes: Notes, env_names: set[str], env_values: dict[str, str]) -> None:
        self.notes = notes
        self.env_names = env_names  # names the environment blocks set
        self.env_values = env_values  # ... and their literal values (credentials ids in variables)
        self.pending: list[Comment] = []
        self.params: set[str] = set()  # declared parameters: Jenkins also sets them as variables
        self.constants: dict[str, str] = {}  # Groovy constants outside the pipeline: written out

    # -- strings ----------------------------------------------------------------------------
    def parts(self, v: Any, line: int, scope: Scope, *, shell: bool) -> list[tuple[str, Any]]:
        """A Jenkinsfile value as text parts: ``${params.X}`` becomes Python; ``${env.X}``/``${X}``
        stays for the shell to expand (in a command) or is read from ctx.env (elsewhere)."""
        if isinstance(v, str):
            return [("text", v)]
        if isinstance(v, bool) or v is None or isinstance(v, (int, float)):
            return [("text", "" if v is None else str(v).lower() if isinstance(v, bool) else str(v))]
        if isinstance(v, Concat):
            return [p for piece in v.parts for p in self.parts(piece, line, scope, shell=shell)]
        if isinstance(v, Ref):
            return self.expression(v.path, line, scope, shell=shell, as_text=False)
        if isinstance(v, GString):
            out: list[tuple[str, Any]] = []
            for kind, piece in v.parts:
                out += [("text", piece)] if kind == "text" else self.expression(piece, line, scope, shell=shell)
            return out
        self.pending.append(self.notes.todo(line, f"a Groovy value is left as text: {getattr(v, 'raw', v)}"))
        return [("text", str(getattr(v, "raw", v)))]

    def expression(
        self, expr: str, line: int, scope: Scope, *, shell: bool, as_text: bool = True
    ) -> list[tuple[str, Any]]:
        kept = [("text", f"${{{expr}}}" if as_text else expr)]
        m = PARAM.match(expr)
        if m:
            return [("py", name(f"ctx.params.{m.group(1)}"))]
        m = ENV.match(expr)
        if m is None or (not expr.startswith("env.") and not as_text and m.group(1) not in self.env_names):
            if m is not None and pyvar(m.group(1)) in scope.assigned:
                return [("py", name(pyvar(m.group(1))))]
            self.pending.append(self.notes.todo(line, f"the Groovy expression `{expr}` is left as text"))
            return kept
        var = m.group(1)
        if var in self.constants and not expr.startswith("env.") and var not in self.env_names:
            return [("text", self.constants[var])]
        if var in self.params:
            return [("py", name(f"ctx.params.{var}"))]
        if var in BUILTINS:
            return [("py", name(BUILTINS[var]))]
        if var in scope.axes:
            return [("text", f"${{{var}}}")] if shell else [("py", ast.Subscript(name("ctx.matrix"), value(var)))]
        if pyvar(var) in scope.assigned and not expr.startswith("env."):
            return [("py", name(pyvar(var)))]
        if var in JENKINS_VARS:
            self.pending.append(self.notes.todo(line, f"Jenkins sets {var}; pipekit does not: set it or drop it"))
        elif not expr.startswith("env.") and var not in self.env_names | set(scope.env) | SYSTEM_VARS:
            why = f"`{var}` is not set in this pipeline (a Groovy variable, or set elsewhere): set it or drop it"
            self.pending.append(self.notes.todo(line, why))
        if shell:
            return [("text", f"${{{var}}}")]
        return [("py", call("ctx.env.get", var, ""))]

    def string(self, v: Any, line: int, scope: Scope, *, shell: bool = False) -> ast.expr:
        return text(self.parts(v, line, scope, shell=shell))

    # -- statements -------------------------------------------------------------------------
    def steps(self, nodes: Any, scope: Scope) -> list[Item]:
        out: list[Item] = []
        for node in nodes or ():
            out += self.step(node, scope)
        return out

    def step(self, node: Any, scope: Scope) -> list[Item]:
        outer, self.pending = self.pending, []
        made = self._step(node, scope)
        pending, self.pending = self.pending, outer
        return [*pending, *made]

    def _step(self, node: Any, scope: Scope) -> list[Item]:
        if isinstance(node, Raw):
            return [self.notes.todo(node.line, "Groovy code is not converted", node.text)]
        if isinstance(node, Assign):
            return self.assign(node, scope)
        if not isinstance(node, Call):
            return [self.notes.todo(0, f"an unknown statement: {node!r}")]
        handler: Callable[[Call, Scope], list[Item]] | None = getattr(
            self, f"_step_{node.name.replace('.', '_')}", None
        )
        if handler is not None:
            return handler(node, scope)
        if node.name in JENKINS_ONLY:
            return [comment(f"{node.name}: Jenkins only, not needed (Jenkinsfile:{node.line})")]
        if node.name.endswith(".push") and not node.name.startswith("docker."):
            return self._push(node, scope, None, "")
        harmless = node.name in HARMLESS_WRAPPERS or (
            node.name == "wrap" and re.search(r"AnsiColor|Timestamper", node.raw)
        )
        if node.block is not None and not node.kwargs and harmless:
            return [
                comment(f"{node.name} {{ }}: Jenkins only (Jenkinsfile:{node.line})"),
                *self.steps(node.block, scope),
            ]
        if node.block is not None:
            why = f"`{node.name}` around these steps is not converted (its steps are, below)"
            return [self.notes.todo(node.line, why, node.raw.split("{", 1)[0]), *self.steps(node.block, scope)]
        return [self.notes.todo(node.line, f"the step `{node.name}` is not converted", node.raw)]

    def _sh(self, command: ast.expr, scope: Scope, check: bool = True) -> ast.stmt:
        kwargs: dict[str, Any] = {}
        env = dict(scope.env)
        env.update({axis: ast.Subscript(name("ctx.matrix"), value(axis)) for axis in scope.axes})
        if env:
            kwargs["env"] = ast.Dict([value(k) for k in env], list(env.values()))
        if not check:
            kwargs["check"] = False
        return ast.Expr(call("ctx.sh", command, **kwargs))

    def _step_sh(self, node: Call, scope: Scope) -> list[Item]:
        script = node.first() if node.args else node.kw("script")
        if script is None:
            return [self.notes.todo(node.line, "an `sh` step with no script", node.raw)]
        parts = _dedent(self.parts(script, node.line, scope, shell=True))
        if scope.cwd:
            multi = any(kind == "text" and "\n" in v for kind, v in parts)
            into = f"mkdir -p {shlex.quote(scope.cwd)} && cd {shlex.quote(scope.cwd)}"  # dir() makes it, as Jenkins
            parts = [("text", into + ("\n" if multi else " && ")), *parts]
        return [self._sh(text(parts), scope, check=not node.kw("returnStatus"))]

    def _step_echo(self, node: Call, scope: Scope) -> list[Item]:
        return [ast.Expr(call("ctx.log.info", self.string(node.first(node.kw("message", "")), node.line, scope)))]

    def _step_error(self, node: Call, scope: Scope) -> list[Item]:
        message = self.string(node.first(node.kw("message", "")), node.line, scope)
        return [ast.Raise(call("RuntimeError", message))]

    def _step_sleep(self, node: Call, scope: Scope) -> list[Item]:
        amount, unit = node.first(node.kw("time")), str(node.kw("unit", "SECONDS"))
        seconds = {"SECONDS": 1, "MINUTES": 60, "HOURS": 3600, "MILLISECONDS": 0.001}.get(unit)
        if not isinstance(amount, (int, float)) or seconds is None:
            return [self.notes.todo(node.line, "a `sleep` of an unknown length", node.raw)]
        return [self._sh(value(f"sleep {amount * seconds:g}"), scope)]

    def _step_dir(self, node: Call, scope: Scope) -> list[Item]:
        sub = node.first(node.kw("path"))
        if not isinstance(sub, str):
            return [self.notes.todo(node.line, "`dir` with a computed folder", node.raw)]
        return self.steps(node.block, scope.inner(cwd=f"{scope.cwd}/{sub}" if scope.cwd else sub))

    def _step_withEnv(self, node: Call, scope: Scope) -> list[Item]:  # noqa: N802
        env, out = dict(scope.env), []
        for item in node.first([]) or []:
            parts = self.parts(item, node.line, scope, shell=False)
            head = parts[0][1] if parts and parts[0][0] == "text" else ""
            var, sep, rest = str(head).partition("=")
            if not sep or not IDENT.match(var):
                out.append(self.notes.todo(node.line, "a `withEnv` entry that is not NAME=value", str(item)))
                continue
            env[var] = text([("text", rest), *parts[1:]])
        return out + self.steps(node.block, scope.inner(env=env))

    def _step_withCredentials(self, node: Call, scope: Scope) -> list[Item]:  # noqa: N802
        env, out = dict(scope.env), []
        for binding in node.first([]) or []:
            cred = binding.kw("credentialsId") if isinstance(binding, Call) else None
            if not isinstance(cred, str) or not cred:
                line = getattr(binding, "line", node.line) or node.line
                original = getattr(binding, "raw", "") or str(binding)
                out.append(self.notes.todo(line, "a credentials binding whose id is not a plain string", original))
                continue
            found = secret_name(cred)
            names = {
                "usernameVariable": f"{found}_USR",
                "passwordVariable": f"{found}_PSW",
                "variable": found,
                "keyFileVariable": found,
            }
            bound = [(str(binding.kw(k)), n) for k, n in names.items() if isinstance(binding.kw(k), str)]
            if binding.name not in ("usernamePassword", "string", "sshUserPrivateKey") or not bound:
                out.append(self.notes.todo(binding.line, f"the credentials binding `{binding.name}`", binding.raw))
                continue
            env.update({var: call("pk.secret", n) for var, n in bound if IDENT.match(var)})
        return out + self.steps(node.block, scope.inner(env=env))

    def _globs(self, node: Call, key: str, scope: Scope) -> list[str] | None:
        pattern = _flat(self.parts(node.first() if node.args else node.kw(key, ""), node.line, scope, shell=True))
        if pattern is None:
            return None
        return [_in(scope.cwd, p.strip()) for p in pattern.split(",") if p.strip()]

    def _step_junit(self, node: Call, scope: Scope) -> list[Item]:
        globs = self._globs(node, "testResults", scope)
        if not globs:
            return [self.notes.todo(node.line, "a `junit` step with computed paths", node.raw)]
        junit: list[ast.stmt] = [ast.Expr(call("ctx.junit", *globs, fail_on_failure=False))]
        made: list[Item] = list(junit)
        if node.kw("allowEmptyResults") is True:  # no report is no failure: pipekit's junit fails then
            log: list[ast.stmt] = [ast.Expr(call("ctx.log.info", call("str", name("e"))))]
            handler = ast.ExceptHandler(name("pk.StageFailed"), "e", log)
            made = [comment("allowEmptyResults: no report is no failure"), ast.Try(junit, [handler], [], [])]
        if "junit" not in scope.noted:
            scope.noted.add("junit")
            made.insert(
                0, comment("Jenkins marks failed tests unstable, not failed: fail_on_failure=True fails the stage")
            )
        return made

    def _step_archiveArtifacts(self, node: Call, scope: Scope) -> list[Item]:  # noqa: N802
        globs = self._globs(node, "artifacts", scope)
        if not globs:
            return [self.notes.todo(node.line, "an `archiveArtifacts` step with computed paths", node.raw)]
        return [ast.Expr(call("ctx.archive", *globs))]

    def _step_stash(self, node: Call, scope: Scope) -> list[Item]:
        return [comment(f"{node.name}: not needed, every stage shares the workspace (Jenkinsfile:{node.line})")]

    _step_unstash = _step_stash

    def _step_input(self, node: Call, scope: Scope) -> list[Item]:
        why = (
            "a manual approval (input) here: pipekit gates a whole stage (approval=pk.Approval(...)); put the steps"
            " after it in a stage of their own with that gate"
        )
        return [self.notes.todo(node.line, why, node.raw)]

    def _step_script(self, node: Call, scope: Scope) -> list[Item]:
        return self.steps(node.block, scope)

    def _step_container(self, node: Call, scope: Scope) -> list[Item]:
        why = f"the steps ran in the pod's container {node.first(node.kw('name'))!r}: give the stage that image="
        return [self.notes.todo(node.line, why), *self.steps(node.block, scope)]

    # -- docker -----------------------------------------------------------------------------
    def assign(self, node: Assign, scope: Scope) -> list[Item]:
        v = node.value
        var = node.name
        if IDENT.match(var) and (made := self._captured(v, node.line, scope)) is not None:
            scope.assigned.add(pyvar(var))
            return [ast.Assign([ast.Name(pyvar(var), ast.Store())], made, lineno=0)]
        if isinstance(v, Call) and v.name == "docker.build" and IDENT.match(var) and v.args:
            kwargs: dict[str, Any] = {"tag": self.string(v.first(), node.line, scope)}
            args: list[Any] = []
            extra = _flat(self.parts(v.args[1], node.line, scope, shell=True)) if len(v.args) > 1 else ""
            if extra is None:
                return [self.notes.todo(node.line, "docker.build with computed arguments", node.raw)]
            words = shlex.split(extra) if extra else []
            if "-f" in words[:-1]:
                kwargs["dockerfile"] = words[words.index("-f") + 1]
            if words and not words[-1].startswith("-"):
                args.append(words[-1])
            if set(words[:-1]) - {"-f", kwargs.get("dockerfile")}:
                self.pending.append(self.notes.todo(node.line, f"docker.build options are not converted: {extra}"))
            scope.assigned.add(pyvar(var))
            target = ast.Name(pyvar(var), ast.Store())
            return [ast.Assign([target], call("ctx.docker.build", *args, **kwargs), lineno=0)]
        return [self.notes.todo(node.line, "Groovy code is not converted", node.raw)]

    def _captured(self, v: Any, line: int, scope: Scope) -> ast.expr | None:
        """``sh(script: ..., returnStdout: true)`` (``.trim()``) and ``returnStatus: true`` as a value."""
        call_, methods = (v.call, v.methods) if isinstance(v, Chain) else (v, ())
        if not isinstance(call_, Call) or call_.name != "sh" or set(methods) - {"trim"}:
            return None
        script = call_.first() if call_.args else call_.kw("script")
        if script is None or not (call_.kw("returnStdout") is True or call_.kw("returnStatus") is True):
            return None
        command = text(_dedent(self.parts(script, line, scope, shell=True)))
        if call_.kw("returnStatus") is True:
            return ast.Attribute(self._sh(command, scope, check=False).value, "exit_code", ast.Load())  # type: ignore[attr-defined]
        made: ast.expr = ast.Attribute(self._sh(command, scope).value, "stdout", ast.Load())  # type: ignore[attr-defined]
        return ast.Call(ast.Attribute(made, "strip", ast.Load()), [], []) if methods else made

    def _push(self, node: Call, scope: Scope, credentials: ast.expr | None, registry: str) -> list[Item]:
        image = pyvar(node.name.rsplit(".", 1)[0])
        if image not in scope.assigned:
            why = f"`{node.name}`: the image is not built in this stage: build it here with ctx.docker.build"
            return [self.notes.todo(node.line, why, node.raw)]
        base = ast.Call(
            ast.Attribute(ast.Subscript(name(f"{image}.tags"), value(0)), "rsplit", ast.Load()),
            [value(":"), value(1)],
            [],
        )
        tag = node.first()
        ref: ast.expr = ast.Subscript(name(f"{image}.tags"), value(0))
        if tag is not None:
            ref = ast.BinOp(
                ast.Subscript(base, value(0)),
                ast.Add(),
                text([("text", ":"), *self.parts(tag, node.line, scope, shell=False)]),
            )
        if registry:
            ref = ast.BinOp(value(registry + "/"), ast.Add(), ref)
        return [ast.Expr(call("ctx.docker.push", name(image), ref, credentials=credentials))]

    def _step_docker_withRegistry(self, node: Call, scope: Scope) -> list[Item]:  # noqa: N802
        url = node.first("")
        creds = node.args[1] if len(node.args) > 1 else node.kw("credentialsId")
        if isinstance(creds, Ref) and creds.path in self.env_values:
            creds = self.env_values[creds.path]
        if not isinstance(url, str) or (creds is not None and not isinstance(creds, str)):
            why = "docker.withRegistry with a computed registry or credentials id: convert by hand"
            return [self.notes.todo(node.line, why, node.raw)]
        registry = url.removeprefix("https://").removeprefix("http://").rstrip("/")
        if registry in ("registry.hub.docker.com", "index.docker.io", "hub.docker.com", "docker.io"):
            registry = ""
        credentials = None
        if creds:
            found = secret_name(creds)
            credentials = call("pk.Credentials", call("pk.secret", f"{found}_USR"), call("pk.secret", f"{found}_PSW"))
            credentials.keywords.append(ast.keyword("registry", value(registry or "docker.io")))
        out: list[Item] = []
        for inner in node.block or ():
            if isinstance(inner, Call) and inner.name.endswith(".push"):
                out += self._push(inner, scope, credentials, registry)
            else:
                out += self.step(inner, scope)
        return out

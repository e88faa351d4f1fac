"""The declarative directives of a Jenkinsfile as pipekit's: ``agent``, ``when``, ``parameters``,
``options``, ``triggers``, ``tools``, ``matrix`` axes. What has no equivalent becomes a TODO that
says what to do instead."""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable
from typing import Any

import attrs

from pipekit._ci.jenkins.emit import Comment, call, comment, value
from pipekit._ci.jenkins.parse import Call, GString, Raw
from pipekit._ci.jenkins.steps import IDENT, Notes, secret_name

__all__ = [
    "UNITS",
    "Agent",
    "agent",
    "approval",
    "block",
    "condition",
    "env_secret",
    "matrix_axes",
    "options",
    "parameters",
    "triggers",
]

UNITS = {"SECONDS": "s", "MINUTES": "m", "HOURS": "h", "DAYS": "d"}
IGNORED_OPTIONS = {
    "timestamps", "buildDiscarder", "disableConcurrentBuilds", "skipDefaultCheckout", "ansiColor",
    "skipStagesAfterUnstable", "parallelsAlwaysFailFast", "preserveStashes", "durabilityHint", "disableResume",
    "newContainerPerStage", "quietPeriod", "copyArtifactPermission", "disableRestartFromStage", "overrideIndexTriggers",
}  # fmt: skip


def block(node: Call | None, key: str) -> Call | None:
    return next((n for n in (node.block or ()) if isinstance(n, Call) and n.name == key), None) if node else None


@attrs.frozen
class Agent:
    image: ast.expr | None = None
    dockerfile: str | None = None
    notes: tuple[Comment, ...] = ()


def _image_text(v: Any, axes: tuple[str, ...], resolve: Callable[[Any], str | None]) -> ast.expr | None:
    """An image name, with matrix values as pk's ``{axis}`` placeholders."""
    if isinstance(v, str):
        return value(v)
    if resolve(v) is not None:
        return value(resolve(v))
    if isinstance(v, GString) and all(kind == "text" or part in axes for kind, part in v.parts):
        return value("".join(part if kind == "text" else "{" + part + "}" for kind, part in v.parts))
    return None


def agent(
    node: Call | None, notes: Notes, axes: tuple[str, ...] = (), resolve: Callable[[Any], str | None] = lambda v: None
) -> Agent:
    """The image (or Dockerfile) of an ``agent``, and TODOs for what is not converted."""
    if node is None:
        return Agent()
    docker, dockerfile, kube = block(node, "docker"), block(node, "dockerfile"), block(node, "kubernetes")
    if docker is not None:
        spec = docker.first() or docker.kw("image") or (block(docker, "image") or Call("")).first()
        image = _image_text(spec, axes, resolve)
        todo = (
            [notes.todo(docker.line, "the agent's image is computed: set image= by hand", docker.raw)]
            if image is None
            else []
        )
        extra = [
            n for n in docker.block or () if not (isinstance(n, Call) and n.name in ("image", "label", "reuseNode"))
        ]
        extra += [Call(k, line=docker.line, raw=f"{k}: {v!r}") for k, v in docker.kwargs if k not in ("image", "label")]
        for n in extra:
            why = "this docker agent setting is not converted (volumes, user: the stage's own options)"
            todo.append(
                notes.todo(getattr(n, "line", docker.line), why, getattr(n, "raw", "") or getattr(n, "text", ""))
            )
        return Agent(image=image, notes=tuple(todo))
    if dockerfile is not None:
        filename = (block(dockerfile, "filename") or Call("")).first() or "Dockerfile"
        folder = (block(dockerfile, "dir") or Call("")).first()
        todo = []
        if not isinstance(filename, str) or (folder is not None and not isinstance(folder, str)):
            todo.append(notes.todo(dockerfile.line, "a computed Dockerfile: set dockerfile= by hand", dockerfile.raw))
            filename, folder = "Dockerfile", None
        if block(dockerfile, "additionalBuildArgs") is not None:
            todo.append(notes.todo(dockerfile.line, "additionalBuildArgs of the Dockerfile agent are not converted"))
        return Agent(dockerfile=f"{folder}/{filename}" if folder else filename, notes=tuple(todo))
    if kube is not None:
        why = "a Kubernetes pod agent: pipekit runs each stage in a container: give the stages image= (the pod's"
        why += " build container's image)"
        return Agent(notes=(notes.todo(kube.line, why, kube.raw),))
    return Agent()


# -- when ---------------------------------------------------------------------------------------
def condition(node: Any, notes: Notes, out: list[Any]) -> ast.expr | None:
    """A ``when`` block's conditions as a pk condition (None: none to convert)."""
    if isinstance(node, Call) and node.name in ("when", "allOf", "anyOf", "not"):
        inner = [c for c in (condition(n, notes, out) for n in node.block or ()) if c is not None]
        if not inner:
            return None
        if node.name == "not":
            return ast.UnaryOp(ast.Invert(), inner[0])
        op: ast.operator = ast.BitOr() if node.name == "anyOf" else ast.BitAnd()
        result = inner[0]
        for c in inner[1:]:
            result = ast.BinOp(result, op, c)
        return result
    if isinstance(node, Call) and node.name in ("beforeAgent", "beforeInput", "beforeOptions"):
        return None
    if isinstance(node, Call) and node.name == "expression":
        return _expression(node, notes, out)
    if isinstance(node, Call):
        return _simple(node, notes, out)
    out.append(notes.todo(getattr(node, "line", 0), "a `when` condition is not converted", getattr(node, "text", "")))
    return None


def _simple(node: Call, notes: Notes, out: list[Any]) -> ast.expr | None:
    first = node.first(node.kw("pattern"))
    if node.name == "branch" and isinstance(first, str) and node.kw("comparator", "GLOB") == "GLOB":
        return call("pk.branch", first)
    if node.name == "environment" and isinstance(node.kw("name"), str) and isinstance(node.kw("value"), str):
        return call("pk.env", node.kw("name"), node.kw("value"))
    if node.name == "changeset" and isinstance(first, str) and node.kw("comparator", "GLOB") == "GLOB":
        return call("pk.changed", first)
    out.append(notes.todo(node.line, f"the `when` condition `{node.name}` is not converted", node.raw))
    return None


_EXPRESSIONS: list[tuple[str, Callable[[re.Match[str]], ast.expr]]] = [
    (r"!\s*params\.(\w+)", lambda m: ast.UnaryOp(ast.Invert(), call("pk.param_is", m[1], True))),
    (r"params\.(\w+)(?:\s*==\s*true|\.toBoolean\(\))?", lambda m: call("pk.param_is", m[1], True)),
    (r"params\.(\w+)\s*==\s*false", lambda m: call("pk.param_is", m[1], False)),
    (r"""(?:params\.(\w+)|"\$\{params\.(\w+)\}")\s*==\s*(['"])([^'"$\\]*)\3""", lambda m: _param_is(m)),
    (r"""(?:env\.)?BRANCH_NAME\s*==\s*(['"])([^'"$\\]*)\1""", lambda m: call("pk.branch", m[2])),
    (r"""env\.(\w+)\s*==\s*(['"])([^'"$\\]*)\2""", lambda m: call("pk.env", m[1], m[3])),
    (r"(?:env\.)?BRANCH_NAME\s*==~\s*/\^?\(?([\w.\-/|]+?)\)?\$?/", lambda m: call("pk.branch", *m[1].split("|"))),
]


def _param_is(m: re.Match[str]) -> ast.expr:
    wanted: Any = m[4]
    return call("pk.param_is", m[1] or m[2], {"true": True, "false": False}.get(wanted, wanted))


def _expression(node: Call, notes: Notes, out: list[Any]) -> ast.expr | None:
    """``expression { return params.X }``, ``params.X == 'v'``, ``env.BRANCH_NAME == 'main'``; any
    other Groovy expression stays as a TODO."""
    body = " ".join(n.text if isinstance(n, Raw) else getattr(n, "raw", "") for n in node.block or ())
    expr = body.strip().removeprefix("return").strip().rstrip(";").strip()
    if expr.startswith("(") and expr.endswith(")"):
        expr = expr[1:-1].strip()
    for pattern, make in _EXPRESSIONS:
        m = re.fullmatch(pattern, expr)
        if m:
            return make(m)
    out.append(notes.todo(node.line, "a Groovy `when { expression }`: write it as a pk condition", node.raw))
    return None


# -- parameters, options, triggers --------------------------------------------------------------
def parameters(node: Call | None, notes: Notes) -> list[ast.stmt | Comment]:
    out: list[ast.stmt | Comment] = []
    used: set[str] = set()
    for p in node.block or () if node is not None else ():
        pname = p.kw("name") if isinstance(p, Call) else None
        if not isinstance(p, Call) or not isinstance(pname, str) or not IDENT.match(pname):
            why = "a parameter whose name is not a Python name is not converted"
            out.append(notes.todo(getattr(p, "line", 0), why, getattr(p, "raw", "") or getattr(p, "text", "")))
            continue
        constant = pname.upper()
        n = 2
        while constant in used:  # `name` and `NAME`: two parameters, two names
            constant, n = f"{pname.upper()}_{n}", n + 1
        used.add(constant)
        target: list[ast.expr] = [ast.Name(constant, ast.Store())]
        if p.name == "password":
            out.append(comment(f"a password parameter: the secret {pname} (Jenkinsfile:{p.line})"))
            made: ast.expr | None = call("pk.secret", pname)
        else:
            made = _param(p, pname)
        if made is None:
            out.append(notes.todo(p.line, f"the parameter `{p.name}` is not converted", p.raw))
            continue
        out.append(ast.Assign(target, made, lineno=0))
    return out


def _param(p: Call, pname: str) -> ast.expr | None:
    """A Jenkins parameter (``string``, ``text``, ``booleanParam``, ``choice``) as ``pk.param``."""
    help_text = p.kw("description", "")
    help_text = help_text if isinstance(help_text, str) else ""
    default = p.kw("defaultValue")
    if p.name in ("string", "text") and isinstance(default, (str, type(None))):
        return call("pk.param", pname, default=default or "", help=help_text)
    if p.name == "booleanParam" and isinstance(default, (bool, type(None))):
        return call("pk.param", pname, default=bool(default), help=help_text)
    if p.name == "choice" and isinstance(p.kw("choices", []), (str, list)):
        choices = p.kw("choices", [])
        choices = choices.splitlines() if isinstance(choices, str) else [str(c) for c in choices]
        more = f" (one of: {', '.join(choices)})" if choices else ""
        return call("pk.param", pname, default=choices[0] if choices else "", help=(help_text + more).strip())
    return None


_INPUT_FIELDS = ("message", "submitter", "ok", "id", "submitterParameter", "parameters")


def approval(node: Call, notes: Notes, out: list[Any]) -> tuple[ast.expr, list[str], str | None]:
    """Jenkins' ``input`` (a stage's ``input { }``, or the step) as ``pk.Approval(...)``, the
    names of its parameters and its ``submitterParameter`` (Jenkins sets them as environment
    variables of the stage)."""
    fields: dict[str, Any] = {k: v for k, v in node.kwargs if k in _INPUT_FIELDS}
    for k, v in node.kwargs:
        if k not in _INPUT_FIELDS:
            out.append(notes.todo(node.line, f"input's `{k}` is not converted", f"{k}: {v!r}"))
    for n in node.block or ():
        if isinstance(n, Call) and n.name in _INPUT_FIELDS:
            fields[n.name] = n.block or () if n.name == "parameters" else n.first()
        else:
            out.append(notes.todo(getattr(n, "line", 0), "this part of input is not converted", _text(n)))
    kwargs: dict[str, Any] = {}
    message = fields.get("message", node.first())
    if isinstance(message, str) and message.strip():
        kwargs["message"] = message
    elif message is not None:
        out.append(notes.todo(node.line, "input's message is not plain text: write the question", _text(message)))
    submitter = fields.get("submitter")
    if isinstance(submitter, str):
        kwargs["approvers"] = [s.strip() for s in submitter.split(",") if s.strip()] or None
    elif submitter is not None:
        out.append(notes.todo(node.line, "input's submitter is not plain text: list the approvers", _text(submitter)))
    if isinstance(fields.get("ok"), str):
        out.append(comment(f"Jenkins' input button {fields['ok']!r}: pipekit asks to approve or reject"))
    submitter_parameter = fields.get("submitterParameter")
    submitter_parameter = submitter_parameter if isinstance(submitter_parameter, str) else None
    params: list[ast.expr] = []
    names: list[str] = []
    given = fields.get("parameters") or ()
    if not isinstance(given, (list, tuple)):
        out.append(notes.todo(node.line, "input's parameters are not a list: convert them by hand", _text(given)))
        given = ()
    for p in given:
        pname = p.kw("name") if isinstance(p, Call) else None
        made = _param(p, pname) if isinstance(p, Call) and isinstance(pname, str) and IDENT.match(pname) else None
        if made is None:
            out.append(notes.todo(getattr(p, "line", node.line), "an input parameter that is not converted", _text(p)))
            continue
        params.append(made)
        names.append(str(pname))
    if params:
        kwargs["params"] = ast.List(params, ast.Load())
    return call("pk.Approval", **{k: v for k, v in kwargs.items() if v is not None}), names, submitter_parameter


def _text(node: Any) -> str:
    return str(getattr(node, "raw", "") or getattr(node, "text", "") or node)


@attrs.define
class Options:
    timeout: str | None = None
    retries: int = 0
    notes: list[Comment] = attrs.field(factory=list)


def options(node: Call | None, notes: Notes) -> Options:
    found = Options()
    for o in node.block or () if node is not None else ():
        if isinstance(o, Call) and o.name == "timeout" and isinstance(o.kw("time", o.first()), (int, float)):
            found.timeout = f"{o.kw('time', o.first())}{UNITS.get(str(o.kw('unit', 'MINUTES')), 'm')}"
        elif isinstance(o, Call) and o.name == "retry" and isinstance(o.first(o.kw("count", 1)), int):
            found.retries = max(int(o.first(o.kw("count", 1))) - 1, 0)  # retry(3): three attempts
        elif isinstance(o, Call) and o.name in IGNORED_OPTIONS:
            found.notes.append(comment(f"options {{ {o.name} }}: Jenkins only (Jenkinsfile:{o.line})"))
        else:
            why = "this option has no pipekit equivalent: drop it, or do its work in a stage"
            found.notes.append(notes.todo(getattr(o, "line", 0), why, getattr(o, "raw", "") or getattr(o, "text", "")))
    return found


def triggers(node: Call, notes: Notes) -> tuple[list[ast.expr], list[Comment]]:
    """``cron`` with a plain five-field schedule and ``githubPush`` convert; the rest are TODOs."""
    made: list[ast.expr] = []
    todos: list[Comment] = []
    for t in node.block or ():
        spec = t.first(t.kw("spec")) if isinstance(t, Call) else None
        if isinstance(t, Call) and t.name == "cron" and isinstance(spec, str) and _plain_cron(spec):
            made.append(call("pk.cron", " ".join(spec.split())))
        elif isinstance(t, Call) and t.name == "githubPush":
            made.append(call("pk.on_push"))
        elif isinstance(t, Call) and t.name == "cron":
            why = "a Jenkins schedule (H, @daily, several lines): write it as pk.cron('M H * * *') in"
            todos.append(notes.todo(t.line, why + " pk.Pipeline(triggers=[...]) for `pipekit serve`", t.raw))
        elif isinstance(t, Call) and t.name == "pollSCM":
            why = "polling: `pipekit serve` watches the repository; pk.on_push() in pk.Pipeline(triggers=[...])"
            todos.append(notes.todo(t.line, why, t.raw))
        else:
            why = "this trigger has no pipekit equivalent (pipekit serve has pk.cron and pk.on_push)"
            todos.append(notes.todo(getattr(t, "line", 0), why, getattr(t, "raw", "") or getattr(t, "text", "")))
    return made, todos


def _plain_cron(spec: str) -> bool:
    fields = spec.split()
    return len(fields) == 5 and all(re.fullmatch(r"[0-9*,/\-]+", f) for f in fields)


# -- matrix -------------------------------------------------------------------------------------
def _values(axis: Call) -> list[Any] | None:
    found = block(axis, "values") or block(axis, "notValues")
    if found is None or not all(isinstance(v, (str, int, float)) for v in found.args):
        return None
    return [str(v) for v in found.args]


def matrix_axes(node: Call) -> tuple[dict[str, list[str]], list[dict[str, str]]] | None:
    """A ``matrix``'s axes and excludes as pk's ``matrix=``/``exclude=``; None when its shape is
    not one pipekit has (computed values)."""
    axes: dict[str, list[str]] = {}
    for axis in (block(node, "axes") or Call("")).block or ():
        axis_name = (block(axis, "name") or Call("")).first() if isinstance(axis, Call) else None
        values = _values(axis) if isinstance(axis, Call) else None
        if not isinstance(axis_name, str) or not IDENT.match(axis_name) or not values:
            return None
        axes[axis_name] = values
    excludes: list[dict[str, str]] = []
    for exclude in (block(node, "excludes") or Call("")).block or ():
        chosen: dict[str, list[str]] = {}
        for axis in exclude.block or () if isinstance(exclude, Call) else ():
            axis_name = (block(axis, "name") or Call("")).first() if isinstance(axis, Call) else None
            values = _values(axis) if isinstance(axis, Call) else None
            if axis_name not in axes or values is None:
                return None
            if block(axis, "notValues") is not None:
                values = [v for v in axes[str(axis_name)] if v not in values]
            chosen[str(axis_name)] = values
        excludes += [dict(zip(chosen, combo)) for combo in itertools.product(*chosen.values())]
    return (axes, excludes) if axes else None


def env_secret(v: Call, notes: Notes, line: int, raw: str) -> ast.expr | Comment:
    """``credentials('id')``: pk.secret, or a TODO when the id is not a plain string."""
    cred = v.first()
    if not isinstance(cred, str) or not cred:
        return notes.todo(line, "credentials() with an id that is not a plain string", raw)
    return call("pk.secret", secret_name(cred))

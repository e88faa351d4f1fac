"""``pipekit import jenkinsfile``: a declarative Jenkinsfile as a pipeline.py.

The Jenkinsfile is parsed (``_ci.jenkins.parse``), then each part becomes its pipekit form (the
mapping is in docs/from-jenkins.md) as a Python syntax tree (``_ci.jenkins.emit``): the pipeline's
agent image and environment become the ``pk.Pipeline``'s, parameters become ``pk.param``, each
stage a function (stages in sequence depend on the one before, parallel ones on the same), a
``matrix`` pk's matrix, ``when`` a condition (a parent stage's applies to every stage inside it),
``options`` a timeout and retries, ``post`` post actions. What has no equivalent stays as a
``# TODO(Jenkinsfile:LINE)`` comment where it was, with its text, and is listed: the command then
exits 1. The result is checked before the command says anything (``_ci.jenkins.check``).
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from typing import Any

import attrs

from pipekit import __version__
from pipekit._ci.jenkins.directives import (
    UNITS,
    agent,
    approval,
    block,
    condition,
    env_secret,
    matrix_axes,
    options,
    parameters,
    triggers,
)
from pipekit._ci.jenkins.emit import Comment, Def, Module, call, comment, format_source, name, value
from pipekit._ci.jenkins.parse import Assign, Call, Concat, GString, Jenkinsfile, ParseError, Raw, Ref, parse_file
from pipekit._ci.jenkins.steps import IDENT, Notes, Scope, StepWriter, identifier

__all__ = ["Converted", "convert"]

_CONSTANT = re.compile(r"""\s*(?:final\s+)?(?:def|String)?\s*(\w+)\s*=\s*(?:'([^'\\\n]*)'|"([^"$\\\n]*)")\s*;?\s*$""")
POSTS = {"always": "always", "success": "success", "failure": "failure", "cleanup": "cleanup"}
POSTS_ALSO = {"unstable": "failure", "unsuccessful": "failure"}
STAGE_DIRECTIVES = {"agent", "environment", "options", "when", "post", "steps", "parallel", "stages", "matrix"}


@attrs.frozen
class Converted:
    text: str
    todos: tuple[tuple[int, str], ...]


@attrs.define
class _Inherited:
    """What a stage takes from the stages around it."""

    when: tuple[ast.expr, ...] = ()
    agent: Any = None
    env: tuple[tuple[str, ast.expr], ...] = ()
    parents: tuple[str, ...] = ()
    notes: list[Comment] = attrs.field(factory=list)  # TODOs of a parent, put before its first stage


def _label(node: Call) -> str:
    first = node.first("stage")
    if isinstance(first, GString):
        return "".join(v for _, v in first.parts)
    return str(first)


class _Converter:
    def __init__(self, jf: Jenkinsfile, source: str = "") -> None:
        self.source = source
        self.root = jf.pipeline
        self.outside = jf.outside
        self.notes = Notes()
        self.env_names: set[str] = set()
        self.env_values: dict[str, str] = {}
        self.steps = StepWriter(self.notes, self.env_names, self.env_values)
        self.taken: set[str] = {"pk", "pipeline", *keyword.kwlist, *dir(builtins)}
        self.defs: list[Def | Comment] = []
        self.retries = 0
        self.default_agent: Any = None

    def unique(self, wanted: str, parents: tuple[str, ...] = ()) -> str:
        """A function name no other has: the stage's, else with its parents', else numbered."""
        candidates = [wanted] + [f"{wanted}_{identifier(p)}"[:100] for p in reversed(parents)]
        found = next((c for c in candidates if c not in self.taken), None)
        n = 2
        while found is None:
            found = f"{wanted}_{n}" if f"{wanted}_{n}" not in self.taken else None
            n += 1
        self.taken.add(found)
        return found

    # -- the pipeline -----------------------------------------------------------------------
    def run(self, pipeline_name: str) -> Module:
        top: list[Any] = [self.outside_statement(r) for r in self.outside]
        params = parameters(block(self.root, "parameters"), self.notes)
        self.steps.params = {
            str(p.value.args[0].value)  # type: ignore[attr-defined]
            for p in params
            if isinstance(p, ast.Assign) and isinstance(p.value, ast.Call) and ast.unparse(p.value.func) == "pk.param"
        }
        self.default_agent = agent(block(self.root, "agent"), self.notes, (), self.static)
        top += self.default_agent.notes
        env = self.environment(block(self.root, "environment"), top)
        found = options(block(self.root, "options"), self.notes)
        top += found.notes
        self.retries = found.retries
        if found.timeout:
            top.append(comment(f"Jenkins' timeout of the whole run: `pipekit run --timeout {found.timeout}`"))
        kwargs: dict[str, Any] = {}
        if self.default_agent.image is not None:
            kwargs["image"] = self.default_agent.image
        if env:
            kwargs["env"] = ast.Dict([value(k) for k, _ in env], [v for _, v in env])
        made: list[ast.expr] = []
        for section in self.root.block or ():
            top += self.section(section, made)
        if made:
            kwargs["triggers"] = ast.List(made, ast.Load())
        pipeline = ast.Assign(
            [ast.Name("pipeline", ast.Store())], call("pk.Pipeline", pipeline_name, **kwargs), lineno=0
        )
        self.stages()
        self.posts(block(self.root, "post"), None, self.defs)
        params += self.undeclared(self.steps.params)
        doc = f"Converted from a Jenkinsfile by `pipekit import jenkinsfile` (pipekit {__version__})."
        if self.notes.todos:
            doc += "\n\nSearch for TODO: those parts of the Jenkinsfile need converting by hand.\n"
        imports: list[Any] = [ast.Import([ast.alias("pipekit", "pk")])]
        return Module(doc, [imports, list(params), [pipeline, *top], list(self.defs)])

    def section(self, node: Any, made: list[ast.expr]) -> list[Any]:
        """A pipeline-level section other than the ones run() reads."""
        if isinstance(node, Raw):
            return [self.notes.todo(node.line, "Groovy code is not converted", node.text)]
        if not isinstance(node, Call) or node.name in ("agent", "environment", "options", "parameters", "stages"):
            return []
        if node.name in ("post", "matrix"):
            return []
        if node.name == "triggers":
            converted, todos = triggers(node, self.notes)
            made += converted
            return todos
        if node.name == "tools":
            why = "pipekit installs no tools: run the stages in an image that has these (image=)"
            return [self.notes.todo(node.line, why, node.raw)]
        if node.name == "libraries":
            why = "a shared library: the steps it defines are not converted (TODOs where they are used)"
            return [self.notes.todo(node.line, why, node.raw)]
        return [self.notes.todo(node.line, f"the section `{node.name}` is not converted", node.raw)]

    def environment(self, node: Call | None, notes: list[Any]) -> list[tuple[str, ast.expr]]:
        items: list[tuple[str, ast.expr]] = []
        for a in node.block or () if node is not None else ():
            if not isinstance(a, Assign) or not IDENT.match(a.name):
                why = (
                    "a value computed in Groovy: set it by hand"
                    if isinstance(a, Raw)
                    else "not an environment variable"
                )
                notes.append(self.notes.todo(getattr(a, "line", 0), why, _raw(a)))
                continue
            self.env_names.add(a.name)
            v = a.value
            if isinstance(v, Call) and v.name == "credentials":
                made = env_secret(v, self.notes, a.line, a.raw)
                if isinstance(made, Comment):
                    notes.append(made)
                else:
                    items.append((a.name, made))
            elif (known := self.static(v)) is not None:
                self.env_values[a.name] = known
                items.append((a.name, value(known)))
            elif isinstance(v, GString):
                why = f"{a.name} is computed in Groovy: set it by hand (the value below is the Groovy text)"
                notes.append(self.notes.todo(a.line, why, a.raw))
                items.append((a.name, value("".join(p if k == "text" else "${" + p + "}" for k, p in v.parts))))
            else:
                notes.append(self.notes.todo(a.line, f"{a.name} is computed in Groovy: set it by hand", a.raw))
        return items

    def static(self, v: Any) -> str | None:
        """A value known before the run (literals, and the environment's and Groovy constants'
        literal values it uses), as Jenkins computes it; None when it is not."""
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (str, int, float)):
            return str(v)
        if isinstance(v, Ref) or isinstance(v, GString):
            refs = [v.path] if isinstance(v, Ref) else [p for k, p in v.parts if k == "expr"]
            known = {**self.steps.constants, **self.env_values}
            found = {r: known.get(r.removeprefix("env.")) for r in refs}
            if any(x is None for x in found.values()):
                return None
            if isinstance(v, Ref):
                return found[v.path]
            return "".join(p if k == "text" else str(found[p]) for k, p in v.parts)
        if isinstance(v, Concat):
            parts = [self.static(p) for p in v.parts]
            return None if any(p is None for p in parts) else "".join(str(p) for p in parts)
        return None

    def undeclared(self, declared: set[str]) -> list[Any]:
        """Parameters the stages use but the Jenkinsfile does not declare (the job's configuration
        or ``properties([parameters(...)])`` does): declared here, with a TODO, so that the stages run."""
        used: dict[str, Any] = {}  # name: the default, of the type the conditions compare it with
        for d in (d for d in self.defs if isinstance(d, Def)):
            for node in (n for top in (*d.decorators, *d.body) if isinstance(top, ast.AST) for n in ast.walk(top)):
                if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "ctx.params":
                    used.setdefault(node.attr, "")
                elif isinstance(node, ast.Call) and ast.unparse(node.func) == "pk.param_is":
                    wanted = getattr(node.args[1], "value", "")
                    used[str(getattr(node.args[0], "value", ""))] = False if isinstance(wanted, bool) else ""
        out: list[Any] = []
        for pname in sorted(set(used) - declared - {""}):
            line = self.source[: max(self.source.find(f"params.{pname}"), 0)].count("\n") + 1
            why = f"the parameter {pname} is not declared in the Jenkinsfile: declared here, check its default"
            out.append(self.notes.todo(line, why))
            target: list[ast.expr] = [ast.Name(f"{pname.upper()}_PARAM", ast.Store())]
            out.append(ast.Assign(target, call("pk.param", pname, default=used[pname]), lineno=0))
        return out

    def outside_statement(self, node: Raw) -> Comment:
        """A statement outside ``pipeline { }``: a Groovy constant (``def X = 'v'``) is kept for
        the strings that use it; anything else is a TODO."""
        m = _CONSTANT.match(node.text)
        assigned = len(re.findall(rf"(?<![\w.]){re.escape(m[1])}\s*=(?!=)", self.source)) if m else 0
        if m and IDENT.match(m[1]) and assigned == 1:  # set once: a constant
            self.steps.constants[m[1]] = m[2] if m[2] is not None else m[3]
            return comment(f"the Groovy constant {m[1]} (Jenkinsfile:{node.line}) is written out where it is used")
        return self.notes.todo(node.line, _outside_why(node), node.text)

    # -- stages -----------------------------------------------------------------------------
    def stages(self) -> None:
        stages = block(self.root, "stages")
        if stages is None and block(self.root, "matrix") is not None:  # a matrix right in the pipeline
            stages = Call("stages", block=(Call("stage", ("matrix",), block=(block(self.root, "matrix"),)),))
        if stages is None:
            raise ParseError("the pipeline has no `stages` block", self.root.line)
        self.sequence(stages, [], _Inherited())
        if not any(isinstance(d, Def) and d.args == ("ctx",) for d in self.defs):
            raise ParseError(
                "the pipeline has no stage that could be read (Jenkins needs one in `stages`)", stages.line
            )

    def sequence(self, stages: Call, before: list[str], inherited: _Inherited) -> list[str]:
        """The stages of a ``stages`` block, each needing the last ones before it; returns the
        names of the last ones."""
        last = before
        for node in stages.block or ():
            if isinstance(node, Call) and node.name == "stage":
                last = self.stage(node, last, inherited) or last
            else:
                inherited.notes.append(self.notes.todo(getattr(node, "line", 0), "not a stage", _raw(node)))
        return last

    def stage(self, node: Call, before: list[str], inherited: _Inherited) -> list[str]:
        inner = {k: block(node, k) for k in ("parallel", "stages", "matrix")}
        if not any(inner.values()):
            return [self.leaf(node, before, inherited)]
        here = self.group(node, inherited)
        if inner["matrix"] is not None:
            return self.matrix(node, inner["matrix"], before, here)
        if inner["stages"] is not None:
            return self.sequence(inner["stages"], before, here)
        ends: list[str] = []
        for branch in inner["parallel"].block or ():  # type: ignore[union-attr]
            if isinstance(branch, Call) and branch.name == "stage":
                ends += self.stage(branch, before, here)
            elif not (isinstance(branch, Call) and branch.name == "failFast"):
                here.notes.append(self.notes.todo(getattr(branch, "line", 0), "not a stage", _raw(branch)))
        return ends

    def group(self, node: Call, inherited: _Inherited, axes: tuple[str, ...] = ()) -> _Inherited:
        """What a stage that holds stages passes on to them: its when, agent, environment."""
        notes = inherited.notes
        when = block(node, "when")
        cond = condition(when, self.notes, notes) if when is not None else None
        found = agent(block(node, "agent"), self.notes, axes, self.static)
        notes += found.notes
        env = self.environment(block(node, "environment"), notes)
        for n in node.block or ():
            kind = n.name if isinstance(n, Call) else ""
            if kind in ("when", "agent", "environment", "parallel", "stages", "matrix", "failFast"):
                continue
            why = {
                "tools": "pipekit installs no tools: run the stages inside in an image that has these (image=)",
                "post": "post actions of a stage that holds stages: put them on its last stages (post=)",
                "options": "options of a stage that holds stages: set them on the stages inside (timeout=, retries=)",
            }.get(kind, "this part of a stage that holds stages is not converted")
            notes.append(self.notes.todo(getattr(n, "line", 0), why, _raw(n)))
        return _Inherited(
            when=inherited.when + ((cond,) if cond is not None else ()),
            agent=found if block(node, "agent") is not None else inherited.agent,
            env=inherited.env + tuple(env),
            parents=inherited.parents + (_label(node),),
            notes=notes,
        )

    def matrix(self, node: Call, m: Call, before: list[str], inherited: _Inherited) -> list[str]:
        shape = matrix_axes(m)
        inner = block(m, "stages")
        if shape is None or inner is None:
            why = "a matrix whose axes pipekit cannot take (computed values): its stages run once each, below"
            inherited.notes.append(self.notes.todo(m.line, why, m.raw.split("stages", 1)[0]))
            return self.sequence(inner, before, inherited) if inner is not None else before
        axes, excludes = shape
        rest = tuple(n for n in m.block or () if getattr(n, "name", "") not in ("axes", "excludes"))
        here = self.group(Call("matrix", block=rest), inherited, tuple(axes))
        here.parents = inherited.parents + (_label(node),)
        count = sum(1 for n in inner.block or () if isinstance(n, Call) and n.name == "stage")
        if count > 1:
            here.notes.append(comment("Jenkins runs these stages in turn in each combination; here each stage"))
            here.notes.append(comment("waits for every combination of the one before"))
        last = before
        for s in inner.block or ():
            if isinstance(s, Call) and s.name == "stage":
                last = [self.leaf(s, last, here, (axes, excludes))]
        return last

    def leaf(self, node: Call, needs: list[str], inherited: _Inherited, shape: Any = None) -> str:
        fn = self.unique(identifier(_label(node)), inherited.parents)
        notes = list(inherited.notes)
        inherited.notes.clear()  # a parent's TODOs go before its first stage only
        axes = tuple(shape[0]) if shape else ()
        own = agent(block(node, "agent"), self.notes, axes, self.static)
        notes += own.notes
        use = own if block(node, "agent") is not None else inherited.agent
        kwargs: dict[str, Any] = {}
        if use is not None and use.image is not None:
            kwargs["image"] = use.image
        dockerfile = use.dockerfile if use is not None else None
        if dockerfile or (self.default_agent.dockerfile and "image" not in kwargs):
            kwargs["dockerfile"] = dockerfile or self.default_agent.dockerfile
        kwargs.update(self.decorations(node, needs, inherited, notes, fn))
        if shape:
            kwargs["matrix"], kwargs["exclude"] = shape[0], shape[1] or None
        scope = Scope(axes=axes)
        steps, unwrapped = _unwrap((block(node, "steps") or Call("")).block or (), kwargs)
        steps = self.input_step(steps, kwargs, notes)
        body = unwrapped + self.steps.steps(steps, scope)
        decorator = call("pk.stage", **{k: v for k, v in kwargs.items() if v is not None})
        self.defs.append(Def((decorator,), fn, ("ctx",), (*notes, *body)))
        return fn

    def decorations(
        self, node: Call, needs: list[str], inherited: _Inherited, notes: list[Any], fn: str
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"needs": list(needs) or None}
        env = list(inherited.env) + self.environment(block(node, "environment"), notes)
        if env:
            kwargs["env"] = ast.Dict([value(k) for k, _ in env], [v for _, v in env])
        when = block(node, "when")
        conds = list(inherited.when) + ([c] if when is not None and (c := condition(when, self.notes, notes)) else [])
        if conds:
            result = conds[0]
            for c in conds[1:]:
                result = ast.BinOp(result, ast.BitAnd(), c)
            kwargs["when"] = result
        found = options(block(node, "options"), self.notes)
        notes += found.notes
        kwargs["timeout"] = found.timeout
        kwargs["retries"] = (found.retries or self.retries) or None
        post = self.posts(block(node, "post"), fn, notes)
        kwargs["post"] = post
        for n in node.block or ():
            if isinstance(n, Call) and n.name == "input":
                kwargs["approval"] = self.gate(n, notes)
            elif isinstance(n, Call) and n.name == "tools":
                why = "pipekit installs no tools: run this stage in an image that has these (image=)"
                notes.append(self.notes.todo(n.line, why, n.raw))
            elif not (isinstance(n, Call) and n.name in STAGE_DIRECTIVES | {"failFast"}):
                notes.append(self.notes.todo(getattr(n, "line", 0), "this part of the stage is not converted", _raw(n)))
        return kwargs

    def gate(self, node: Call, notes: list[Any]) -> ast.expr:
        """``input``: the stage's ``approval=``; its parameters become the stage's environment
        variables, as Jenkins sets them."""
        made, names, submitter = approval(node, self.notes, notes)
        self.env_names.update([*names, *([submitter] if submitter else [])])  # set in the stage, as below
        if names:
            notes.append(comment(f"Jenkins sets the input's parameters ({', '.join(names)}) as environment variables"))
            notes.append(ast.parse(_AS_ENV).body[0])
        if submitter:
            notes.append(comment(f"input's submitterParameter: who approved, in {submitter}"))
            notes.append(ast.parse(f"ctx.env[{submitter!r}] = ctx.approval.by").body[0])
        return made

    def input_step(self, steps: tuple[Any, ...], kwargs: dict[str, Any], notes: list[Any]) -> tuple[Any, ...]:
        """The stage's first ``input`` step (among its steps, not in a script) as its ``approval=``
        when it has no stage-level one: the gate then comes before all of the stage's steps."""
        at = next((i for i, s in enumerate(steps) if isinstance(s, Call) and s.name == "input"), None)
        if at is None or "approval" in kwargs:
            return steps
        if at:
            why = "the input step came after other steps, which now run after the approval: move them to a stage before"
            notes.append(self.notes.todo(steps[at].line, why))
        kwargs["approval"] = self.gate(steps[at], notes)
        return (*steps[:at], *steps[at + 1 :])

    def posts(self, node: Call | None, stage: str | None, notes: list[Any]) -> ast.expr | None:
        """Post actions: functions; for a stage, the ``post=`` mapping (None for none)."""
        mapping: dict[str, list[str]] = {}
        for cond in node.block or () if node is not None else ():
            key = POSTS.get(cond.name) or POSTS_ALSO.get(cond.name) if isinstance(cond, Call) else None
            if key is None:
                why = "this post condition has no pipekit equivalent (always, success, failure, cleanup)"
                notes.append(self.notes.todo(getattr(cond, "line", 0), why, _raw(cond)))
                continue
            fn = self.unique(f"{stage or 'pipeline'}_{cond.name}")
            body: list[Any] = []
            if cond.name in POSTS_ALSO:
                body.append(comment(f"Jenkins' {cond.name}: pipekit has no unstable; this runs on failure"))
            body += self.steps.steps(cond.block, Scope())
            decorators = () if stage else (call("pk.post", key),)
            self.defs.append(Def(decorators, fn, ("ctx", "outcome"), tuple(body)))
            mapping.setdefault(key, []).append(fn)
        if not mapping:
            return None
        return ast.Dict(
            [value(k) for k in mapping],
            [name(v[0]) if len(v) == 1 else ast.List([name(f) for f in v], ast.Load()) for v in mapping.values()],
        )


#: an input's parameters as Jenkins sets them: environment variables, booleans as true/false
_AS_ENV = (
    "ctx.env.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in ctx.approval.params.items()})"
)


def _unwrap(steps: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], list[Any]]:
    """``timeout(...) { }`` or ``retry(n) { }`` around all the steps of a stage: the stage's
    ``timeout=``/``retries=``."""
    notes: list[Any] = []
    while len(steps) == 1 and isinstance(steps[0], Call) and steps[0].block is not None:
        wrapper = steps[0]
        amount = wrapper.kw("time", wrapper.first()) if wrapper.name == "timeout" else None
        count = wrapper.first(wrapper.kw("count")) if wrapper.name == "retry" else None
        if isinstance(amount, int) and not kwargs.get("timeout") and not wrapper.kw("activity"):
            kwargs["timeout"] = f"{amount}{UNITS.get(str(wrapper.kw('unit', 'MINUTES')), 'm')}"
        elif isinstance(count, int) and not kwargs.get("retries") and len(wrapper.kwargs) == (0 if wrapper.args else 1):
            kwargs["retries"] = max(count - 1, 0) or None
        else:
            break
        notes.append(comment(f"{wrapper.name} around all the steps (Jenkinsfile:{wrapper.line}): the stage's own"))
        steps = wrapper.block or ()
    return steps, notes


def _raw(node: Any) -> str:
    return str(getattr(node, "raw", "") or getattr(node, "text", "") or node)


def _outside_why(node: Raw) -> str:
    if node.text.lstrip().startswith("@Library"):
        return "a shared library: the steps it defines are not converted (TODOs where they are used)"
    if node.text.lstrip().startswith("import "):
        return "a Groovy import: not needed in Python"
    return "Groovy code outside `pipeline { }` is not converted"


def convert(source: str, pipeline_name: str = "pipeline") -> Converted:
    """Convert a declarative Jenkinsfile; ParseError when it cannot be read at all."""
    converter = _Converter(parse_file(source), source)
    module = converter.run(pipeline_name)
    return Converted(format_source(module.render(source)), tuple(converter.notes.todos))

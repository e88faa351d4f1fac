"""``pipekit import jenkinsfile``: a declarative Jenkinsfile as a pipeline.py.

The Jenkinsfile is parsed (``_jenkins_parse``), then each part becomes its pipekit form (the
mapping is in docs/from-jenkins.md): the pipeline's agent image and environment become the
``pk.Pipeline``'s, parameters become ``pk.param``, each stage a function (stages in sequence
depend on the one before, parallel ones on the same), ``when`` a condition, ``options`` a timeout
and retries, ``post`` post actions. What has no equivalent stays as a ``# TODO(Jenkinsfile:LINE)``
comment where it was, and is listed: the command then exits 1.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from pipekit import __version__
from pipekit._jenkins_parse import Assign, Call, GString, ParseError, parse
from pipekit._jenkins_steps import Notes, StepWriter, condition, identifier, py_text, secret_name

__all__ = ["Converted", "convert", "convert_file"]

UNITS = {"SECONDS": "s", "MINUTES": "m", "HOURS": "h", "DAYS": "d"}
POSTS = {"always": "always", "success": "success", "failure": "failure", "cleanup": "cleanup", "unstable": "failure"}
IGNORED_OPTIONS = {"timestamps", "buildDiscarder", "disableConcurrentBuilds", "skipDefaultCheckout", "ansiColor"}


@attrs.frozen
class Converted:
    text: str
    todos: tuple[tuple[int, str], ...]


@attrs.define
class _Stage:
    name: str
    node: Call
    needs: list[str]


def _block(node: Call, name: str) -> Call | None:
    return next((n for n in node.block or () if isinstance(n, Call) and n.name == name), None)


def _image(agent: Call | None) -> tuple[str | None, str | None]:
    """The image (or Dockerfile) of an ``agent``."""
    if agent is None:
        return None, None
    docker = _block(agent, "docker")
    if docker is not None:
        image = docker.first() or docker.kw("image") or (_block(docker, "image") or Call("")).first()
        return (str(image) if image else None), None
    dockerfile = _block(agent, "dockerfile")
    if dockerfile is not None:
        name = (_block(dockerfile, "filename") or Call("")).first() or "Dockerfile"
        return None, str(name)
    return None, None


class _Converter:
    def __init__(self, root: Call) -> None:
        self.root = root
        self.notes = Notes()
        self.env_names: set[str] = set()
        self.steps = StepWriter(self.notes, self.env_names)
        self.head: list[str] = []
        self.body: list[str] = []

    # -- the pipeline -----------------------------------------------------------------------
    def run(self, name: str) -> str:
        image, dockerfile = _image(_block(self.root, "agent"))
        params = self.parameters(_block(self.root, "parameters"))
        env = self.environment(_block(self.root, "environment"))
        timeout, retries = self.options(_block(self.root, "options"), pipeline=True)
        for section in self.root.block or ():
            if isinstance(section, Call) and section.name in ("tools", "triggers", "libraries"):
                self.body.append(self.notes.todo(section.line, f"`{section.name}` is not converted: {section.raw}"))
        args = [f'"{name}"'] + ([f'image="{image}"'] if image else []) + ([f"env={env}"] if env != "{}" else [])
        self.head.append(f"pipeline = pk.Pipeline({', '.join(args)})")
        if timeout:
            self.head.append(f"# Jenkins options.timeout of the whole run: `pipekit run --timeout {timeout}`")
        stages = _block(self.root, "stages")
        if stages is None:
            raise ParseError("the pipeline has no `stages` block", self.root.line)
        for s in self.flatten(stages, []):
            self.stage(s, dockerfile, retries)
        self.posts(_block(self.root, "post"), None)
        doc = f'"""Converted from a Jenkinsfile by `pipekit import jenkinsfile` (pipekit {__version__}).'
        if self.notes.todos:
            doc += "\n\nSearch for TODO: those parts of the Jenkinsfile need converting by hand."
        return "\n".join([doc + '\n"""', "", "import pipekit as pk", "", *params, "", *self.head, "", *self.body, ""])

    def parameters(self, node: Call | None) -> list[str]:
        out = []
        for p in node.block if node is not None and node.block else ():
            if not isinstance(p, Call) or p.kw("name") is None:
                continue
            name, help_text = str(p.kw("name")), str(p.kw("description", "") or "")
            if p.name in ("string", "text"):
                default: Any = str(p.kw("defaultValue", "") or "")
            elif p.name == "booleanParam":
                default = bool(p.kw("defaultValue", False))
            elif p.name == "choice":
                choices = p.kw("choices", [])
                choices = choices.splitlines() if isinstance(choices, str) else list(choices)
                default = str(choices[0]) if choices else ""
                help_text = f"{help_text} (one of: {', '.join(map(str, choices))})".strip()
            elif p.name == "password":
                out.append(f'{identifier(name).upper()} = pk.secret("{name}")  # a password parameter')
                continue
            else:
                out.append(self.notes.todo(p.line, f"the parameter type `{p.name}` is not converted: {p.raw}"))
                continue
            out.append(f'{identifier(name).upper()} = pk.param("{name}", default={default!r}, help={help_text!r})')
        return out

    def environment(self, node: Call | None) -> str:
        items = []
        for a in node.block if node is not None and node.block else ():
            if not isinstance(a, Assign):
                continue
            self.env_names.add(a.name)
            value = a.value
            if isinstance(value, Call) and value.name == "credentials":
                items.append(f'"{a.name}": pk.secret("{secret_name(str(value.first("")))}")')
            elif isinstance(value, GString) and any(kind == "expr" for kind, _ in value.parts):
                self.body.append(self.notes.todo(a.line, f"{a.name} is computed in Groovy ({a.raw}): set it by hand"))
                text = "".join(v if k == "text" else "${" + v + "}" for k, v in value.parts)
                items.append(f'"{a.name}": {py_text([("text", text)])}')
            else:
                text = "".join(v for _, v in value.parts) if isinstance(value, GString) else str(value)
                items.append(f'"{a.name}": {py_text([("text", text)])}')
        return "{" + ", ".join(items) + "}"

    def options(self, node: Call | None, pipeline: bool = False) -> tuple[str | None, int]:
        timeout, retries = None, 0
        for o in node.block if node is not None and node.block else ():
            if not isinstance(o, Call):
                continue
            if o.name == "timeout":
                amount = o.kw("time", o.first())
                timeout = f"{amount}{UNITS.get(str(o.kw('unit', 'MINUTES')), 'm')}"
            elif o.name == "retry":
                retries = max(int(o.first(o.kw("count", 1)) or 1) - 1, 0)  # retry(3): three attempts
            elif o.name not in IGNORED_OPTIONS:
                self.body.append(self.notes.todo(o.line, f"the option `{o.name}` is not converted"))
        return timeout, retries

    # -- stages -----------------------------------------------------------------------------
    def flatten(self, stages: Call, before: list[str]) -> list[_Stage]:
        """Every stage that runs steps, with what it needs: each stage in a sequence needs the
        last ones before it; the stages of a ``parallel`` block need the same."""
        out: list[_Stage] = []
        last = before
        for node in stages.block or ():
            if not isinstance(node, Call) or node.name != "stage":
                continue
            inner_parallel, inner_stages = _block(node, "parallel"), _block(node, "stages")
            if inner_parallel is not None:
                ends: list[str] = []
                for branch in inner_parallel.block or ():
                    if isinstance(branch, Call) and branch.name == "stage":
                        group = self.flatten(Call("stages", block=(branch,)), last)
                        out += group
                        ends += [group[-1].name] if group else []
                last = ends
            elif inner_stages is not None:
                group = self.flatten(inner_stages, last)
                out += group
                last = [group[-1].name] if group else last
            else:
                out.append(_Stage(identifier(str(node.first("stage"))), node, list(last)))
                last = [out[-1].name]
        return out

    def stage(self, s: _Stage, dockerfile: str | None, retries: int) -> None:
        node = s.node
        image, own_dockerfile = _image(_block(node, "agent"))
        timeout, own_retries = self.options(_block(node, "options"))
        env = self.environment(_block(node, "environment"))
        args = [f'image="{image}"'] if image else []
        if own_dockerfile or (dockerfile and not image):
            args.append(f'dockerfile="{own_dockerfile or dockerfile}"')
        args += [f"needs={s.needs!r}"] if s.needs else []
        args += [f"env={env}"] if env != "{}" else []
        when = _block(node, "when")
        known = len(self.notes.todos)
        cond = condition(when, self.notes) if when is not None else None
        comments = [f"# TODO(Jenkinsfile:{line}): {text}" for line, text in self.notes.todos[known:]]
        args += [f"when={cond}"] if cond else []
        args += [f'timeout="{timeout}"'] if timeout else []
        args += [f"retries={own_retries or retries}"] if own_retries or retries else []
        posts = self.posts(_block(node, "post"), s.name)
        args += [f"post={posts}"] if posts else []
        steps = _block(node, "steps")
        body = _body(self.steps.steps(steps.block if steps is not None else (), "    ", {}, None))
        decorator = f"@pk.stage({', '.join(args)})" if args else "@pk.stage"
        self.body += ["", "", *comments, decorator, f"def {s.name}(ctx):", *body]

    def posts(self, node: Call | None, stage: str | None) -> str:
        """Post actions: functions; for a stage, the ``post=`` mapping (empty for none)."""
        mapping: dict[str, list[str]] = {}
        for cond in node.block if node is not None and node.block else ():
            if not isinstance(cond, Call):
                continue
            key = POSTS.get(cond.name)
            if key is None:
                self.body.append(self.notes.todo(cond.line, f"the post condition `{cond.name}` has no equivalent"))
                continue
            fn = f"{stage or 'pipeline'}_{cond.name}"
            lines = _body(self.steps.steps(cond.block, "    ", {}, None))
            note = "  # Jenkins' unstable: failed tests" if cond.name == "unstable" else ""
            decorator = [] if stage else [f'@pk.post("{key}"){note}']
            self.body += ["", "", *decorator, f"def {fn}(ctx, outcome):", *lines]
            mapping.setdefault(key, []).append(fn)
        if not mapping:
            return ""
        return (
            "{"
            + ", ".join(f'"{k}": {v[0] if len(v) == 1 else "[" + ", ".join(v) + "]"}' for k, v in mapping.items())
            + "}"
        )


def _body(lines: list[str]) -> list[str]:
    """A function body: ``pass`` after the comments when there is no statement."""
    if all(line.strip().startswith("#") for line in lines):
        return [*lines, "    pass"]
    return lines


def convert(source: str, name: str = "pipeline") -> Converted:
    """Convert a declarative Jenkinsfile; ParseError when it cannot be read at all."""
    converter = _Converter(parse(source))
    text = converter.run(name)
    return Converted(_format(text), tuple(sorted(set(converter.notes.todos))))


def _format(text: str) -> str:
    """ruff-formatted when ruff is installed (it is with pipekit's dev tools); as written otherwise."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--line-length", "100", "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return text
    return proc.stdout if proc.returncode == 0 and proc.stdout else text


def convert_file(path: Path, output: Path | None, *, force: bool, out: IO[str], err: IO[str]) -> int:
    """The command: 0 when the conversion is complete, 1 when parts need hands, 2 on an error."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        print(f"pipekit: cannot read {path}: {e.strerror}", file=err)
        return 2
    try:
        result = convert(source, identifier(path.resolve().parent.name or "pipeline").replace("_", "-"))
    except ParseError as e:
        print(f"pipekit: {path}: {e}", file=err)
        return 2
    if output is None:
        out.write(result.text)
    elif output.exists() and not force:
        print(f"pipekit: {output} exists; pipekit leaves it as it is (--force replaces it)", file=err)
        return 2
    else:
        output.write_text(result.text)
        print(f"wrote {output}", file=err)
    _report(result.todos, path, err)
    return 1 if result.todos else 0


def _report(todos: Sequence[tuple[int, str]], path: Path, err: IO[str]) -> None:
    if not todos:
        print(f"{path}: converted completely", file=err)
        return
    print(f"{path}: {len(todos)} part(s) need converting by hand (marked TODO in the result):", file=err)
    for line, text in todos:
        print(f"  line {line}: {text}", file=err)

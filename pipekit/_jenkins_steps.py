"""Jenkinsfile steps, strings and ``when`` conditions as Python for pipeline.py."""

from __future__ import annotations

import re
import shlex
import textwrap
from collections.abc import Mapping
from typing import Any

import attrs

from pipekit._jenkins_parse import Assign, Call, GString, Raw, Ref

__all__ = ["Notes", "StepWriter", "condition", "identifier", "py_text", "secret_name"]

#: Jenkins' own variables that have a pipekit equivalent inside a stage
BUILTINS = {"BUILD_ID": "ctx.run_id", "BUILD_NUMBER": "ctx.run_id", "BUILD_TAG": "ctx.run_id"}
#: steps that only matter to Jenkins itself: left out, with a note
JENKINS_ONLY = {"timestamps", "ansiColor", "cleanWs", "deleteDir", "checkout", "git", "milestone", "lock"}
PARAM = re.compile(r"params\.([A-Za-z_][A-Za-z0-9_]*)$")
ENV = re.compile(r"(?:env\.)?([A-Za-z_][A-Za-z0-9_]*)$")


@attrs.define
class Notes:
    """What needs hands, by Jenkinsfile line."""

    todos: list[tuple[int, str]] = attrs.field(factory=list)

    def todo(self, line: int, text: str) -> str:
        self.todos.append((line, text))
        return f"# TODO(Jenkinsfile:{line}): {text}"


def identifier(name: str) -> str:
    """A Python name for a stage or function: 'Build & Test' -> build_test."""
    ident = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower() or "stage"
    return f"s_{ident}" if ident[0].isdigit() else ident


def secret_name(credentials_id: str) -> str:
    """The pk.secret name for a Jenkins credentials id: 'docker-hub' -> DOCKER_HUB."""
    name = re.sub(r"[^0-9A-Za-z]+", "_", credentials_id).strip("_").upper() or "SECRET"
    return f"S_{name}" if name[0].isdigit() else name


def _literal(text: str, fstring: bool) -> str:
    if fstring:
        text = text.replace("{", "{{").replace("}", "}}")
    return text


def py_text(parts: list[tuple[str, str]], *, multiline: bool = False) -> str:
    """A Python string literal from ``("text", ...)`` and ``("py", expression)`` parts."""
    fstring = any(kind == "py" for kind, _ in parts)
    body = "".join(_literal(v, fstring) if kind == "text" else "{" + v + "}" for kind, v in parts)
    prefix = "f" if fstring else ""
    if multiline and "\n" in body:
        escaped = body.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
        if escaped.endswith('"'):
            escaped = escaped[:-1] + '\\"'
        return f'{prefix}"""\\\n{escaped}"""' if not escaped.startswith("\n") else f'{prefix}"""{escaped}"""'
    escaped = body.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'{prefix}"{escaped}"'


class StepWriter:
    """Turns the steps of a stage (or of a post condition) into the body of a Python function."""

    def __init__(self, notes: Notes, env_names: set[str]) -> None:
        self.notes = notes
        self.env_names = env_names
        self.images: set[str] = set()

    def text(self, value: Any, line: int, *, shell: bool) -> list[tuple[str, str]]:
        """A Jenkinsfile string as parts: ``${params.X}`` becomes Python; ``${env.X}``/``${X}``
        stays for the shell to expand (in a command) or is read from ctx.env (elsewhere)."""
        if isinstance(value, str):
            return [("text", value)]
        if isinstance(value, Ref):
            return [("py", self.ref(value, line))]
        if not isinstance(value, GString):
            return [("text", str(value))]
        out: list[tuple[str, str]] = []
        for kind, v in value.parts:
            if kind == "text":
                out.append(("text", v))
            elif PARAM.match(v):
                out.append(("py", f"ctx.params.{PARAM.match(v).group(1)}"))  # type: ignore[union-attr]
            elif ENV.match(v) and ENV.match(v).group(1) in BUILTINS:  # type: ignore[union-attr]
                out.append(("py", BUILTINS[ENV.match(v).group(1)]))  # type: ignore[union-attr]
            elif ENV.match(v):
                name = ENV.match(v).group(1)  # type: ignore[union-attr]
                out.append(("text", f"${{{name}}}") if shell else ("py", f'ctx.env.get("{name}", "")'))
            else:
                self.notes.todo(line, f"the Groovy expression ${{{v}}} is left as text")
                out.append(("text", f"${{{v}}}"))
        return out

    def ref(self, ref: Ref, line: int) -> str:
        m = PARAM.match(ref.path)
        if m:
            return f"ctx.params.{m.group(1)}"
        m = ENV.match(ref.path)
        if m and ref.path.startswith("env."):
            return f'ctx.env.get("{m.group(1)}", "")'
        self.notes.todo(line, f"'{ref.path}' (a Groovy variable) has no equivalent here")
        return repr(ref.path)

    def steps(self, nodes: Any, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        out: list[str] = []
        for node in nodes or ():
            out += self.step(node, indent, env, cwd)
        return out

    def step(self, node: Any, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        if isinstance(node, Raw):
            return self._keep(node.line, node.text, indent, "Groovy code is not converted")
        if isinstance(node, Assign):
            return self.assign(node, indent, env, cwd)
        assert isinstance(node, Call)
        handler = getattr(self, f"_step_{node.name.replace('.', '_')}", None)
        if handler is not None:
            return list(handler(node, indent, env, cwd))
        if node.name in JENKINS_ONLY:
            return [f"{indent}# {node.name}: Jenkins only, not needed (Jenkinsfile:{node.line})"]
        return self._keep(node.line, node.raw, indent, f"the step `{node.name}` is not converted")

    def _keep(self, line: int, raw: str, indent: str, why: str) -> list[str]:
        lines = [f"{indent}{self.notes.todo(line, why)}:"]
        return lines + [f"{indent}#     {text}".rstrip() for text in raw.splitlines()]

    def _command(self, node: Call) -> Any:
        return node.first() if node.args else node.kw("script")

    def _step_sh(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        value = self._command(node)
        if value is None:
            return self._keep(node.line, node.raw, indent, "an `sh` step with no script")
        parts = self.text(value, node.line, shell=True)
        if any(kind == "text" and "\n" in v for kind, v in parts):
            parts = _dedent(parts)
        if cwd:
            multi = "\n" in _flat(parts)
            into = f"mkdir -p {shlex.quote(cwd)} && cd {shlex.quote(cwd)}"  # dir() makes the folder, as Jenkins does
            parts = [("text", into + ("\n" if multi else " && ")), *parts]
        args = [py_text(parts, multiline=True)]
        if env:
            args.append("env={" + ", ".join(f'"{k}": {v}' for k, v in env.items()) + "}")
        if node.kw("returnStatus"):
            args.append("check=False")
        return [f"{indent}ctx.sh({', '.join(args)})"]

    def _step_echo(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        return [f"{indent}ctx.log.info({py_text(self.text(node.first(''), node.line, shell=False))})"]

    def _step_dir(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        sub = str(node.first("."))
        return self.steps(node.block, indent, env, f"{cwd}/{sub}" if cwd else sub)

    def _step_withEnv(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:  # noqa: N802
        more = dict(env)
        for item in node.first([]) or []:
            name, _, value = _flat(self.text(item, node.line, shell=True)).partition("=")
            more[name] = py_text([("text", value)])
        return self.steps(node.block, indent, more, cwd)

    def _step_withCredentials(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:  # noqa: N802
        more, lines = dict(env), []
        for binding in node.first([]) or []:
            if not isinstance(binding, Call):
                continue
            cred = secret_name(str(binding.kw("credentialsId", "")))
            if binding.name == "usernamePassword":
                more[str(binding.kw("usernameVariable"))] = f'pk.secret("{cred}_USR")'
                more[str(binding.kw("passwordVariable"))] = f'pk.secret("{cred}_PSW")'
            elif binding.name in ("string", "sshUserPrivateKey") and binding.kw("variable"):
                more[str(binding.kw("variable"))] = f'pk.secret("{cred}")'
            elif binding.name == "string":
                pass
            else:
                lines.append(f"{indent}{self.notes.todo(binding.line, f'the credential binding {binding.name}')}")
        return lines + self.steps(node.block, indent, more, cwd)

    def _step_junit(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        pattern = _flat(self.text(node.first() if node.args else node.kw("testResults", ""), node.line, shell=True))
        globs = [_in(cwd, p.strip()) for p in pattern.split(",") if p.strip()]
        args = ", ".join(f'"{g}"' for g in globs)
        return [f"{indent}ctx.junit({args}, fail_on_failure=False)  # Jenkins marks failed tests unstable"]

    def _step_archiveArtifacts(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:  # noqa: N802
        pattern = _flat(self.text(node.first() if node.args else node.kw("artifacts", ""), node.line, shell=True))
        globs = [_in(cwd, p.strip()) for p in pattern.split(",") if p.strip()]
        return [f"{indent}ctx.archive({', '.join(repr(g) for g in globs)})"]

    def _step_stash(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        return [f"{indent}# {node.name}: not needed, every stage shares the workspace (Jenkinsfile:{node.line})"]

    _step_unstash = _step_stash

    def _step_input(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        return self._keep(node.line, node.raw, indent, "a manual gate (input): pipekit runs unattended; use a param")

    def _step_script(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        return self.steps(node.block, indent, env, cwd)

    def _step_error(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        return [f"{indent}raise RuntimeError({py_text(self.text(node.first(''), node.line, shell=False))})"]

    def assign(self, node: Assign, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:
        value = node.value
        if isinstance(value, Call) and value.name == "docker.build":
            tag = py_text(self.text(value.first(""), node.line, shell=False))
            extra = _flat(self.text(value.args[1], node.line, shell=True)) if len(value.args) > 1 else ""
            args = [f"tag={tag}"]
            if extra:
                words = shlex.split(extra)
                if "-f" in words:
                    args.append(f'dockerfile="{words[words.index("-f") + 1]}"')
                if words and not words[-1].startswith("-"):
                    args.insert(0, f'"{words[-1]}"')
            return [f"{indent}{identifier(node.name)} = ctx.docker.build({', '.join(args)})"]
        return self._keep(node.line, node.raw, indent, "Groovy code is not converted")

    def _step_docker_withRegistry(self, node: Call, indent: str, env: Mapping[str, str], cwd: str | None) -> list[str]:  # noqa: N802
        url = str(node.first("")).removeprefix("https://").removeprefix("http://").rstrip("/")
        creds = node.args[1] if len(node.args) > 1 else None
        lines = []
        credentials = "None"
        if isinstance(creds, str) and creds:
            name = secret_name(creds)
            credentials = f'pk.Credentials(pk.secret("{name}_USR"), pk.secret("{name}_PSW"), registry="{url}")'
        for inner in node.block or ():
            if isinstance(inner, Call) and inner.name.endswith(".push"):
                image = identifier(inner.name.rsplit(".", 1)[0])
                tag = inner.first()
                ref = f'{image}.tags[0].rsplit(":", 1)[0] + ":{tag}"' if isinstance(tag, str) else f"{image}.tags[0]"
                if url:
                    ref = f'"{url}/" + {ref}'
                lines.append(f"{indent}ctx.docker.push({image}, {ref}, credentials={credentials})")
            else:
                lines += self.step(inner, indent, env, cwd)
        return lines


def _flat(parts: list[tuple[str, str]]) -> str:
    return "".join(v for _, v in parts)


def _dedent(parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A multi-line script without the common indentation and the blank first and last lines."""
    marker = "\x00"
    joined = "".join(v if kind == "text" else f"{marker}{i}{marker}" for i, (kind, v) in enumerate(parts))
    text = textwrap.dedent(joined).strip("\n")
    out: list[tuple[str, str]] = []
    for i, piece in enumerate(text.split(marker)):
        if i % 2:
            out.append(parts[int(piece)])
        elif piece:
            out.append(("text", piece))
    return out


def _in(cwd: str | None, pattern: str) -> str:
    return f"{cwd}/{pattern}" if cwd and not pattern.startswith("/") else pattern


def condition(node: Any, notes: Notes) -> str | None:
    """A ``when`` block's conditions as a pk condition expression (None: none to convert)."""
    if isinstance(node, Call) and node.name == "when":
        parts = [c for c in (condition(n, notes) for n in node.block or ()) if c]
        return " & ".join(parts) if len(parts) > 1 else (parts[0] if parts else None)
    if not isinstance(node, Call):
        notes.todo(getattr(node, "line", 0), "a `when` condition is not converted")
        return None
    if node.name == "branch":
        return f'pk.branch("{node.first() or node.kw("pattern")}")'
    if node.name == "environment":
        return f'pk.env("{node.kw("name")}", "{node.kw("value")}")'
    if node.name in ("not", "allOf", "anyOf"):
        inner = [c for c in (condition(n, notes) for n in node.block or ()) if c]
        if not inner:
            return None
        if node.name == "not":
            return f"~({inner[0]})"
        joined = (" & " if node.name == "allOf" else " | ").join(f"({c})" for c in inner)
        return joined if len(inner) > 1 else inner[0]
    if node.name == "expression":
        return _expression(node, notes)
    notes.todo(node.line, f"the `when` condition `{node.name}` is not converted")
    return None


def _expression(node: Call, notes: Notes) -> str | None:
    """``expression { return params.X }`` and ``params.X == 'v'`` become pk.param_is; anything
    else stays as a comment to convert by hand."""
    body = " ".join(n.text if isinstance(n, Raw) else getattr(n, "raw", "") for n in node.block or ())
    text = body.strip().removeprefix("return").strip()
    m = re.fullmatch(r"params\.([A-Za-z_]\w*)", text)
    if m:
        return f'pk.param_is("{m.group(1)}", True)'
    m = re.fullmatch(r"""params\.([A-Za-z_]\w*)\s*==\s*(['"])(.*)\2""", text)
    if m:
        return f'pk.param_is("{m.group(1)}", "{m.group(3)}")'
    notes.todo(node.line, f"when {{ expression {{ {body.strip()} }} }}: write it as a pk condition")
    return None

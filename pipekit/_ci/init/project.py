"""What ``pipekit init`` finds in a project's folder: its language and versions, its tests and
linters, a Dockerfile, a Makefile, the CI files it already has, its default branch.

Only reads files (never runs the project's code, never follows a link out of the folder); a
file that cannot be read or parsed counts as not there.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Dockerfile", "Project", "inspect_project"]

#: the Python the lint and test stages use when the project names none
DEFAULT_PYTHON = "3.12"
DEFAULT_NODE = "20"
DEFAULT_GO = "1.22"


@dataclass(frozen=True)
class Dockerfile:
    """The Dockerfile's final stage: its base image and what it runs (CMD/ENTRYPOINT, as words)."""

    base: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    language: str | None  # python, node, go (the first found, in that order), or None
    version: str  # of that language: the image tag the lint and test stages use
    found: tuple[str, ...]  # what was found, said in the pipeline's docstring
    dockerfile: Dockerfile | None
    tests: bool
    #: the commands the stages run, each with why: (install, lint, test) for the language
    facts: dict[str, Any]
    make_targets: tuple[str, ...]
    branch: str
    ci_files: dict[str, str]  # jenkinsfile / github / gitlab -> the file's path (relative)
    lowest_python: tuple[int, int]  # for the generated files: the lowest Python they must parse with


def _read(path: Path) -> str | None:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _toml(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except ValueError:
        return {}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "app"


def _requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if m and not line.lstrip().startswith("-"):
            names.add(m.group(1).lower().replace("_", "-"))
    return names


def parse_dockerfile(text: str) -> Dockerfile:
    """The final stage's base image and command of a Dockerfile (continuation lines joined)."""
    base, env = "", dict[str, str]()
    command: tuple[str, ...] = ()
    entry: tuple[str, ...] = ()
    for raw in re.sub(r"\\\r?\n", " ", text).splitlines():
        words = raw.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        keyword, rest = words[0].upper(), (words[1] if len(words) > 1 else "")
        if keyword == "FROM":
            base, command, entry = rest.split()[0] if rest.split() else "", (), ()
        elif keyword in ("CMD", "ENTRYPOINT"):
            try:
                value = tuple(str(w) for w in json.loads(rest)) if rest.startswith("[") else tuple(rest.split())
            except (ValueError, TypeError):
                value = tuple(rest.split())
            if keyword == "CMD":
                command = value
            else:
                entry = value
        elif keyword == "ENV":
            for key, val in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest):
                env[key] = val.strip("\"'")
    return Dockerfile(base=base, command=(*entry, *command), env=env)


def _python(root: Path, found: list[str]) -> dict[str, Any] | None:
    pyproject = _toml(_read(root / "pyproject.toml"))
    requirements = sorted(p.name for p in root.glob("requirements*.txt") if p.is_file() and not p.is_symlink())
    setup_cfg = _read(root / "setup.cfg")
    if not (pyproject.get("project") or requirements or setup_cfg or (root / "setup.py").is_file()):
        if not pyproject and not list(root.glob("test_*.py")):
            return None
    found += ["pyproject.toml"] * bool(pyproject) + requirements + ["setup.cfg"] * (setup_cfg is not None)
    project = pyproject.get("project", {}) if isinstance(pyproject.get("project"), dict) else {}
    deps = _requirement_names([str(d) for d in project.get("dependencies", []) or []])
    extras = project.get("optional-dependencies", {}) or {}
    wanted = [e for e in ("dev", "test", "tests", "testing") if e in extras]
    for extra in wanted:
        deps |= _requirement_names([str(d) for d in extras[extra]])
    for name in requirements:
        deps |= _requirement_names((_read(root / name) or "").splitlines())
    tool = pyproject.get("tool", {}) if isinstance(pyproject.get("tool"), dict) else {}
    if "ruff" in deps or "ruff" in tool or (root / "ruff.toml").is_file():
        lint = ("ruff check .", "ruff is configured or a dependency")
    elif "flake8" in deps or (root / ".flake8").is_file() or "[flake8]" in (setup_cfg or ""):
        lint = ("flake8", "flake8 is configured or a dependency")
    else:
        lint = ("ruff check .", "no linter is configured: ruff is fast and needs no configuration")
    install = []
    if project.get("name") or setup_cfg is not None or (root / "setup.py").is_file():
        install.append(f'-e ".[{",".join(wanted)}]"' if wanted else "-e .")
    install += [f"-r {name}" for name in requirements if name == "requirements.txt" or "dev" in name or "test" in name]
    install += ["pytest"] * ("pytest" not in deps)
    return {
        "install": "pip install -q " + " ".join(install),
        "lint": lint,
        "name": str(project.get("name") or ""),
        "requires": str(project.get("requires-python") or ""),
    }


def _python_version(root: Path, facts: dict[str, Any], docker: Dockerfile | None) -> tuple[str, tuple[int, int]]:
    m = re.search(r">=?\s*3\.(\d+)", facts["requires"])
    pinned = _read(root / ".python-version")
    if m:
        version = f"3.{m.group(1)}"
    elif pinned and re.match(r"\s*3\.\d+", pinned):
        version = ".".join(pinned.strip().split(".")[:2])
    elif docker and (d := re.match(r"python:(3\.\d+)", docker.base)):
        version = d.group(1)
    else:
        version = DEFAULT_PYTHON
    declared = m.group(1) if m else pinned.strip().split(".")[1] if pinned and re.match(r"\s*3\.\d+", pinned) else "10"
    return version, (3, max(10, int(declared)))


def _node(root: Path, found: list[str]) -> dict[str, Any] | None:
    folder = root if (root / "package.json").is_file() else None
    if folder is None:
        inside = sorted(p.parent for p in root.glob("*/package.json") if p.parent.name != "node_modules")
        folder = inside[0] if len(inside) == 1 else None
    if folder is None:
        return None
    try:
        package = json.loads(_read(folder / "package.json") or "{}")
    except ValueError:
        package = {}
    if not isinstance(package, dict):
        package = {}
    where = "" if folder == root else folder.name
    found.append(f"{where + '/' if where else ''}package.json")
    deps = {**(package.get("dependencies") or {}), **(package.get("devDependencies") or {})}
    scripts = package.get("scripts") or {}
    manager = "yarn" if (folder / "yarn.lock").is_file() else "pnpm" if (folder / "pnpm-lock.yaml").is_file() else "npm"
    engines = str((package.get("engines") or {}).get("node", ""))
    return {
        "dir": where,
        "name": str(package.get("name") or ""),
        "deps": sorted(deps),
        "scripts": {str(k): str(v) for k, v in scripts.items()} if isinstance(scripts, dict) else {},
        "manager": manager,
        "engines": engines,
        "lock": (folder / "package-lock.json").is_file(),
    }


def _go(root: Path, found: list[str]) -> dict[str, Any] | None:
    text = _read(root / "go.mod")
    if text is None:
        return None
    found.append("go.mod")
    module = re.search(r"^module\s+(\S+)", text, re.M)
    version = re.search(r"^go\s+(\d+\.\d+)", text, re.M)
    return {"module": module.group(1) if module else "", "go": version.group(1) if version else DEFAULT_GO}


def _branch(root: Path) -> str:
    """The default branch: origin's HEAD, else the branch checked out, else main."""
    for args in (["symbolic-ref", "--short", "refs/remotes/origin/HEAD"], ["symbolic-ref", "--short", "HEAD"]):
        try:
            proc = subprocess.run(
                ["git", "-c", "core.hooksPath=/dev/null", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return "main"
        name = proc.stdout.strip().removeprefix("origin/")
        if proc.returncode == 0 and re.fullmatch(r"[A-Za-z0-9._/-]+", name):
            return name
    return "main"


def _ci_files(root: Path) -> dict[str, str]:
    found = {}
    if (root / "Jenkinsfile").is_file():
        found["jenkinsfile"] = "Jenkinsfile"
    workflows = sorted((root / ".github" / "workflows").glob("*.y*ml")) if (root / ".github").is_dir() else []
    if workflows:  # the one that tests, by its name, else the first
        hint = re.compile(r"test|ci|build|check|main", re.I)
        chosen = next((w for w in workflows if hint.search(w.stem) and "codeql" not in w.stem.lower()), workflows[0])
        found["github"] = str(chosen.relative_to(root))
    if (root / ".gitlab-ci.yml").is_file():
        found["gitlab"] = ".gitlab-ci.yml"
    return found


def inspect_project(root: Path) -> Project:
    """What is in ``root`` that a pipeline should run."""
    found: list[str] = []
    text = _read(root / "Dockerfile")
    docker = parse_dockerfile(text) if text is not None else None
    tests = (root / "tests").is_dir() or (root / "test").is_dir() or any(root.glob("test_*.py"))
    python, node, go = _python(root, found), _node(root, found), _go(root, found)
    language, version, lowest, facts = None, "", (3, 10), {}
    if python is not None:
        language, facts = "python", python
        version, lowest = _python_version(root, python, docker)
    elif node is not None:
        language, facts = "node", node
        m = re.search(r"(\d+)", node["engines"]) or (docker and re.match(r"node:(\d+)", docker.base))
        version = m.group(1) if m else DEFAULT_NODE
    elif go is not None:
        language, facts, version = "go", go, go["go"]
    makefile = _read(root / "Makefile")
    targets = tuple(dict.fromkeys(re.findall(r"^([A-Za-z][A-Za-z0-9_-]*):(?!=)", makefile or "", re.M)))
    found += ["tests"] * tests + ["Dockerfile"] * (docker is not None) + ["Makefile"] * (makefile is not None)
    ci = _ci_files(root)
    found += list(ci.values())
    name = _slug(str(facts.get("name") or "") or root.resolve().name)
    return Project(
        root=root,
        name=name,
        language=language,
        version=version,
        found=tuple(found),
        dockerfile=docker,
        tests=tests,
        facts=facts,
        make_targets=targets,
        branch=_branch(root),
        ci_files=ci,
        lowest_python=lowest,
    )

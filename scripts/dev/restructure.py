#!/usr/bin/env python3
"""Issue 23, items 1, 2 and 9 (docs): the flat ``pipekit/_x.py`` modules into subpackages along the layers.

Run at the root of a clean checkout of the flat layout (it refuses a tree it has already run on):

    python3 scripts/dev/restructure.py            # moves, rewrites, writes; commits nothing
    python3 scripts/dev/restructure.py --dry-run  # prints the map and stops

What it does, in order:
1. maps every module in ``pipekit/`` to its new place (``MAP``, else a rule by prefix, ``PREFIX_RULES``);
   a module it cannot place stops it before anything changes, listed by name;
2. ``git mv``s the modules and the page assets (``RESOURCES``), writes each subpackage's ``__init__.py``;
3. rewrites every reference in the tracked text files under ``REWRITE_ROOTS`` (and ``REWRITE_FILES``):
   ``pipekit._x`` (imports, attribute paths, strings such as ``_LAZY``, ``monkeypatch.setattr``,
   ``python -m pipekit._x``), ``from pipekit import _x``, ``pipekit/_x.py``, ``_x.py``, and a
   backticked ``_x``; fixes ``__file__`` (the package's folder) and ``files("pipekit")`` (the
   assets) in the modules that moved;
4. pyproject.toml (subpackages found, package data beside their modules, import-linter in ``test``),
   ``.importlinter`` (the contracts), docs/architecture.md (the package table, the diagram, the
   modules of each package, the limits), tests/test_architecture.py (limits, the tables, the contracts);
5. ``ruff check --select I --fix`` and ``ruff format`` on the Python files it changed.
"""

from __future__ import annotations

import argparse
import ast
import keyword
import re
import subprocess
import sys
import textwrap
from pathlib import Path

# The public modules: they stay where they are.
PUBLIC = {"__init__", "__main__", "backend", "exceptions", "testing", "pytest_plugin"}

# Every module of the flat layout, by name, to its place (relative to ``pipekit``).
MAP = {
    # _core: the values and helpers every layer uses
    "_util": "_core.util",
    "_streams": "_core.streams",
    "_results": "_core.results",
    "_reports": "_core.testreport",
    "_safefile": "_core.safefile",
    # _workspace: the pipeline's folder and what travels to and from a stage
    "_hosttree": "_workspace.hosttree",
    "_archive": "_workspace.archive",
    "_workspace": "_workspace.sync",
    # _dsl: what a pipeline.py is written with, and its loading
    "_stage": "_dsl.stage",
    "_signature": "_dsl.signature",
    "_control": "_dsl.control",
    "_conditions": "_dsl.conditions",
    "_matrix": "_dsl.matrix",
    "_params": "_dsl.params",
    "_secrets": "_dsl.secrets",
    "_cache": "_dsl.cache",
    "_triggers": "_dsl.triggers",
    "_loader": "_dsl.loader",
    # _plan: validation, order, the resolved plan, the checks before a run
    "_graph": "_plan.graph",
    "_dag": "_plan.dag",
    "_resolve": "_plan.resolve",
    "_preflight": "_plan.preflight",
    "_graph_render": "_plan.render",
    # _backends: where stages run
    "_host": "_backends.host",
    "_fakes": "_backends.fake",
    "_fake_files": "_backends.fake_files",
    "_registry": "_backends.registry",
    "_docker": "_backends.docker.backend",
    "_docker_engine": "_backends.docker.engine",
    "_docker_files": "_backends.docker.files",
    "_docker_housekeeping": "_backends.docker.housekeeping",
    "_docker_images": "_backends.docker.images",
    "_docker_services": "_backends.docker.services",
    "_docker_shell": "_backends.docker.shell",
    "_buildkit": "_backends.docker.buildkit",
    "_dockerfile": "_backends.docker.dockerfile",
    "_swarm": "_backends.swarm.backend",
    "_swarm_nodes": "_backends.swarm.nodes",
    # _console: logging and the live view
    "_logging": "_console.log",
    "_imports": "_console.imports",
    "_live": "_console.live",
    # _ci: output in a CI, the JUnit file, ci init, the Jenkinsfile importer
    "_ci": "_ci.output",
    "_ci_report": "_ci.junit",
    "_ci_init": "_ci.wrappers",
    "_jenkins": "_ci.jenkins.convert",
    "_jenkins_parse": "_ci.jenkins.parse",
    "_jenkins_steps": "_ci.jenkins.steps",
    # _history: the run history
    "_history": "_history.store",
    "_history_fs": "_history.fs",
    "_history_logs": "_history.logs",
    "_history_rows": "_history.rows",
    "_recorder": "_history.recorder",
    # _report: the HTML report
    "_report_data": "_report.data",
    "_report_html": "_report.page",
    # _run: one run, from its request to its result
    "_session": "_run.session",
    "_runner": "_run.runner",
    "_run": "_run.run",
    "_scheduler": "_run.scheduler",
    "_ahead": "_run.ahead",
    "_stagerun": "_run.stagerun",
    "_context": "_run.context",
    "_docker_ops": "_run.image_ops",
    "_posts": "_run.posts",
    "_outputs": "_run.outputs",
    "_locks": "_run.locks",
    "_usercode": "_run.usercode",
    "_serialize": "_run.serialize",
    "_planview": "_run.planview",
    # _server: pipekit serve
    "_server": "_server.serve",
    "_server_app": "_server.app",
    "_server_config": "_server.config",
    "_server_env": "_server.env",
    "_server_git": "_server.git",
    "_server_http": "_server.limits",
    "_server_pages": "_server.pages",
    "_server_status": "_server.status",
    "_server_store": "_server.store",
    "_server_triggers": "_server.triggers",
    "_server_work": "_server.work",
    # _cli: the command line (a server run is a `pipekit run` child: a command-line entry point)
    "_cli": "_cli.main",
    "_cli_ci": "_cli.ci",
    "_cli_commands": "_cli.commands",
    "_cli_config": "_cli.config",
    "_cli_history": "_cli.history",
    "_cli_options": "_cli.options",
    "_cli_server": "_cli.server",
    "_cli_views": "_cli.views",
    "_server_run": "_cli.server_run",
}

# A module the map does not name goes by its prefix (the first that matches): `_jenkins_lex` to
# `_ci/jenkins/lex.py`. Anything else stops the script.
PREFIX_RULES = [
    ("_docker_", "_backends.docker."),
    ("_swarm_", "_backends.swarm."),
    ("_jenkins_", "_ci.jenkins."),
    ("_server_", "_server."),
    ("_cli_", "_cli."),
    ("_history_", "_history."),
    ("_report_", "_report."),
    ("_ci_", "_ci."),
    ("_fake_", "_backends.fake_"),
    ("_host_", "_backends.host_"),
    ("_workspace_", "_workspace."),
    ("_graph_", "_plan.graph_"),
    ("_plan_", "_plan."),
    ("_run_", "_run."),
    ("_stage_", "_dsl.stage_"),
    ("_console_", "_console."),
    ("_live_", "_console.live_"),
    ("_log_", "_console."),
]

# Files beside a module, read through importlib.resources: they move with it.
RESOURCES = {"report.js": "_report", "report.css": "_report", "server.js": "_server", "server.css": "_server"}

# Each subpackage's concept (its __init__.py docstring and its row in docs/architecture.md).
PACKAGES = {
    "_cli": "the command line (click): the commands, the options they share, `[tool.pipekit]` defaults, a "
    "server run's `pipekit run` child",
    "_server": "`pipekit serve`: configuration, the queue and its `pipekit run` children, triggers, git "
    "mirrors and workspaces, commit statuses, the Starlette app and its pages",
    "_run": "one run, from its request to its result: `RunRequest`/`setup`, the runner, the scheduler, each "
    "stage's life (`StageRun`, `Context`, `ctx.docker`, posts, outputs, locks), the plan view",
    "_report": "the self-contained HTML report of a recorded run (its data, the page, its script and style)",
    "_history": "the run history in `.pipekit/`: SQLite records, stage logs, artifacts, the stage cache, "
    "the recorder that fills it",
    "_ci": "pipekit inside a CI: output (groups, annotations, masks), the `--junit` file and job summary, "
    "`ci init`'s wrappers, and `jenkins/`, the Jenkinsfile importer",
    "_ci/jenkins": "`pipekit import jenkinsfile`: a declarative Jenkinsfile parsed and written as a pipeline.py",
    "_console": "logging: a structlog logger per run, its renderers, the live view on a terminal",
    "_plan": "a pipeline checked and planned: validation, the DAG, the order, the resolved plan, the checks "
    "before a run, the graph's drawings",
    "_backends": "where stages run, behind `pipekit.backend`'s seam: the host, the fake (`pipekit.testing`), "
    "registry errors, and `docker/` and `swarm/`",
    "_backends/docker": "the Docker backend: one container per stage over the docker SDK (engine, images, "
    "services, files, housekeeping, the attached shell, BuildKit, Dockerfiles)",
    "_backends/swarm": "the Swarm backend: each stage a one-task service, its commands through its node's engine",
    "_dsl": "what a pipeline.py is written with (`pk.stage`, `Pipeline`, options, conditions, matrix, params, "
    "secrets, cache inputs, triggers) and its loading",
    "_workspace": "the pipeline's folder as stages see it: tar archives to and from a stage, the folder written "
    "without following links, copy mode's `WorkspaceSync`",
    "_core": "values and helpers every layer uses: `slug` and friends, safe file writes, output streams, "
    "stage and run results, test reports",
}

# The layers, from the top: a layer imports only from the layers below it; `|` joins layers that
# are independent of each other. The public modules stay at the package's root.
LAYERS = [
    "__main__",
    "_cli",
    "_server",
    "pytest_plugin",
    "testing",
    "_run",
    "_report",
    "_history | _ci",
    "_console",
    "_plan",
    "_backends | _dsl",
    "_workspace",
    "backend",
    "_core",
    "exceptions",
]

# Imports a layers contract would refuse that a later item unties: (importer, imported, why).
# None left: item 5 moved RunObserver (which named _plan.graph's Plan) from _core.results to _run.run.
LAYER_EXCEPTIONS: list[tuple[str, str, str]] = []
# Imports of the root package itself (`from pipekit import __version__`): the root imports its
# public names lazily (PEP 562), so importing it brings in no layer; without this, each such import
# would count as an import of every module the root names.
ROOT_IMPORTS = "pipekit.** -> pipekit"

# Third-party packages that only some subpackages may import.
ONLY_IN = [
    ("docker", ["_backends.docker", "_backends.swarm"], "only the Docker and Swarm backends import the docker SDK"),
    ("structlog", ["_console"], "structlog only where logging is"),
    ("rich", ["_console"], "rich only in the console's live view"),
    ("networkx", ["_plan"], "networkx only in the plan"),
    ("starlette", ["_server"], "starlette only in the server"),
    ("uvicorn", ["_server"], "uvicorn only in the server"),
    ("croniter", ["_server"], "croniter only in the server"),
]

REWRITE_ROOTS = ["pipekit", "tests", "benchmarks", "examples", "docs", "scripts"]
REWRITE_FILES = ["pyproject.toml", "setup.cfg", "README.md", ".ci/run"]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".txt", ".sh", ".ini", ".yml", ".yaml", ".rst", ""}
SELF = Path("scripts/dev/restructure.py")

ARCH = Path("docs/architecture.md")
ARCH_TEST = Path("tests/test_architecture.py")
MODULE_LINES = 600


class Refused(Exception):
    """The tree is not one this script can restructure; nothing has been changed."""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def place(stem: str) -> str | None:
    """Where a flat module goes (dotted, relative to pipekit), or None if nothing says."""
    if stem in MAP:
        return MAP[stem]
    for prefix, target in PREFIX_RULES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return target + stem[len(prefix) :]
    return None


def plan_moves(root: Path) -> dict[str, str]:
    stems = sorted(p.stem for p in (root / "pipekit").glob("*.py"))
    done = sorted(p for p in PACKAGES if (root / "pipekit" / p.split("/")[0]).is_dir())
    if done or not [s for s in stems if s not in PUBLIC]:
        raise Refused(f"this tree has been restructured already (or half: {', '.join(done) or 'no flat module'})")
    unknown = [s for s in stems if s not in PUBLIC and place(s) is None]
    if unknown:
        raise Refused(
            "no place for these modules (add them to MAP or PREFIX_RULES in scripts/dev/restructure.py): "
            + ", ".join(f"pipekit/{s}.py" for s in unknown)
        )
    moves = {s: place(s) for s in stems if s not in PUBLIC}
    moves_checked: dict[str, str] = {}
    targets: dict[str, str] = {}
    packages = {t.rsplit(".", 1)[0] for t in moves.values() if t is not None}
    packages |= {p.rsplit(".", 1)[0] for p in list(packages) if "." in p}
    for stem, target in moves.items():
        assert target is not None
        leaf = target.rsplit(".", 1)[-1]
        if not leaf.isidentifier() or keyword.iskeyword(leaf) or leaf.startswith("__"):
            raise Refused(f"pipekit/{stem}.py would become {target}: not a module name")
        if target in targets:
            raise Refused(f"pipekit/{stem}.py and pipekit/{targets[target]}.py would both become {target}")
        if target in packages:
            raise Refused(f"pipekit/{stem}.py would become {target}, which is a package")
        targets[target] = stem
        moves_checked[stem] = target
    for pkg in packages:
        top = pkg.split(".")[0]
        if (root / "pipekit" / top).is_dir():
            raise Refused(f"pipekit/{top}/ exists already: this tree has been restructured (or is half done)")
    missing = [p.replace(".", "/") for p in packages if p.replace(".", "/") not in PACKAGES]
    if missing:
        raise Refused("no description for the packages " + ", ".join(sorted(missing)) + " (add them to PACKAGES)")
    return moves_checked


# ---- rewriting text ----------------------------------------------------------------------------


def _names_pattern(moves: dict[str, str]) -> str:
    return "|".join(re.escape(s) for s in sorted(moves, key=len, reverse=True))


def make_rewriter(moves: dict[str, str]):
    names = _names_pattern(moves)
    dotted = re.compile(rf"(?<![\w.])pipekit\.({names})(?![\w])")
    path = re.compile(rf"(?<![\w.])pipekit/({names})\.py(?![\w])")
    bare_py = re.compile(rf"(?<![\w./-])({names})\.py(?![\w])")
    backticked = re.compile(rf"(?<![\w`])(``?)({names})\1(?![\w`])")
    from_import = re.compile(r"^([ \t]*)from pipekit import ([^\n(]+?)[ \t]*$", re.M)
    from_paren = re.compile(r"^[ \t]*from pipekit import \(([^)]*)\)", re.M)
    # In the pages: `_server*.py` (a family of modules) and "(_runner: ...)" in a drawing.
    family = re.compile(r"`(_[a-z]+)\*\.py`")
    drawn = re.compile(rf"(?<=\()({names})(?=:)")

    families = {p[:-1]: t.rstrip(".").replace(".", "/") for p, t in PREFIX_RULES if t.endswith(".")}

    def as_path(stem: str) -> str:
        return moves[stem].replace(".", "/") + ".py"

    def split_from(m: re.Match[str]) -> str:
        indent, body = m.group(1), m.group(2)
        comment = ""
        if "#" in body:
            body, comment = body.split("#", 1)
            comment = "  #" + comment
        items = [i.strip() for i in body.split(",") if i.strip()]
        keep, lines = [], []
        for item in items:
            parts = item.split()
            name = parts[0]
            alias = parts[2] if len(parts) == 3 and parts[1] == "as" else name
            if name in moves:
                package, leaf = moves[name].rsplit(".", 1)
                named = leaf if alias == leaf else f"{leaf} as {alias}"
                lines.append(f"{indent}from pipekit.{package} import {named}")
            else:
                keep.append(item)
        if not lines:
            return m.group(0)
        if keep:
            lines.insert(0, f"{indent}from pipekit import {', '.join(keep)}")
        lines[-1] += comment
        return "\n".join(lines)

    def rewrite(text: str, where: str) -> str:
        for m in from_paren.finditer(text):
            inner = {i.strip().split()[0] for i in m.group(1).replace("\n", ",").split(",") if i.strip()}
            if inner & set(moves):
                raise Refused(f"{where}: 'from pipekit import (...)' names modules; write one import per module")
        text = dotted.sub(lambda m: "pipekit." + moves[m.group(1)], text)
        text = path.sub(lambda m: "pipekit/" + as_path(m.group(1)), text)
        text = bare_py.sub(lambda m: as_path(m.group(1)), text)
        text = backticked.sub(lambda m: m.group(1) + moves[m.group(2)] + m.group(1), text)
        if where.endswith(".md"):
            text = family.sub(lambda m: f"`pipekit/{families.get(m.group(1), m.group(1))}/`", text)
            text = drawn.sub(lambda m: moves[m.group(1)], text)
        # Last: its output names the new packages, which the passes above would take for old modules.
        text = from_import.sub(split_from, text)
        return text

    return rewrite


def fix_moved_module(text: str, stem: str, target: str) -> str:
    """``__file__`` meant the package's folder; ``files("pipekit")`` the assets beside the module."""
    depth = target.count(".")
    folder = "os.path.dirname(os.path.abspath(__file__))"
    if folder in text:
        deeper = folder
        for _ in range(depth):
            deeper = f"os.path.dirname({deeper})"
        text = text.replace(folder, deeper)
    if "__file__" in text.replace(folder, "").replace("os.path.dirname(", ""):
        raise Refused(f"pipekit/{stem}.py uses __file__ in a way this script does not know how to move")
    assets = re.compile(r"""files\(\s*["']pipekit["']\s*\)""")
    if assets.search(text):
        package = target.rsplit(".", 1)[0]
        named = {r for r in RESOURCES if re.search(rf"[\"']{re.escape(r)}[\"']", text)}
        homes = {RESOURCES[r] for r in named}
        if homes != {package}:
            raise Refused(f"pipekit/{stem}.py reads files('pipekit') for {sorted(named) or 'unknown files'}")
        text = assets.sub(f'files("pipekit.{package}")', text)
    if re.search(r"^\s*from \.", text, re.M):
        raise Refused(f"pipekit/{stem}.py has a relative import; make it absolute first")
    return text


def tracked_text_files(root: Path) -> list[Path]:
    out = []
    for name in git("ls-files", "--", *REWRITE_ROOTS, *REWRITE_FILES).splitlines():
        p = Path(name)
        if p == SELF or p.suffix not in TEXT_SUFFIXES or not (root / p).is_file():
            continue
        out.append(p)
    return out


# ---- pyproject, the contracts ------------------------------------------------------------------


def rewrite_pyproject(text: str) -> str:
    section = re.compile(r"^\[tool\.setuptools\]\n(packages\s*=\s*\[[^\]]*\]\n)(?=\s*(\[|\Z))", re.M)
    if not section.search(text):
        if "[tool.setuptools.packages.find]" not in text:
            raise Refused("pyproject.toml: expected '[tool.setuptools]' with only 'packages = [...]'")
    text = section.sub('[tool.setuptools.packages.find]\ninclude = ["pipekit", "pipekit.*"]\n', text)
    data = re.compile(r"^pipekit = \[([^\]]*)\]\n", re.M)
    m = data.search(text)
    if m is None:
        raise Refused("pyproject.toml: expected 'pipekit = [...]' under [tool.setuptools.package-data]")
    files = re.findall(r'"([^"]+)"', m.group(1))
    by_package: dict[str, list[str]] = {"pipekit": []}
    for f in files:
        home = f"pipekit.{RESOURCES[f]}" if f in RESOURCES else "pipekit"
        by_package.setdefault(home, []).append(f)
    lines = []
    for package, names in by_package.items():
        key = package if package == "pipekit" else f'"{package}"'
        lines.append(f"{key} = [{', '.join(repr(n).replace(chr(39), chr(34)) for n in names)}]\n")
    text = text[: m.start()] + "".join(lines) + text[m.end() :]
    if "import-linter" not in text:
        test = re.compile(r"^(test = \[\n(?:[ \t]+[^\n]*\n)*?)(\])", re.M)
        if not test.search(text):
            raise Refused("pyproject.toml: expected a 'test = [' extra")
        text = test.sub(lambda m: m.group(1) + '    "import-linter>=2.1",\n' + m.group(2), text, count=1)
    return text


def importlinter_config() -> str:
    layered = [name.strip() for layer in LAYERS for name in layer.split("|")]
    cli_at = LAYERS.index("_server") + 1
    below = [name.strip() for layer in LAYERS[cli_at:] for name in layer.split("|")]
    out = [
        "# The import contracts of issue 23, checked by tests/test_architecture.py (`lint-imports`).",
        "# Written by scripts/dev/restructure.py; docs/architecture.md draws them.",
        "[importlinter]",
        "root_package = pipekit",
        "include_external_packages = True",
        "",
        "[importlinter:contract:layers]",
        "name = each layer imports only from the layers below it",
        "type = layers",
        "containers =",
        "    pipekit",
        "exhaustive = True",
        "layers =",
        *(f"    {layer}" for layer in LAYERS),
    ]
    out += [
        "ignore_imports =",
        "    # the root package's public names are imported lazily (PEP 562)",
        f"    {ROOT_IMPORTS}",
    ]
    if LAYER_EXCEPTIONS:
        for importer, imported, why in LAYER_EXCEPTIONS:
            out += [f"    # {why}", f"    pipekit.{importer} -> pipekit.{imported}"]
    out += [
        "",
        "[importlinter:contract:cli-and-server-on-top]",
        "name = nothing below the command line and the server imports them",
        "type = forbidden",
        "source_modules =",
        *(f"    pipekit.{m}" for m in below),
        "forbidden_modules =",
        "    pipekit._cli",
        "    pipekit._server",
    ]
    for package, allowed, name in ONLY_IN:
        out += [
            "",
            f"[importlinter:contract:only-{package}]",
            f"name = {name}",
            "type = forbidden",
            "source_modules =",
            "    pipekit",
            "forbidden_modules =",
            f"    {package}",
            "ignore_imports =",
            *(f"    pipekit.{a}.** -> {package}" for a in allowed),
            "unmatched_ignore_imports_alerting = none",
        ]
    assert len(layered) == len(set(layered))
    return "\n".join(out) + "\n"


# ---- docs/architecture.md ----------------------------------------------------------------------


def module_descriptions(page: str) -> dict[str, str]:
    return dict(re.findall(r"^\| `pipekit/([\w.]+)\.py` \| (.*) \|$", page, flags=re.M))


def diagram() -> str:
    lines = []
    for i, layer in enumerate(LAYERS):
        names = [n.strip() for n in layer.split("|")]
        shown = "   ".join(("pipekit." + n if not n.startswith("_") else n) for n in names)
        lines.append(shown if len(names) == 1 else shown + "      (independent of each other)")
        if i < len(LAYERS) - 1:
            lines.append("  │")
            lines.append("  ▼")
    return "\n".join(lines)


def architecture_head(moves: dict[str, str], described: dict[str, str], rewrite) -> str:
    packages = sorted({t.rsplit(".", 1)[0].replace(".", "/") for t in moves.values()})
    order = [p for layer in LAYERS for p in (n.strip() for n in layer.split("|")) if p.startswith("_")]
    packages.sort(key=lambda p: (order.index(p.split("/")[0]) if p.split("/")[0] in order else 99, p))
    out = [
        "# Architecture",
        "",
        "Users import from `pipekit` (and `pipekit.exceptions`, `pipekit.backend`, `pipekit.testing`,",
        "`pipekit.pytest_plugin`); everything in a folder whose name starts with `_` is private, and the",
        "modules inside those folders have plain names (`pipekit/_backends/docker/images.py`).",
        "",
        f"A module is as long as its one concept needs, up to {MODULE_LINES} lines; a class is never split",
        "across files (no mixins that exist to make a module shorter), and a module is never cut where no",
        "concept ends. A function has at most 60 lines, a constructor at most 8 parameters, and `import",
        "pipekit` loads none of networkx, structlog, attrs and the docker SDK. `tests/test_architecture.py`",
        "keeps all of this, keeps this page's tables equal to the packages and their modules, and runs the",
        "import contracts of `.importlinter` (import-linter).",
        "",
        "## Packages and the imports allowed between them",
        "",
        "Each layer imports only from the layers below it; layers on one line are independent of each",
        "other. A third-party library comes in only where it belongs: the docker SDK in",
        "`_backends/docker/` and `_backends/swarm/`, structlog and rich in `_console/`, networkx in",
        "`_plan/`, starlette, uvicorn and croniter in `_server/`.",
        "",
        "```",
        diagram(),
        "```",
        "",
    ]
    out.append("Imports against the layers still allowed (each one listed in `.importlinter`):")
    out.append("")
    out.append("- any module → `pipekit` itself (`from pipekit import __version__`): the root imports its public")
    out.append("  names lazily (PEP 562), so importing it brings in no layer")
    for importer, imported, why in LAYER_EXCEPTIONS:
        out.append(f"- `{importer}` → `{imported}`: {why}")
    out.append("")
    out += ["| package | concept |", "| --- | --- |"]
    for p in packages:
        out.append(f"| `pipekit/{p}/` | {PACKAGES[p]} |")
    out += ["", "## Modules", "", "### `pipekit/`", "", "| module | concept |", "| --- | --- |"]
    for stem in sorted(PUBLIC, key=lambda s: (s.startswith("__"), s)):
        if Path(f"pipekit/{stem}.py").exists() or stem in described:
            out.append(f"| `pipekit/{stem}.py` | {rewrite(described.get(stem, 'TODO: describe'), ARCH.as_posix())} |")
    for p in packages:
        out += ["", f"### `pipekit/{p}/`", "", "| module | concept |", "| --- | --- |"]
        inside = sorted(s for s, t in moves.items() if t.rsplit(".", 1)[0].replace(".", "/") == p)
        for stem in sorted(inside, key=lambda s: moves[s]):
            text = described.get(stem)
            if text is None:
                print(f"restructure: no row for pipekit/{stem}.py in {ARCH}; write its concept", file=sys.stderr)
                text = "TODO: describe"
            out.append(f"| `pipekit/{moves[stem].replace('.', '/')}.py` | {rewrite(text, ARCH.as_posix())} |")
    return "\n".join(out) + "\n\n"


def rewrite_architecture(page: str, moves: dict[str, str], rewrite) -> str:
    described = module_descriptions(page)
    m = re.search(r"^## Modules\n.*?(?=^## )", page, flags=re.M | re.S)
    if m is None:
        raise Refused(f"{ARCH}: expected a '## Modules' section followed by another '## ' section")
    rest = rewrite(page[m.end() :], ARCH.as_posix())
    return architecture_head(moves, described, rewrite) + rest


# ---- tests/test_architecture.py ----------------------------------------------------------------

NEW_TESTS = '''def _rows(pattern: str) -> set[str]:
    return set(re.findall(pattern, (ROOT / "docs" / "architecture.md").read_text(), flags=re.M))


def test_the_package_table_in_the_architecture_page_matches_the_packages() -> None:
    """docs/architecture.md names every subpackage, and none that is gone."""
    listed = _rows(r"^\\| `pipekit/([\\w/]+)/` \\|")
    present = {p.parent.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("__init__.py")} - {"."}
    assert listed == present, {"missing from the page": present - listed, "gone from the code": listed - present}


def test_the_module_tables_in_the_architecture_page_match_the_modules() -> None:
    """docs/architecture.md names every module, under its package, and none that is gone."""
    listed = _rows(r"^\\| `pipekit/([\\w/]+\\.py)` \\|")
    present = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    present -= {p for p in present if p.endswith("/__init__.py")}
    assert listed == present, {"missing from the page": present - listed, "gone from the code": listed - present}


_LINT = (
    "import sys; from importlinter.cli import lint_imports;"
    " sys.exit(lint_imports(config_filename='.importlinter', no_cache=True, no_logo=True))"
)


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _LINT], cwd=root, env=env, capture_output=True, text=True)


def test_the_import_contracts_hold() -> None:
    """The layers and the forbidden imports of .importlinter (drawn in docs/architecture.md) hold."""
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_import_contracts_catch_an_import_against_the_layers(tmp_path: Path) -> None:
    """A copy of the package with an upward import and a stray docker import breaks the contracts."""
    shutil.copytree(PACKAGE, tmp_path / "pipekit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    with (tmp_path / "pipekit" / "_core" / "util.py").open("a") as f:
        f.write("\\nimport docker.errors  # noqa\\nfrom pipekit._cli import main  # noqa\\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pipekit._core.util -> pipekit._cli.main" in proc.stdout
    assert "pipekit._core.util -> docker" in proc.stdout
'''


def rewrite_architecture_test(text: str) -> str:
    def sub(pattern: str, new: str, s: str, what: str) -> str:
        out, n = re.subn(pattern, new, s, flags=re.M)
        if n == 0:
            raise Refused(f"{ARCH_TEST}: could not find {what}")
        return out

    text = sub(r"^(MODULE_LINES, FUNCTION_LINES, INIT_PARAMETERS = )\d+", rf"\g<1>{MODULE_LINES}", text, "the limits")
    text = sub(r'PACKAGE\.glob\("\*\.py"\)', 'PACKAGE.rglob("*.py")', text, "the module glob")
    text = text.replace("ids=lambda p: p.name)", "ids=lambda p: p.relative_to(PACKAGE).as_posix())")
    text = re.sub(
        r"No module of the package is longer than \d+ lines", f"No module is longer than {MODULE_LINES} lines", text
    )
    text = text.replace('f"{path.name}:{fn.lineno}', 'f"{path.relative_to(PACKAGE)}:{fn.lineno}')
    text = text.replace("and a module table that matches", "page tables that match, import contracts")
    tree = ast.parse(text)
    old = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_the_module_table")]
    if len(old) != 1:
        raise Refused(f"{ARCH_TEST}: expected one test_the_module_table_... function")
    lines = text.splitlines(keepends=True)
    start = old[0].lineno - 1 - len(old[0].decorator_list)
    text = "".join(lines[:start]) + NEW_TESTS + "".join(lines[old[0].end_lineno :])
    if not re.search(r"^import shutil$", text, re.M):
        text = sub(r"^import re\n", "import re\nimport shutil\n", text, "'import re'")
    return text


# ---- the run -----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the map and change nothing")
    ap.add_argument("--allow-dirty", action="store_true", help="run on a tree with uncommitted changes")
    args = ap.parse_args()
    root = Path.cwd()
    try:
        if not (root / "pipekit" / "__init__.py").is_file() or not (root / ".git").exists():
            raise Refused("run this at the root of a pipekit checkout")
        if not args.allow_dirty and git("status", "--porcelain", "--untracked-files=no").strip():
            raise Refused("the tree has uncommitted changes (commit them, or --allow-dirty)")
        moves = plan_moves(root)
        for stem, target in sorted(moves.items(), key=lambda kv: kv[1]):
            rule = "" if stem in MAP else "   (by prefix)"
            print(f"pipekit/{stem}.py -> pipekit/{target.replace('.', '/')}.py{rule}")
        if args.dry_run:
            return 0
        rewrite = make_rewriter(moves)
        page = (root / ARCH).read_text()
        # Check everything that can refuse before the first change.
        for stem, target in moves.items():
            fix_moved_module((root / "pipekit" / f"{stem}.py").read_text(), stem, target)
        files = tracked_text_files(root)
        for p in files:
            rewrite((root / p).read_text(), str(p))
        # Rewritten first: what rewrite_pyproject writes names the new packages.
        pyproject = rewrite_pyproject(rewrite((root / "pyproject.toml").read_text(), "pyproject.toml"))
        # The old tests' module names rewritten first; the new tests are written with the new ones.
        arch_test = rewrite_architecture_test(rewrite((root / ARCH_TEST).read_text(), str(ARCH_TEST)))
        arch_page = rewrite_architecture(page, moves, rewrite)
    except Refused as e:
        print(f"restructure: {e}", file=sys.stderr)
        return 1

    # Moves.
    packages = sorted({t.rsplit(".", 1)[0] for t in moves.values()})
    packages = sorted({".".join(p.split(".")[: i + 1]) for p in packages for i in range(p.count(".") + 1)})
    for package in packages:
        folder = root / "pipekit" / package.replace(".", "/")
        folder.mkdir(parents=True, exist_ok=True)
        init = folder / "__init__.py"
        concept = PACKAGES[package.replace(".", "/")].replace("`", "``")
        body = textwrap.fill(f"{concept[0].upper()}{concept[1:]}.", width=110, break_on_hyphens=False)
        init.write_text(f'"""{body}\n"""\n' if "\n" in body else f'"""{body}"""\n')
        git("add", str(init))
    moved_files = {}
    for stem, target in moves.items():
        new = Path("pipekit") / (target.replace(".", "/") + ".py")
        git("mv", f"pipekit/{stem}.py", str(new))
        moved_files[new] = (stem, target)
    for name, package in RESOURCES.items():
        if (root / "pipekit" / name).exists():
            git("mv", f"pipekit/{name}", f"pipekit/{package}/{name}")

    # Rewrites.
    changed_py = []
    inits = {Path("pipekit") / p.replace(".", "/") / "__init__.py" for p in packages}
    for p in tracked_text_files(root):
        if p in inits:
            continue  # written above, with the new names
        old = (root / p).read_text()
        new = rewrite(old, str(p))
        if p in moved_files:
            new = fix_moved_module(new, *moved_files[p])
        if p == ARCH:
            new = arch_page
        if p == ARCH_TEST:
            new = arch_test
        if p == Path("pyproject.toml"):
            new = pyproject
        if new != old:
            (root / p).write_text(new)
            if p.suffix == ".py":
                changed_py.append(str(p))
    (root / ".importlinter").write_text(importlinter_config())
    git("add", "-u", "--", *REWRITE_ROOTS, *REWRITE_FILES)
    git("add", ".importlinter")

    # Imports sorted again, long lines folded, as ruff would have them.
    changed_py += [str(root / "pipekit" / p.replace(".", "/") / "__init__.py") for p in packages]
    ruff = [sys.executable, "-m", "ruff"]
    subprocess.run([*ruff, "check", "--select", "I", "--fix", "--quiet", *changed_py], check=False)
    subprocess.run([*ruff, "format", "--quiet", *changed_py], check=True)
    git("add", "-u", "--", *REWRITE_ROOTS, *REWRITE_FILES)
    git("add", ".importlinter")
    print(f"restructure: {len(moves)} modules moved into {len(packages)} packages; review with git diff --cached -M")
    return 0


if __name__ == "__main__":
    sys.exit(main())

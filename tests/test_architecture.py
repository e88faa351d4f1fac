"""The shape of the code stays readable: size limits, cheap imports, page tables that match, import contracts."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "pipekit"
MODULE_LINES, FUNCTION_LINES, INIT_PARAMETERS = 600, 60, 8


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_is_over_the_limit(path: Path) -> None:
    """No module is longer than 600 lines."""
    assert len(path.read_text().splitlines()) <= MODULE_LINES


def test_no_function_is_over_60_lines_and_no_constructor_over_8_parameters() -> None:
    """Functions fit on a screen; a constructor that needs more than 8 values wants a value object."""
    too_long, too_wide = [], []
    for path in _modules():
        for fn in _functions(path):
            lines = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if lines > FUNCTION_LINES:
                too_long.append(f"{path.relative_to(PACKAGE)}:{fn.lineno} {fn.name} ({lines} lines)")
            a = fn.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
            wide = len([n for n in names if n != "self"]) > INIT_PARAMETERS
            if fn.name == "__init__" and wide and _owner(path, fn) not in WIDE_BY_DESIGN:
                too_wide.append(f"{path.relative_to(PACKAGE)}:{fn.lineno} ({len(names) - 1} parameters)")
    assert not too_long, too_long
    assert not too_wide, too_wide


def _modules_after(code: str) -> set[str]:
    """The top-level packages loaded by running ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_pipekit_loads_neither_networkx_nor_docker_nor_structlog() -> None:
    """`import pipekit` is cheap: the heavy libraries come when a pipeline is planned or run."""
    loaded = _modules_after("import pipekit")
    assert not loaded & {"networkx", "docker", "structlog", "requests", "attrs", "attr"}


def test_the_pytest_plugin_costs_nothing_in_a_session_that_does_not_use_it() -> None:
    """Loading the plugin (as every pytest session of every project with pipekit installed does)
    adds no module but pipekit's package and the plugin itself."""
    before = _modules_after("import pytest")
    after = _modules_after("import pytest\nimport pipekit.pytest_plugin")
    assert after - before == {"pipekit"}


def test_a_run_of_a_valid_pipeline_loads_neither_networkx_nor_docker_for_the_fake() -> None:
    """networkx arrives when asked for (``plan.graph``, a cycle to explain); the docker SDK only
    with the Docker backend."""
    run = (
        "import pipekit as pk\n"
        "from pipekit.testing import PipelineRunner\n"
        "p = pk.Pipeline(name='x', image='alpine')\n"
        "p.stage(name='a')(lambda ctx: None)\n"
        "assert PipelineRunner().run(p).status == 'succeeded'\n"
    )
    loaded = _modules_after(run)
    assert "networkx" not in loaded and "docker" not in loaded
    assert "networkx" in _modules_after(run + "assert len(pk.plan(p).graph) == 1")


_FIRST_CREATE_PROBE = """
import http.client, os, sys
put = http.client.HTTPConnection.putrequest
def spy(self, method, url, *a, **k):
    if "/containers/create" in url and not os.path.exists(os.environ["MODULES"]):
        with open(os.environ["MODULES"], "w") as f:
            f.write(" ".join(sorted(sys.modules)))
    return put(self, method, url, *a, **k)
http.client.HTTPConnection.putrequest = spy
from pipekit._cli.main import main
sys.exit(main(["run", "--log-format", "json"]))
"""


@pytest.mark.docker
def test_a_run_loads_nothing_before_its_first_container_that_it_needs_only_later(
    tmp_path: Path, busybox_image: str
) -> None:
    """Start-up (issue 14): up to the first container's create, `pipekit run` loads only what
    that needs; test reports, CI outputs, archives, suggestions, colorama and networkx come later
    or never."""
    stage = f"import pipekit as pk\n\n@pk.stage(image={busybox_image!r})\ndef one(ctx):\n    ctx.sh('true')\n"
    (tmp_path / "pipeline.py").write_text(stage)
    modules = tmp_path / "modules.txt"
    env = {**os.environ, "MODULES": str(modules)}
    proc = subprocess.run(
        [sys.executable, "-c", _FIRST_CREATE_PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(modules.read_text().split())
    assert "docker" in loaded and "pipekit._backends.docker.shell" in loaded  # the probe saw the create
    later = {"networkx", "xml.etree.ElementTree", "argparse", "difflib", "colorama", "rich", "pipekit._ci.junit"}
    assert not loaded & later


def _rows(pattern: str) -> set[str]:
    return set(re.findall(pattern, (ROOT / "docs" / "architecture.md").read_text(), flags=re.M))


def test_the_package_table_in_the_architecture_page_matches_the_packages() -> None:
    """docs/architecture.md names every subpackage, and none that is gone."""
    listed = _rows(r"^\| `pipekit/([\w/]+)/` \|")
    present = {p.parent.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("__init__.py")} - {"."}
    assert listed == present, {"missing from the page": present - listed, "gone from the code": listed - present}


def test_the_module_tables_in_the_architecture_page_match_the_modules() -> None:
    """docs/architecture.md names every module, under its package, and none that is gone."""
    listed = _rows(r"^\| `pipekit/([\w/]+\.py)` \|")
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
        f.write("\nimport docker.errors  # noqa\nfrom pipekit._cli import main  # noqa\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pipekit._core.util -> pipekit._cli.main" in proc.stdout
    assert "pipekit._core.util -> docker" in proc.stdout


#: ``getattr(backend, ...)``, ``getattr(self.run.backend, ...)``, ``getattr(self._backend, ...)``,
#: ``getattr(self.inner, ...)``
_BACKEND_GETATTR = re.compile(r"getattr\(\s*(?:[\w.]*\.)?_?(?:backend|inner|engine)\b")


def test_backends_are_asked_their_declared_capabilities_never_probed_with_getattr() -> None:
    """What a backend can do is its ``capabilities`` value, read by attribute: a capability read
    with ``getattr(backend, "x", default)`` is one nobody declared."""
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in _modules()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _BACKEND_GETATTR.search(line)
    ]
    assert not found, found
    assert _BACKEND_GETATTR.search('keep = getattr(self.backend, "keep", None)')  # the scan sees one


def _private_imports_from(package: str, code: str, where: str) -> list[str]:
    return [
        f"{where}:{node.lineno}: {node.module}.{alias.name}"
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.ImportFrom) and node.module and (node.module + ".").startswith(package + ".")
        for alias in node.names
        if alias.name.startswith("_")
    ]


def test_no_module_outside_the_docker_backend_imports_its_private_names() -> None:
    """The Swarm backend (and everything else) uses the Docker backend through its public names."""
    docker, package = PACKAGE / "_backends" / "docker", "pipekit._backends.docker"
    found = [
        hit
        for path in _modules()
        if docker not in path.parents
        for hit in _private_imports_from(package, path.read_text(), str(path.relative_to(PACKAGE)))
    ]
    assert not found, found
    seen = _private_imports_from(package, "from pipekit._backends.docker.backend import DockerBackend, _Prepared", "x")
    assert seen == ["x:1: pipekit._backends.docker.backend._Prepared"]  # the scan sees one


def _private_members(folder: Path) -> set[str]:
    """The ``_``-prefixed functions, methods and ``self._x`` attributes defined in a package."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                names.add(node.attr)
    return {n for n in names if not n.startswith("__")}


def _reached_into(code: str, theirs: set[str], own: set[str]) -> list[str]:
    """Uses of ``theirs`` private members: on any object, or on ``self`` unless also ``own``."""
    return [
        f"{node.lineno}: .{node.attr}"
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Attribute) and node.attr in theirs
        if not (isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in own)
    ]


def test_the_swarm_backend_uses_docker_engines_through_their_public_methods() -> None:
    """No ``engine._remove(...)``, ``self._labels(...)`` of the Docker backend in the Swarm backend."""
    backends = PACKAGE / "_backends"
    theirs, own = _private_members(backends / "docker"), _private_members(backends / "swarm")
    found = [
        f"{path.relative_to(PACKAGE)}:{hit}"
        for path in sorted((backends / "swarm").rglob("*.py"))
        for hit in _reached_into(path.read_text(), theirs, own)
    ]
    assert not found, found
    assert _reached_into("task.engine._attach(c)\nself._labels(s)\n", {"_attach", "_labels"}, set()) == [
        "1: ._attach",
        "2: ._labels",
    ]  # the scan sees them


#: constructors that the user calls with keywords, as a DSL, and may take more than 8 (all keyword-only)
WIDE_BY_DESIGN = {"_dsl/stage.py:Pipeline"}


def _owner(path: Path, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """``module:Class`` of a method (by its line), for WIDE_BY_DESIGN."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and any(getattr(m, "lineno", None) == fn.lineno for m in node.body):
            return f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"
    return f"{path.relative_to(PACKAGE).as_posix()}:"


@pytest.mark.parametrize("owner", sorted(WIDE_BY_DESIGN))
def test_a_constructor_wide_by_design_takes_its_options_by_keyword_only(owner: str) -> None:
    """A constructor exempt from the limit of 8 takes one positional parameter at most; the rest are
    keyword-only with defaults, so that a call reads by names and a new option has no place to keep."""
    module, name = owner.split(":")
    tree = ast.parse((PACKAGE / module).read_text())
    (cls,) = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name]
    (init,) = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    a = init.args
    assert not a.posonlyargs and not a.vararg and not a.kwarg
    assert [x.arg for x in a.args][:1] == ["self"] and len(a.args) <= 2
    assert len(a.kw_defaults) == len(a.kwonlyargs) and None not in a.kw_defaults
    assert len(a.args) - 1 + len(a.kwonlyargs) > INIT_PARAMETERS  # else it needs no exemption


def _import_graph(package: Path) -> dict[str, set[str]]:
    """Each module of ``package`` and the package's modules it imports: anywhere in the module (at
    the top, in a function, under ``if TYPE_CHECKING:``), ``from a import b`` meaning module
    ``a.b`` when there is one, else ``a``."""
    root = package.name
    names = {
        ".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(package.rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package up
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base)
        graph[name] = {t for t in targets if t in names and t != name and t.split(".")[0] == root}
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules, the first again at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_module_imports_itself_back_through_any_chain() -> None:
    """The module import graph has no cycle, between packages or inside one; imports in functions
    and under ``if TYPE_CHECKING:`` count too (a lazy import that closes a cycle is still a knot)."""
    graph = _import_graph(PACKAGE)
    assert len(graph) > 100 and graph["pipekit._run.runner"] >= {"pipekit._run.session", "pipekit._run.scheduler"}
    cycle = _a_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    """A copy of the package where ``_core.util`` imports the run's session (which imports it)
    inside a function has a cycle, and the check names it."""
    shutil.copytree(PACKAGE, tmp_path / "pipekit", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "pipekit" / "_core" / "util.py").open("a") as f:
        f.write("\n\ndef _late() -> None:\n    from pipekit._run import session  # noqa\n")
    cycle = _a_cycle(_import_graph(tmp_path / "pipekit"))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert "pipekit._core.util" in cycle and "pipekit._run.session" in cycle

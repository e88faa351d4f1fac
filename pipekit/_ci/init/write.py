"""``pipekit init``: the project looked at, the files made, checked, then written.

Nothing is written unless pipeline.py compiles, loads and validates and test_pipeline.py
compiles, both with the grammar of the lowest Python the project supports; a wrong result is the
generator's bug: exit 3 and ``pipeline.py.rejected`` beside, as ``pipekit import jenkinsfile``
does. Files that exist are left as they are without ``--force``; a pyproject.toml is only added
to (a ``[tool.pipekit]`` table it has already is kept), and the result must read back as the
user's table plus the new one.
"""

from __future__ import annotations

import ast
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipekit._ci.init.project import Project, inspect_project
from pipekit._ci.init.render import lit, pipekit_table, render_pipeline, render_tests
from pipekit.exceptions import UsageError

__all__ = ["InitResult", "init_project"]

SOURCES = {"jenkinsfile": "Jenkinsfile", "github": ".github/workflows/*.yml", "gitlab": ".gitlab-ci.yml"}


@dataclass
class InitResult:
    pipeline: str
    tests: str
    todos: list[str]


def _generate_from(p: Project, source: str) -> InitResult:
    from pipekit._ci.init.commands import plan_for
    from pipekit._ci.init.fromci import CiFileError, from_github, from_gitlab, gitlab_variables, render_jobs

    path = p.ci_files.get(source)
    if path is None:
        raise UsageError(f"--from {source}: there is no {SOURCES[source]} in {p.root}")
    if source == "jenkinsfile":
        from pipekit._ci.jenkins.convert import convert
        from pipekit._ci.jenkins.parse import ParseError

        try:
            converted = convert((p.root / path).read_text(encoding="utf-8"), p.name)
        except ParseError as e:
            raise UsageError(f"{path}: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {path}: {e}") from None
        todos = [f"line {line}: {text}" for line, text in converted.todos]
        return InitResult(converted.text, "", todos)
    try:
        jobs = (from_github if source == "github" else from_gitlab)(p.root / path)
        variables = gitlab_variables(p.root / path) if source == "gitlab" else {}
    except CiFileError as e:
        raise UsageError(str(e)) from None
    fallback = plan_for(p).image if p.language else "ubuntu:24.04"
    text, todos = render_jobs(jobs, path, p.name, fallback, variables)
    return InitResult(text, "", todos)


def _first_commanded(tree: ast.Module, order: tuple[str, ...]) -> str | None:
    """The first stage (in run order) whose function runs a command."""
    with_sh = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(n, ast.Attribute) and n.attr == "sh" for n in ast.walk(node))
    }
    return next((name for name in order if name in with_sh), None)


def _tests_for_loaded(text: str, branch: str) -> str:
    """test_pipeline.py for a converted pipeline: it runs green on the fake backend, and a failing
    command fails the first stage that runs one."""
    import pipekit as pk

    with tempfile.TemporaryDirectory(prefix="pipekit-init-") as folder:
        target = Path(folder) / "pipeline.py"
        target.write_text(text, encoding="utf-8")
        pipeline = pk.load(target)
        order = tuple(pk.plan(pipeline).order)
        secrets = {name: f"test-{name.lower()}" for name in sorted(pipeline.secret_names)}
    first = _first_commanded(ast.parse(text), order)
    lines = [
        '"""Tests of pipeline.py on pipekit\'s fake backend: no engine, no network (`pytest test_pipeline.py`).',
        "",
        "Written by `pipekit init --from`: change them with the pipeline. A command no test scripts succeeds",
        'with no output; `pipekit_runner.respond(...)` scripts one (its exit code, output and files)."""',
        "",
        f"SECRETS = {lit(secrets)}",
        "",
        "",
        "def test_the_default_branch_runs_green(pipekit_runner):",
        f'    result = pipekit_runner.run("pipeline.py", branch={lit(branch)}, secrets=SECRETS)',
        '    assert result.status == "succeeded", result.status.explain()',
        f"    assert set(result.stages) == {{{', '.join(lit(n) for n in order)}}}",
        "",
        "",
    ]
    if first is None:
        lines += [
            "def test_the_stages_run_in_their_order(pipekit_runner):",
            f'    result = pipekit_runner.run("pipeline.py", branch={lit(branch)}, secrets=SECRETS)',
            f"    assert result.order == {lit(order)}",
        ]
    else:
        lines += [
            "def test_a_failing_command_fails_its_stage_and_the_run(pipekit_runner):",
            '    pipekit_runner.respond("*", exit_code=1, stage=' + lit(first) + ")",
            f'    result = pipekit_runner.run("pipeline.py", branch={lit(branch)}, secrets=SECRETS)',
            '    assert result.status == "failed" and result.exit_code == 1',
            f'    assert result.stages[{lit(first)}].status == "failed"',
        ]
    return "\n".join(lines) + "\n"


def _problem(result: InitResult, lowest: tuple[int, int]) -> str | None:
    from pipekit._ci.jenkins.check import check
    from pipekit._ci.jenkins.emit import check_source

    problem = check(result.pipeline)
    if problem is not None:
        return f"pipeline.py: {problem}"
    for name, text in (("pipeline.py", result.pipeline), ("test_pipeline.py", result.tests)):
        found = check_source(text, name)
        if found is not None:
            return f"{name}: it is not valid Python 3.10: {found}"
        try:
            ast.parse(text, name, feature_version=lowest)
        except SyntaxError as e:
            return f"{name}: it is not valid Python {lowest[0]}.{lowest[1]}: line {e.lineno}: {e.msg}"
    return None


def _pyproject(root: Path, registry: str | None) -> tuple[str, str | None]:
    """What becomes of pyproject.toml: (what was done, the new text or None to leave it)."""
    from pipekit._ci.init.project import _toml

    path = root / "pyproject.toml"
    table = pipekit_table(registry)
    if not path.exists():
        return "pyproject.toml written with [tool.pipekit] (the only file pipekit reads its defaults from)", table
    if path.is_symlink() or not path.is_file():
        raise UsageError(
            "pyproject.toml is not a regular file: pipekit leaves it alone; remove the link or pass no file"
        )
    old_text = path.read_text(encoding="utf-8")
    old = _toml(old_text)
    if not old and old_text.strip():
        raise UsageError(
            "pyproject.toml is not valid TOML: pipekit does not edit it (fix it, then run pipekit init again)"
        )
    if "pipekit" in old.get("tool", {}):
        return "pyproject.toml already has [tool.pipekit]: kept as it is", None
    new_text = old_text + ("" if old_text.endswith("\n") or not old_text else "\n") + "\n" + table
    new = _toml(new_text)
    expected = {**old, "tool": {**old.get("tool", {}), "pipekit": new.get("tool", {}).get("pipekit")}}
    if new != expected or not new.get("tool", {}).get("pipekit"):
        raise UsageError(
            "pyproject.toml cannot take a [tool.pipekit] table at its end (a dotted tool.* key?): add it by hand"
        )
    return "[tool.pipekit] added to pyproject.toml", new_text


def generate(root: Path, registry: str | None, source: str | None) -> tuple[Project, InitResult]:
    p = inspect_project(root)
    if source is None:
        result = InitResult(render_pipeline(p, registry), render_tests(p, registry), [])
    else:
        result = _generate_from(p, source)
    if not result.tests:
        try:
            result.tests = _tests_for_loaded(result.pipeline, p.branch)
        except Exception:  # noqa: BLE001 - a pipeline that does not load is reported by _problem
            result.tests = '"""The pipeline did not load: no tests written."""\n'
    return p, result


def init_project(
    root: Path, *, registry: str | None, source: str | None, force: bool, out: IO[str], err: IO[str]
) -> int:
    """The command: 0 done, 1 done with parts to convert by hand (--from), 3 the generated
    pipeline is wrong (kept as pipeline.py.rejected). A file in the way: UsageError (2)."""
    from pipekit._core.safefile import write_file

    targets = [root / "pipeline.py", root / "test_pipeline.py"]
    if not force:
        there = [t.name for t in targets if t.exists() or t.is_symlink()]
        if there:
            raise UsageError(
                f"{' and '.join(there)} exist{'s' if len(there) == 1 else ''}:"
                " pipekit init leaves them as they are (--force replaces them)"
            )
    p, result = generate(root, registry, source)
    problem = _problem(result, p.lowest_python)
    if problem is not None:
        rejected = root / "pipeline.py.rejected"
        write_file(rejected, result.pipeline, root=root)
        print(
            f"pipekit: internal error of pipekit init: {problem}. Nothing was written;"
            f" the result is in {rejected} for a bug report.",
            file=err,
        )
        return 3
    pushed = registry if p.dockerfile is not None and source is None else None  # else no `registry` parameter
    said, pyproject = _pyproject(root, pushed)
    for target, text in zip(targets, (result.pipeline, result.tests)):
        write_file(target, text, root=root)
    if pyproject is not None:
        write_file(root / "pyproject.toml", pyproject, root=root)
    _summary(p, result, said, source, out)
    return 1 if result.todos else 0


def _summary(p: Project, result: InitResult, said: str, source: str | None, out: IO[str]) -> None:
    import pipekit as pk

    found = ", ".join(p.found) or "nothing pipekit recognises"
    print(f"found: {found}", file=out)
    with tempfile.TemporaryDirectory(prefix="pipekit-init-") as folder:
        (Path(folder) / "pipeline.py").write_text(result.pipeline, encoding="utf-8")
        pipeline: Any = pk.load(Path(folder) / "pipeline.py")
        order, secrets = pk.plan(pipeline).order, sorted(pipeline.secret_names)
    print(f"wrote pipeline.py ({', '.join(order)}), test_pipeline.py; {said}", file=out)
    if secrets:
        print(f"secrets it uses: {', '.join(secrets)} (the environment, or --secrets-file)", file=out)
    if result.todos:
        print(
            f"{len(result.todos)} part(s) of {source} need converting by hand (marked TODO in pipeline.py):", file=out
        )
        for todo in result.todos:
            print(f"  {todo}", file=out)
    print("next: pipekit validate, pytest test_pipeline.py, pipekit run", file=out)

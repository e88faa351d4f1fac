"""`pipekit init` on small projects shaped like real public ones (tests/init_projects/SOURCES.md):
what it writes compiles at the project's lowest Python, `pipekit validate` passes it, its tests
pass under pytest, and one runs for real on the engine."""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import console_env, run_console

PROJECTS = Path(__file__).parent / "init_projects"
NAMES = sorted(p.name for p in PROJECTS.iterdir() if p.is_dir())
#: the stages `pipekit init --registry R` must give each fixture, in order
ORDER = {
    "express-docker": ("lint", "test", "build", "smoke", "push", "deploy"),
    "flask-jenkins": ("lint", "test", "build", "smoke", "push", "deploy"),
    "go-docker": ("lint", "test", "build", "smoke", "push", "deploy"),
    "go-makefile": ("lint", "test", "deploy"),
    "node-lib-github": ("lint", "test", "deploy"),
    "pylib-github": ("lint", "test", "deploy"),
    "react-gitlab": ("test", "build", "smoke", "push", "deploy"),
}
FROM = [
    ("flask-jenkins", "jenkinsfile"),
    ("pylib-github", "github"),
    ("node-lib-github", "github"),
    ("react-gitlab", "gitlab"),
]
SECRETS = {"REGISTRY_USER": "ci", "REGISTRY_PASSWORD": "pw-for-the-test"}
CORPUS = os.environ.get("PIPEKIT_INIT_CORPUS")


def _project(source: Path, tmp_path: Path) -> Path:
    """A copy of ``source`` as a git repository on main (init reads the default branch from git)."""
    folder = tmp_path / source.name
    shutil.copytree(source, folder, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c"],
    ):
        subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)
    return folder


def _lowest_python(folder: Path) -> tuple[int, int]:
    """The lowest Python the project supports, read here independently of pipekit's reading."""
    text = (folder / "pyproject.toml").read_text() if (folder / "pyproject.toml").is_file() else ""
    m = re.search(r'requires-python\s*=\s*">=\s*3\.(\d+)', text)
    return (3, max(10, int(m.group(1)))) if m else (3, 10)


def _check_written(folder: Path, lowest: tuple[int, int]) -> None:
    """Both files compile at ``lowest``; validate passes; the generated tests pass under pytest."""
    for name in ("pipeline.py", "test_pipeline.py"):
        text = (folder / name).read_text()
        ast.parse(text, name, feature_version=lowest)
        compile(text, name, "exec")
    validate = run_console(["validate", "--no-image-check"], cwd=folder, env={**os.environ, **SECRETS})
    assert validate.returncode == 0, validate.stdout + validate.stderr
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_pipeline.py"],
        cwd=folder,
        env=console_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr


def test_the_fixtures_cover_python_node_and_go_with_and_without_a_dockerfile() -> None:
    assert set(NAMES) == set(ORDER)
    kinds = {(n, (PROJECTS / n / "Dockerfile").is_file()) for n in NAMES}
    for marker in ("requirements.txt", "pyproject.toml", "package.json", "go.mod"):
        assert any((PROJECTS / n / marker).is_file() or any((PROJECTS / n).glob(f"*/{marker}")) for n in NAMES)
    assert {d for _, d in kinds} == {True, False}
    assert "| `flask-jenkins` | `tslaceo/flask-pytest-example` @" in (PROJECTS / "SOURCES.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_init_writes_a_pipeline_that_validates_and_tests_that_pass(name: str, tmp_path: Path) -> None:
    folder = _project(PROJECTS / name, tmp_path)
    before = (folder / "pyproject.toml").read_text() if (folder / "pyproject.toml").is_file() else None
    proc = run_console(["init", "--registry", "registry.example:5000"], cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"wrote pipeline.py ({', '.join(ORDER[name])})" in proc.stdout
    _check_written(folder, _lowest_python(folder))
    pipeline = (folder / "pipeline.py").read_text()
    assert "when=pk.branch(BRANCH)" in pipeline and 'BRANCH = "main"' in pipeline
    assert "ctx.junit(" in pipeline  # every fixture's tests write a JUnit report the run reads
    after = (folder / "pyproject.toml").read_text()
    if before is not None:  # the user's file is only added to
        assert after.startswith(before) and "[tool.pipekit]" in after[len(before) :]
    import tomllib

    table = {"fail-fast": True, "timeout": "30m"}
    if "push" in ORDER[name]:
        table["params"] = {"registry": "registry.example:5000"}
    assert tomllib.loads(after)["tool"]["pipekit"] == table


@pytest.mark.parametrize(("name", "source"), FROM, ids=[f"{n}-{s}" for n, s in FROM])
def test_init_from_the_projects_ci_file(name: str, source: str, tmp_path: Path) -> None:
    folder = _project(PROJECTS / name, tmp_path)
    proc = run_console(["init", "--from", source], cwd=folder)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # each of these has parts to convert by hand
    assert "need converting by hand (marked TODO in pipeline.py)" in proc.stdout
    _check_written(folder, _lowest_python(folder))
    pipeline = (folder / "pipeline.py").read_text()
    expected = {
        "flask-jenkins": ["def build_docker(ctx", "def curl_test(ctx"],
        "pylib-github": [
            'ctx.sh("python -m venv .venv")',
            "def test_pip(ctx",
            "needs=[quality_pip]",
            "# TODO: strategy/matrix",
        ],
        "node-lib-github": [  # the test suite, not CodeQL (first by name)
            '@pk.stage(image="node:16")\ndef lintjs(ctx):',
            'ctx.sh("npm run lint")',
            '@pk.stage(image="node:14", needs=[lintjs])\ndef unittest(ctx):',
            'ctx.sh("npm run test:coverage")',
        ],
        "react-gitlab": [
            'VARIABLES = {"TAG_LATEST": "$CI_REGISTRY_IMAGE:latest", "APP_NAME": "test-react", "PORT": "8080"}',
            'ctx.sh("docker build -t \\"$TAG_LATEST\\" .", env=VARIABLES)',
            'when=pk.branch("main")',
            "needs=[docker_build]",
        ],
    }[name]
    for text in expected:
        assert text in pipeline, pipeline


@pytest.mark.parametrize(
    ("files", "order"),
    [
        ({}, ("deploy",)),
        ({"Makefile": "lint:\n\tshellcheck *.sh\ntest:\n\t./run-tests.sh\n"}, ("lint", "test", "deploy")),
    ],
    ids=["empty", "makefile-only"],
)
def test_a_project_with_nothing_known_or_only_a_makefile(
    files: dict[str, str], order: tuple[str, ...], tmp_path: Path
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    proc = run_console(["init", "-C", str(folder)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote pipeline.py ({', '.join(order)})" in proc.stdout
    _check_written(folder, (3, 10))
    if files:
        assert 'ctx.sh("make test")' in (folder / "pipeline.py").read_text()


def test_files_in_the_way_are_never_overwritten_without_force(tmp_path: Path) -> None:
    folder = _project(PROJECTS / "flask-jenkins", tmp_path)
    (folder / "pipeline.py").write_text("# mine\n")
    proc = run_console(["init"], cwd=folder)
    assert proc.returncode == 2
    assert "pipeline.py exists: pipekit init leaves them as they are (--force replaces them)" in proc.stderr
    assert (folder / "pipeline.py").read_text() == "# mine\n" and not (folder / "test_pipeline.py").exists()
    assert not (folder / "pyproject.toml").exists()
    proc = run_console(["init", "--force"], cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "import pipekit as pk" in (folder / "pipeline.py").read_text()


def test_a_tool_pipekit_table_the_user_has_is_kept_and_a_broken_pyproject_is_not_touched(tmp_path: Path) -> None:
    folder = _project(PROJECTS / "pylib-github", tmp_path)
    text = (folder / "pyproject.toml").read_text() + "\n[tool.pipekit]\njobs = 3\n"
    (folder / "pyproject.toml").write_text(text)
    proc = run_console(["init"], cwd=folder)
    assert proc.returncode == 0 and "already has [tool.pipekit]: kept as it is" in proc.stdout
    assert (folder / "pyproject.toml").read_text() == text
    (folder / "pyproject.toml").write_text("[project\nname = 'x'\n")
    proc = run_console(["init", "--force"], cwd=folder)
    # (every command reads [tool.pipekit] first, and says so: init never gets to edit it)
    assert proc.returncode == 2 and "pyproject.toml: Expected ']'" in proc.stderr and "Traceback" not in proc.stderr
    assert (folder / "pyproject.toml").read_text() == "[project\nname = 'x'\n"


def test_from_a_ci_file_that_is_not_there_or_not_yaml_is_said(tmp_path: Path) -> None:
    folder = _project(PROJECTS / "go-docker", tmp_path)
    proc = run_console(["init", "--from", "gitlab"], cwd=folder)
    assert proc.returncode == 2 and "--from gitlab: there is no .gitlab-ci.yml in" in proc.stderr
    (folder / ".gitlab-ci.yml").write_text("job: [unclosed\n")
    proc = run_console(["init", "--from", "gitlab"], cwd=folder)
    assert proc.returncode == 2 and ".gitlab-ci.yml is not valid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr and not (folder / "pipeline.py").exists()


def test_a_wrong_result_is_refused_with_exit_3_and_kept_as_rejected(tmp_path: Path, monkeypatch: Any) -> None:
    from pipekit._ci.init import write

    folder = _project(PROJECTS / "go-docker", tmp_path)
    monkeypatch.setattr(
        write,
        "render_pipeline",
        lambda p, r: "import pipekit as pk\n\n@pk.stage(needs=['nowhere'])\ndef a(ctx):\n    pass\n",
    )
    out, err = io.StringIO(), io.StringIO()
    code = write.init_project(folder, registry=None, source=None, force=False, out=out, err=err)
    assert code == 3
    assert "internal error of pipekit init: pipeline.py: it does not validate" in err.getvalue()
    assert (folder / "pipeline.py.rejected").is_file() and not (folder / "pipeline.py").exists()


def test_project_values_reach_the_files_only_as_literals_and_comments(tmp_path: Path) -> None:
    folder = _project(PROJECTS / "express-docker", tmp_path)
    (folder / "Dockerfile").write_text('FROM node:18\nCMD ["node", "x.js\\"); import os; os.system(\\"id\\")  #"]\n')
    (folder / "package.json").write_text(
        '{"name": "a\\"\\nimport os", "scripts": {"test": "jest \\"\\"\\" \\n x"}, "devDependencies": {"jest": "1"}}'
    )
    proc = run_console(["init"], cwd=folder)
    assert proc.returncode == 0, proc.stderr
    tree = ast.parse((folder / "pipeline.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [ast.unparse(n) for n in imports] == ["import pipekit as pk"]


@pytest.mark.skipif(not CORPUS, reason="PIPEKIT_INIT_CORPUS names no folder of real checkouts")
def test_init_on_real_checkouts(tmp_path: Path) -> None:
    assert CORPUS is not None
    checkouts = sorted(p for p in Path(CORPUS).iterdir() if p.is_dir())
    assert checkouts
    for source in checkouts:
        folder = _project(source, tmp_path)
        proc = run_console(["init", "--registry", "registry.example:5000"], cwd=folder)
        assert proc.returncode == 0, f"{source.name}: {proc.stdout}{proc.stderr}"
        _check_written(folder, _lowest_python(folder))


@pytest.mark.docker
def test_the_generated_pipeline_runs_for_real(
    tmp_path: Path, python_base_image: str, busybox_image: str, registry: Any, docker_client: Any
) -> None:
    """flask-jenkins: pip installs from the package index in the stages and the Dockerfile (the
    test's Python image has pip and the machine's CA), lint, tests with their JUnit report, the
    image built, smoke-tested, pushed to a real registry with a login, deployed on main."""
    image = _python_with_pip(tmp_path, python_base_image, docker_client)
    folder = _project(PROJECTS / "flask-jenkins", tmp_path)
    proc = run_console(["init", "--registry", registry.address], cwd=folder)
    assert proc.returncode == 0, proc.stderr
    maps = [f"python:3.12-slim={image}", f"python={image}", f"alpine:3.20={busybox_image}"]
    env = {**os.environ, "REGISTRY_USER": registry.user, "REGISTRY_PASSWORD": registry.password}
    mapped = [x for m in maps for x in ("--image-map", m)]
    validate = run_console(["validate", *mapped], cwd=folder, env=env)  # the images checked, for real
    assert validate.returncode == 0, validate.stdout + validate.stderr
    args = ["run", "--branch", "main", *(x for m in maps for x in ("--image-map", m))]
    proc = run_console(args, cwd=folder, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_id = re.search(r"run ([0-9a-f]{12}) succeeded", proc.stdout + proc.stderr)
    assert run_id, proc.stdout[-2000:]
    assert "2 passed" in proc.stdout + proc.stderr and registry.password not in proc.stdout + proc.stderr
    show = run_console(["show", run_id.group(1)], cwd=folder)
    assert re.search(r"test\b.*2 tests", show.stdout), show.stdout
    left = docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id.group(1)}"})
    assert not left
    pulled = docker_client.images.pull(
        f"{registry.address}/flask-jenkins",
        tag="latest",
        auth_config={"username": registry.user, "password": registry.password},
    )
    assert pulled.id
    docker_client.images.remove(pulled.id, force=True)


def _python_with_pip(tmp_path: Path, base: str, docker_client: Any) -> str:
    """The local Python image with pip (copied from this machine's Python, the same 3.11) and the
    machine's CA bundle, so pip reaches the package index through its proxy, as python:3.x does."""
    import pip

    tag = "pipekit-local/python-pip:3.11"
    context = tmp_path / "python-pip"
    context.mkdir()
    shutil.copytree(Path(pip.__file__).parent, context / "pip")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", context / "ca.crt")
    (context / "Dockerfile").write_text(
        f"FROM {base}\n"
        "COPY pip /usr/local/lib/python3.11/dist-packages/pip\n"
        "COPY ca.crt /etc/ssl/certs/ca-certificates.crt\n"
        "RUN printf '#!/bin/sh\\nexec python3 -m pip \"$@\"\\n' > /usr/local/bin/pip && chmod +x /usr/local/bin/pip\n"
        "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
        " PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_BREAK_SYSTEM_PACKAGES=1\n"
    )
    docker_client.images.build(path=str(context), tag=tag, rm=True)
    return tag


WALK = re.compile(r"<!-- walkthrough(: skip[^>]*)? -->\n```sh\n(.*?)```", re.S)


@pytest.mark.docker
def test_the_getting_started_walkthrough_runs_as_written(
    tmp_path: Path, python_base_image: str, busybox_image: str, docker_client: Any
) -> None:
    """docs/getting-started.md: `pipekit init` → validate and run → (watch: skipped here, it waits
    for changes; tests/test_watch.py runs it under a pseudo-terminal) → `pytest test_pipeline.py` →
    `pipekit ci init github`, each command as written, in a copy of the Flask fixture; images mapped
    with PIPEKIT_IMAGE_MAP, as the page says."""
    image = _python_with_pip(tmp_path, python_base_image, docker_client)
    folder = _project(PROJECTS / "flask-jenkins", tmp_path)
    page = (Path(__file__).parent.parent / "docs" / "getting-started.md").read_text()
    blocks = WALK.findall(page)
    commands = [line for skip, code in blocks if not skip for line in code.splitlines() if line.strip()]
    assert [c.split()[:2] for c in commands] == [
        ["pipekit", "init"],
        ["pipekit", "validate"],
        ["pipekit", "run"],
        ["pytest", "test_pipeline.py"],
        ["pipekit", "ci"],
    ]
    assert [code.split()[:3] for skip, code in blocks if skip] == [["pipekit", "run", "--watch"]]
    maps = f"python:3.12-slim={image},python={image},alpine:3.20={busybox_image}"
    env = {**os.environ, "PIPEKIT_IMAGE_MAP": maps}
    for command in commands:
        words = command.split()
        if words[0] == "pipekit":
            proc = run_console(words[1:], cwd=folder, env=env, timeout=900)
        else:
            argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *words[1:]]
            proc = subprocess.run(argv, cwd=folder, env=console_env(env), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    import yaml

    workflow = yaml.safe_load((folder / ".github" / "workflows" / "pipekit.yml").read_text())
    assert "pipekit run" in str(workflow)

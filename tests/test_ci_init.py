"""`pipekit ci init`: the wrapper each CI reads."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

import pipekit
from pipekit._cli import main
from pipekit._jenkins_parse import Call, parse

PIPELINE = """\
import pipekit as pk

TOKEN = pk.secret("API_TOKEN")

@pk.stage(image="busybox", env={"TOKEN": TOKEN, "PUSH": pk.secret("REGISTRY_PASSWORD")})
def build(ctx):
    ctx.sh("true")
"""


def _init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str, *more: str) -> tuple[int, str, str]:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    code = main(["ci", "init", system, *more], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_github_workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = _init(tmp_path, monkeypatch, "github")
    assert code == 0 and "wrote .github/workflows/pipekit.yml (secrets: API_TOKEN, REGISTRY_PASSWORD)" in out
    workflow = yaml.safe_load((tmp_path / ".github/workflows/pipekit.yml").read_text())
    steps = workflow["jobs"]["pipeline"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert uses[0].startswith("actions/checkout@")
    assert any(u.startswith("actions/cache@") for u in uses)
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == ".pipekit"
    install = next(s for s in steps if s.get("name") == "Install pipekit")
    assert f'"pipekit=={pipekit.__version__}"' in install["run"]
    run = next(s for s in steps if s.get("name") == "Run the pipeline")
    assert "pipekit run -f pipeline.py --junit reports/pipekit.xml" in run["run"]
    assert run["env"] == {
        "API_TOKEN": "${{ secrets.API_TOKEN }}",
        "REGISTRY_PASSWORD": "${{ secrets.REGISTRY_PASSWORD }}",
    }
    published = [s for s in steps if s.get("if") == "always()"]
    assert any("report_paths" in s.get("with", {}) for s in published)
    assert any("reports/pipekit.xml" in s.get("with", {}).get("path", "") for s in published)


def test_gitlab_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, _ = _init(tmp_path, monkeypatch, "gitlab")
    assert code == 0
    job = yaml.safe_load((tmp_path / ".gitlab-ci.yml").read_text())["pipekit"]
    assert job["cache"]["paths"] == [".pipekit/"]
    assert f'python -m pip install "pipekit=={pipekit.__version__}"' in job["before_script"]
    assert "pipekit run -f pipeline.py --junit reports/pipekit.xml" in job["script"]
    assert job["artifacts"]["reports"]["junit"] == "reports/pipekit.xml"
    assert job["artifacts"]["when"] == "always"
    assert "API_TOKEN, REGISTRY_PASSWORD" in (tmp_path / ".gitlab-ci.yml").read_text()


def _calls(node: object) -> list[Call]:
    if not isinstance(node, Call):
        return []
    found = [node]
    for child in node.block or ():
        found += _calls(child)
    for value in node.args:
        found += _calls(value)
    return found


def test_jenkinsfile_is_a_declarative_pipeline_with_the_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, _ = _init(tmp_path, monkeypatch, "jenkins")
    assert code == 0
    tree = parse((tmp_path / "Jenkinsfile").read_text())  # our own Jenkinsfile parser reads it whole
    calls = {c.name: c for c in _calls(tree)}
    assert {"agent", "environment", "stages", "stage", "steps", "sh", "cache", "post", "always"} <= set(calls)
    env = calls["environment"].block or ()
    assert [(a.name, a.value.name, a.value.args) for a in env] == [  # type: ignore[union-attr]
        ("API_TOKEN", "credentials", ("API_TOKEN",)),
        ("REGISTRY_PASSWORD", "credentials", ("REGISTRY_PASSWORD",)),
    ]
    commands = [c.args[0] for c in _calls(tree) if c.name == "sh"]
    assert any(f"pipekit=={pipekit.__version__}" in str(cmd) for cmd in commands)
    assert any("pipekit run -f pipeline.py --junit reports/pipekit.xml" in str(cmd) for cmd in commands)
    assert calls["junit"].kw("testResults") == "reports/pipekit.xml"
    assert "archiveArtifacts" in calls


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".gitlab-ci.yml").write_text("mine: {}\n")
    code, _, err = _init(tmp_path, monkeypatch, "gitlab")
    assert code == 1 and "exists" in err and "--force" in err
    assert (tmp_path / ".gitlab-ci.yml").read_text() == "mine: {}\n"
    code, _, _ = _init(tmp_path, monkeypatch, "gitlab", "--force")
    assert code == 0 and "pipekit" in yaml.safe_load((tmp_path / ".gitlab-ci.yml").read_text())


@pytest.mark.parametrize("system", ["github", "gitlab", "jenkins"])
def test_the_wrappers_in_the_docs_are_what_ci_init_writes(system: str) -> None:
    from pipekit._ci_init import wrapper

    page = (Path(__file__).parent.parent / "docs" / "ci.md").read_text()
    assert wrapper(system, ["API_TOKEN"])[1] in page

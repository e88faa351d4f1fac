"""`pipekit import jenkinsfile`: each Jenkinsfile in tests/jenkinsfiles converted, validated, run."""

from __future__ import annotations

import ast
import io
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._ci.jenkins.convert import convert
from pipekit._ci.jenkins.emit import check_source
from pipekit._ci.jenkins.lex import tokenize
from pipekit._ci.jenkins.parse import Call, GString, ParseError, Raw, parse
from pipekit._cli.main import main
from pipekit._plan.graph import find_errors
from pipekit.testing import FakeBackend, PipelineRunner

FILES = Path(__file__).parent / "jenkinsfiles"
#: Real Jenkinsfiles from public repositories (listed in jenkinsfiles/SOURCES.md) are test data that
#: is not kept in this repository: the corpus lives in ``shared/jenkinsfiles/{corpus,heldout}``
#: beside the checkout (as CI lays it), or in the folder PIPEKIT_JENKINS_CORPUS names.
REAL = Path(os.environ.get("PIPEKIT_JENKINS_CORPUS") or Path(__file__).parent.parent.parent / "shared" / "jenkinsfiles")
needs_corpus = pytest.mark.skipif(
    not (REAL / "corpus").is_dir(),
    reason=f"no corpus of real Jenkinsfiles at {REAL} (see tests/jenkinsfiles/SOURCES.md)",
)
ALL = sorted(FILES.glob("*.Jenkinsfile"))
NEEDS_HANDS = {"11-needs-hands"}
#: what the run of each converted file must leave in the workspace (None: not run on the engine)
RUNS: dict[str, str | None] = {
    "01-hello": "hello.txt",
    "02-sequence": "out/app.txt",
    "03-multiline": "lines.txt",
    "04-params-env": "build/greeting.txt",
    "05-parallel": None,
    "07-post": None,
    "08-credentials": None,
    "09-dir-stash": "sub/where.txt",
}


def _convert(path: Path, folder: Path) -> tuple[Path, Any]:
    result = convert(path.read_text(), path.stem)
    target = folder / "pipeline.py"
    target.write_text(result.text)
    return target, result


def test_there_are_at_least_ten_jenkinsfiles() -> None:
    assert len(ALL) >= 10


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_each_jenkinsfile_converts_to_a_valid_formatted_pipeline(path: Path, tmp_path: Path) -> None:
    target, result = _convert(path, tmp_path)
    assert bool(result.todos) == (path.stem in NEEDS_HANDS), result.todos
    assert find_errors(pk.load(target)) == []
    check = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--line-length", "100", str(target)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for line, _ in result.todos:
        assert f"# TODO(Jenkinsfile:{line}):" in result.text


@pytest.mark.parametrize("name", sorted(n for n, f in RUNS.items()), ids=sorted(RUNS))
def test_converted_pipelines_run_on_the_engine(name: str, tmp_path: Path, run_on_docker: Any) -> None:
    target, _ = _convert(FILES / f"{name}.Jenkinsfile", tmp_path)
    secrets = {"API_TOKEN": "token-for-the-test", "REGISTRY_LOGIN_USR": "me", "REGISTRY_LOGIN_PSW": "pw-for-the-test"}
    result, events = run_on_docker(target, secrets=secrets)
    assert result.status == "succeeded", result.stages
    if RUNS[name]:
        assert (tmp_path / RUNS[name]).is_file()


def test_the_order_of_stages_becomes_needs_and_parallel_stages_share_them(tmp_path: Path) -> None:
    target, _ = _convert(FILES / "05-parallel.Jenkinsfile", tmp_path)
    plan = pk.plan(pk.load(target))
    assert set(plan.upstream("unit")) == set(plan.upstream("lint")) == set(plan.upstream("docs")) == {"prepare"}
    assert set(plan.upstream("report")) == {"unit", "lint", "docs"}


def test_parameters_environment_and_conditions_become_their_pipekit_forms(tmp_path: Path) -> None:
    target, result = _convert(FILES / "04-params-env.Jenkinsfile", tmp_path)
    text = result.text
    assert 'pk.param("GREETING", default="hello", help="what to say")' in text
    assert 'pk.param("LOUD", default=False' in text
    assert 'pk.param("TARGET", default="staging", help="where to deploy (one of: staging, production)")' in text
    assert 'f"mkdir -p ${{OUT_DIR}} && echo {ctx.params.GREETING} ${{APP}} > ${{OUT_DIR}}/greeting.txt"' in text
    _, when = _convert(FILES / "06-when.Jenkinsfile", tmp_path)
    assert 'when=pk.branch("main")' in when.text
    assert 'when=~pk.branch("release/*")' in when.text
    assert 'pk.env("FORCE_DEPLOY", "yes") | pk.branch("main") & pk.param_is("DEPLOY", True)' in when.text
    run = PipelineRunner().run(pk.load(tmp_path / "pipeline.py"), branch="release/1.0")
    assert run.stages["not_a_release"].status == "skipped" and run.stages["main_only"].status == "skipped"
    assert run.stages["build"].status == "succeeded"


def test_docker_build_and_push_in_a_script_block_become_ctx_docker(tmp_path: Path) -> None:
    target, result = _convert(FILES / "10-docker-build.Jenkinsfile", tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    runner = PipelineRunner(backend=FakeBackend())
    run = runner.run(pk.load(target), secrets={"REGISTRY_CREDS_USR": "u", "REGISTRY_CREDS_PSW": "p"})
    assert run.status == "succeeded", run.stages
    assert run.built == [f"myorg/app:{run.run.run_id}"]
    assert run.pushed == [f"registry.example.com/myorg/app:{run.run.run_id}", "registry.example.com/myorg/app:latest"]


def test_what_cannot_be_converted_is_kept_as_a_comment_at_its_line_and_listed(tmp_path: Path) -> None:
    path = FILES / "11-needs-hands.Jenkinsfile"
    out, err = io.StringIO(), io.StringIO()
    code = main(["import", "jenkinsfile", str(path), "-o", str(tmp_path / "pipeline.py")], out=out, err=err)
    assert code == 1
    listed = err.getvalue()
    for line in (3, 4, 11, 12, 18, 20):
        assert f"line {line}: " in listed
    assert "line 9: " not in listed  # the input step: the stage's approval gate
    text = (tmp_path / "pipeline.py").read_text()
    assert 'approval=pk.Approval(message="Deploy?")' in text
    assert "# TODO(Jenkinsfile:18): a Groovy `when { expression }`: write it as a pk condition:" in text
    assert "#     expression { currentBuild.previousBuild == null }" in text
    assert main(["import", "jenkinsfile", str(path), "-o", str(tmp_path / "pipeline.py")], out=out, err=err) == 2
    assert "--force" in err.getvalue()


def test_the_parser_reads_strings_comments_and_nested_blocks() -> None:
    tree = parse(
        "// leading comment\n"
        "pipeline { /* a\n block comment */\n"
        '  stages { stage("It\'s") { steps {\n'
        '    sh "echo \\"quoted\\" ${env.A} $B \'single\'"\n'
        "    sh '''\n      line one\n      it's two\n    '''\n"
        "    weird code here ++\n"
        "  } } }\n"
        "}\n"
    )
    stage = tree.block[0].block[0]  # type: ignore[index,union-attr]
    assert isinstance(stage, Call) and stage.args == ("It's",)
    steps = stage.block[0].block  # type: ignore[index,union-attr]
    first = steps[0].args[0]
    assert isinstance(first, GString)
    assert first.parts == (
        ("text", 'echo "quoted" '),
        ("expr", "env.A"),
        ("text", " "),
        ("expr", "B"),
        ("text", " 'single'"),
    )
    assert steps[1].args[0] == "\n      line one\n      it's two\n    "
    assert isinstance(steps[2], Raw) and steps[2].line == 10
    assert [t.line for t in tokenize("a\n'''x\ny'''\nb") if t.kind == "name"] == [1, 4]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("node { sh 'x' }", "no `pipeline { ... }` block"),
        ("pipeline {\n  stages {\n    stage('a') {\n", "line 4: a block is not closed"),
        ("pipeline { agent any }", "no `stages` block"),
    ],
)
def test_a_jenkinsfile_that_cannot_be_read_is_refused_with_its_line(source: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        convert(source)


def test_the_example_in_the_docs_is_what_the_importer_writes() -> None:
    page = (Path(__file__).parent.parent / "docs" / "from-jenkins.md").read_text()
    groovy = page.split("```groovy\n")[1].split("```")[0]
    python = page.split("becomes\n\n```python\n")[1].split("```")[0]
    written = convert(groovy, "app").text
    assert written.split("\n", 2)[2] == python  # after the docstring and its blank line


# -- real Jenkinsfiles ----------------------------------------------------------------------------
CORPUS = sorted((REAL / "corpus").glob("*.Jenkinsfile"))
#: real Jenkinsfiles that Jenkins itself refuses, with what the importer says of them (exit 2)
REFUSED = {"csbasic__complete-prodcution-e2e-pipeline__Jenkinsfile": "no `stages` block"}


def _leaf_stages(source: str) -> int:
    """How many ``stage(...) { }`` blocks hold no other stage: counted on the tokens (comments
    and strings are not tokens), independently of the importer's parser."""
    tokens = [t for t in tokenize(source) if t.kind != "nl"]
    opens: list[int] = []  # token index of each stage's name
    for i, t in enumerate(tokens[:-1]):
        if t.kind == "name" and t.text == "stage" and tokens[i + 1].text == "(":
            opens.append(i)
    leaves = 0
    for i in opens:
        depth, j = 0, i + 1
        while j < len(tokens) and not (tokens[j].text == "{" and depth == 0):
            depth += {"(": 1, ")": -1}.get(tokens[j].text, 0)
            j += 1
        depth, k, inner = 0, j, False
        while k < len(tokens):
            depth += {"{": 1, "}": -1}.get(tokens[k].text, 0) if tokens[k].kind == "op" else 0
            inner = inner or k in opens
            if depth == 0:
                break
            k += 1
        leaves += not inner
    return leaves


def _import(path: Path, folder: Path) -> tuple[int, str, Path]:
    out, err = io.StringIO(), io.StringIO()
    target = folder / "pipeline.py"
    code = main(["import", "jenkinsfile", str(path), "-o", str(target)], out=out, err=err)
    return code, err.getvalue(), target


def _said(code: int, err: str) -> None:
    """The exit code is what the command printed."""
    if code == 0:
        assert "converted completely" in err and "need converting by hand" not in err, err
    elif code == 1:
        count = int(err.split(" part(s) need converting by hand")[0].rsplit(" ", 1)[1])
        assert count == err.count("\n  line "), err
        assert "converted completely" not in err
    else:
        assert code in (2, 3) and err.startswith("pipekit: "), err


@needs_corpus
def test_the_corpus_holds_forty_real_declarative_jenkinsfiles_with_their_sources() -> None:
    assert len(CORPUS) >= 40
    sources = (FILES / "SOURCES.md").read_text()
    for path in CORPUS:
        assert f"`{path.name}`" in sources
        assert "pipeline" in path.read_text(encoding="utf-8")


@needs_corpus
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem.split("__")[1] + "/" + p.stem.split("__", 2)[2] for p in CORPUS])
def test_each_real_jenkinsfile_imports_to_a_valid_pipeline_with_every_stage(path: Path, tmp_path: Path) -> None:
    code, err, target = _import(path, tmp_path)
    _said(code, err)
    if path.stem in REFUSED:
        assert code == 2 and REFUSED[path.stem] in err
        return
    assert code in (0, 1), err
    text = target.read_text()
    assert check_source(text) is None
    assert find_errors(pk.load(target)) == []
    decorated = text.count("\n@pk.stage")
    in_todos = sum(line.count("stage(") + line.count("stage (") for line in text.splitlines() if "#" in line)
    leaves = _leaf_stages(path.read_text(encoding="utf-8"))
    assert decorated <= leaves <= decorated + in_todos, (decorated, leaves, in_todos)
    for line, _ in [(int(x.split(":")[0]), x) for x in err.split("\n  line ")[1:]]:
        assert f"TODO(Jenkinsfile:{line}):" in text


@needs_corpus
def test_the_corpus_score_and_the_generated_code_is_formatted_and_valid_for_python_3_10(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every result checked by ruff (formatted; no syntax Python 3.10 lacks); the score printed."""
    counts = {0: 0, 1: 0, 2: 0, 3: 0}
    todos = 0
    for path in CORPUS:
        folder = tmp_path / path.stem
        folder.mkdir()
        code, err, _ = _import(path, folder)
        counts[code] += 1
        todos += err.count("\n  line ")
    assert counts[3] == 0 and counts[2] == len(REFUSED)
    ruff = [sys.executable, "-m", "ruff"]
    formatted = subprocess.run(
        [*ruff, "format", "--check", "--isolated", "--line-length", "100", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert formatted.returncode == 0, formatted.stdout
    syntax = subprocess.run(
        [*ruff, "check", "--isolated", "--target-version", "py310", "--select", "E9", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert syntax.returncode == 0, syntax.stdout
    score = (
        f"Jenkinsfile corpus: {len(CORPUS)} files: {counts[0]} complete, {counts[1]} partial,"
        f" {counts[2]} refused (Jenkins refuses them too), {counts[3]} internal errors; {todos} TODOs"
    )
    with capsys.disabled():
        print("\n" + score)


def test_the_console_script_imports_a_real_jenkinsfile_and_checks_its_claim(tmp_path: Path) -> None:
    path = REAL / "corpus" / "apache__karaf__Jenkinsfile.Jenkinsfile"
    if not path.is_file():  # the corpus is not here: one of the project's own, which also needs hands
        path = FILES / "11-needs-hands.Jenkinsfile"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run(
        ["pipekit", "import", "jenkinsfile", str(path), "-o", "pipeline.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    _said(proc.returncode, proc.stderr)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    check = subprocess.run(
        ["pipekit", "validate", "--no-image-check"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


# -- the failures seen on real Jenkinsfiles, each with a minimal one -----------------------------
def _minimal(tmp_path: Path, source: str) -> tuple[int, str, str]:
    jenkinsfile = tmp_path / "Jenkinsfile"
    jenkinsfile.write_text(source, encoding="utf-8")
    code, err, target = _import(jenkinsfile, tmp_path)
    _said(code, err)
    assert code in (0, 1), err
    text = target.read_text(encoding="utf-8")
    assert check_source(text) is None
    assert find_errors(pk.load(target)) == []
    return code, err, text


def _stage(body: str, pre: str = "") -> str:
    head = f"{pre}pipeline {{\n  agent any\n  stages {{\n    stage('a') {{\n      steps {{\n"
    return head + f"{body}\n      }}\n    }}\n  }}\n}}\n"


def test_1_multi_line_tools_triggers_and_libraries_are_one_todo_each_with_their_text(tmp_path: Path) -> None:
    source = (
        "pipeline {\n  agent any\n  tools {\n    maven 'maven-3'\n    jdk 'jdk-17'\n  }\n"
        "  triggers {\n    cron('H 3 * * *')\n    pollSCM('H/5 * * * *')\n  }\n"
        "  libraries {\n    lib('shared@main')\n  }\n"
        "  stages { stage('a') { steps { sh 'make' } } }\n}\n"
    )
    code, err, text = _minimal(tmp_path, source)
    assert code == 1
    assert [line for line in (3, 7, 8, 9, 11) if f"line {line}: " in err] == [3, 8, 9, 11]
    assert "#     tools {\n#       maven 'maven-3'\n#       jdk 'jdk-17'\n#     }" in text
    assert "pk.cron(" in text.split("TODO(Jenkinsfile:8)")[1]  # what to do instead
    assert "#       lib('shared@main')" in text


@pytest.mark.parametrize("expr", ["${env.BRANCH_NAME}", "${BRANCH_NAME}", "$BRANCH_NAME", "${ BRANCH_NAME }"])
def test_2_interpolated_strings_are_valid_python_3_10(tmp_path: Path, expr: str) -> None:
    source = _stage(f'        echo "branch: {expr} \\"q\\" {{}}"\n        error "failed on {expr}"')
    _, err, text = _minimal(tmp_path, source)
    tree = ast.parse(text, feature_version=(3, 10))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "ctx.log.info"]
    assert ast.unparse(calls[0].args[0]) == "'branch: ' + ctx.env.get('BRANCH_NAME', '') + ' \"q\" {}'"
    assert "raise RuntimeError('failed on ' + ctx.env.get('BRANCH_NAME', ''))" in ast.unparse(tree)
    assert "Jenkins sets BRANCH_NAME" in err


def test_2_an_f_string_only_holds_plain_names(tmp_path: Path) -> None:
    _, _, text = _minimal(tmp_path, _stage('        sh "echo ${params.X} ${env.BUILD_NUMBER} {braces}"', ""))
    assert 'ctx.sh(f"echo {ctx.params.X} {ctx.run_id} {{braces}}")' in text


@pytest.mark.parametrize("shebang", ["#!groovy\n", "#!/usr/bin/env groovy\n"])
def test_3_a_shebang_line_is_read(tmp_path: Path, shebang: str) -> None:
    code, _, text = _minimal(tmp_path, _stage("        sh 'make'", shebang))
    assert code == 0 and 'ctx.sh("make")' in text


def test_4_library_field_and_imports_before_the_pipeline_are_todos(tmp_path: Path) -> None:
    pre = "@Library('lib') _\nimport groovy.transform.Field\n@Field def x = 1\n"
    code, err, text = _minimal(tmp_path, _stage("        sh 'make'", pre))
    assert code == 1
    assert "line 1: a shared library" in err and "line 2: a Groovy import" in err and "line 3: " in err
    assert "#     @Library('lib') _" in text and "#     @Field def x = 1" in text


def test_5_slashy_strings_and_regex_operators_are_read(tmp_path: Path) -> None:
    source = _stage(
        "        script {\n          if (env.GIT_BRANCH ==~ /^test.*$/) { echo 'x' }\n"
        "          def m = ('v1.2' =~ $/v(\\d+)/$)\n        }\n        sh 'make'",
        "",
    ).replace(
        "    stage('a') {\n", "    stage('a') {\n      when { expression { env.BRANCH_NAME ==~ /(main|release)/ } }\n"
    )
    code, err, text = _minimal(tmp_path, source)
    assert 'when=pk.branch("main", "release")' in text
    assert "#     if (env.GIT_BRANCH ==~ /^test.*$/) { echo 'x' }" in text
    assert "#     def m = ('v1.2' =~ $/v(\\d+)/$)" in text
    assert tokenize("x = /a\\/b/")[2].value == "a/b"


def test_6_a_space_before_the_stage_parenthesis_keeps_the_stage(tmp_path: Path) -> None:
    source = "pipeline {\n  agent any\n  stages {\n    stage ('build')\n    {\n      steps { sh 'make' }\n    }\n"
    source += "    stage  (  'test' ) { steps { sh 'make test' } }\n  }\n}\n"
    code, _, text = _minimal(tmp_path, source)
    assert code == 0
    assert "def build(ctx):" in text and '@pk.stage(needs=["build"])\ndef test(ctx):' in text


def test_7_the_same_stage_name_in_two_branches_gives_two_functions_and_needs_follow(tmp_path: Path) -> None:
    branch = "        stage('{0}') {{ stages {{\n          stage('Print info') {{ steps {{ sh 'uname -m' }} }}\n"
    branch += "          stage('Build') {{ steps {{ sh 'make {0}' }} }}\n        }} }}\n"
    source = "pipeline {\n  agent any\n  stages {\n    stage('Platforms') { parallel {\n"
    source += (
        branch.format("amd64") + branch.format("arm64") + "    } }\n    stage('Done') { steps { echo 'ok' } }\n  }\n}\n"
    )
    _, _, text = _minimal(tmp_path, source)
    plan = pk.plan(pk.load(tmp_path / "pipeline.py"))
    assert set(plan.upstream("build_arm64")) == {"print_info_arm64"}
    assert set(plan.upstream("build")) == {"print_info"}
    assert set(plan.upstream("done")) == {"build", "build_arm64"}


def test_8_matrix_becomes_pipekits_matrix_with_its_excludes(tmp_path: Path) -> None:
    source = (
        "pipeline {\n  agent none\n  stages {\n    stage('Test') {\n      matrix {\n"
        '        agent { docker { image "python:${PY}" } }\n'
        "        axes {\n          axis { name 'PY'; values '3.11', '3.12' }\n"
        "          axis { name 'DB'; values 'pg', 'sqlite' }\n        }\n"
        "        excludes { exclude { axis { name 'PY'; values '3.11' }\n axis { name 'DB'; notValues 'pg' } } }\n"
        "        stages { stage('Unit') { steps { sh 'pytest --db=$DB' } } }\n      }\n    }\n  }\n}\n"
    )
    code, _, text = _minimal(tmp_path, source)
    assert code == 0, text
    order = pk.plan(pk.load(tmp_path / "pipeline.py")).order
    assert 'image="python:{PY}"' in text
    assert 'matrix={"PY": ["3.11", "3.12"], "DB": ["pg", "sqlite"]}' in text
    assert 'exclude=[{"PY": "3.11", "DB": "sqlite"}]' in text
    assert 'env={"PY": ctx.matrix["PY"], "DB": ctx.matrix["DB"]}' in text
    assert sorted(order) == ["unit[PY=3.11,DB=pg]", "unit[PY=3.12,DB=pg]", "unit[PY=3.12,DB=sqlite]"], order


def test_8_a_parent_when_applies_to_every_stage_inside_it(tmp_path: Path) -> None:
    source = (
        "pipeline {\n  agent any\n  stages {\n    stage('Release') {\n      when { branch 'main' }\n"
        "      parallel {\n        stage('A') { steps { sh 'a' } }\n"
        "        stage('B') { when { environment name: 'X', value: 'y' }\n steps { sh 'b' } }\n      }\n    }\n  }\n}\n"
    )
    _, _, text = _minimal(tmp_path, source)
    assert '@pk.stage(when=pk.branch("main"))\ndef a(ctx):' in text
    assert '@pk.stage(when=pk.branch("main") & pk.env("X", "y"))\ndef b(ctx):' in text
    run = PipelineRunner().run(pk.load(tmp_path / "pipeline.py"), branch="feature")
    assert run.stages["a"].status == run.stages["b"].status == "skipped"


def test_8_what_pipekit_lacks_is_a_todo_that_says_what_to_do_instead(tmp_path: Path) -> None:
    source = (
        "pipeline {\n  agent { kubernetes { yamlFile 'pod.yaml' } }\n  stages {\n"
        "    stage('Build') {\n      tools { maven 'm3' }\n"
        "      steps { script { img = docker.build('org/app') } }\n    }\n"
        "    stage('Push') {\n      input { message 'Ship it?' }\n      steps { script {\n"
        "        docker.withRegistry('', 'hub-creds') { img.push() }\n"
        "        withCredentials([string(credentialsId: \"${env.CRED}\", variable: 'T')]) { sh 'echo' }\n"
        "      } }\n    }\n  }\n}\n"
    )
    code, err, text = _minimal(tmp_path, source)
    assert code == 1
    for line, says in [
        (2, "Kubernetes pod"),
        (5, "image that has these"),
        (11, "not built in this stage"),
        (12, "id is not a plain string"),
    ]:
        assert f"line {line}: " in err and says in err.split(f"line {line}: ")[1].split("\n")[0], (line, err)
    assert "pk.secret(" not in text and "ctx.docker.push" not in text
    assert 'approval=pk.Approval(message="Ship it?")' in text and "line 9: " not in err


def test_8_a_credentials_id_in_a_groovy_string_is_a_todo_not_a_name(tmp_path: Path) -> None:
    source = _stage("        sh 'make'").replace("  agent any\n", "  agent any\n  environment {\n")
    source = source.replace(
        "environment {\n", "environment {\n    TOKEN = credentials(\"${ID}\")\n    OK = credentials('api-key')\n  }\n"
    )
    _, err, text = _minimal(tmp_path, source)
    assert "line 4: credentials() with an id that is not a plain string" in err
    assert 'env={"OK": pk.secret("API_KEY")}' in text


def test_9_a_step_over_several_lines_is_one_todo_and_multi_line_junit_converts(tmp_path: Path) -> None:
    body = (
        "        slackSend channel: '#ci',\n          color: 'good',\n          message: \"done ${env.JOB_NAME}\"\n"
        "        slackSend(\n          channel: '#ci',\n          message: 'x'\n        )\n"
        "        junit(\n          testResults: 'reports/*.xml',\n          allowEmptyResults: true\n        )"
    )
    code, err, text = _minimal(tmp_path, _stage(body))
    assert err.count("\n  line ") == 2
    assert "#     slackSend channel: '#ci',\n    #       color: 'good'," in text
    assert 'ctx.junit("reports/*.xml", fail_on_failure=False)' in text
    assert "    except pk.StageFailed as e:\n        ctx.log.info(str(e))" in text  # allowEmptyResults


# -- valid by construction, and checked ---------------------------------------------------------
def test_any_text_reaches_the_file_only_as_a_literal_that_reads_back_the_same(tmp_path: Path) -> None:
    script = "printf '%s\\n' \"\"\" ''' \\\\ {x} ${HOME} é \u2028 end\"\n  second line"
    escaped = script.replace("\\", "\\\\").replace("'", "\\'")
    source = _stage(f"        sh '''{escaped}'''\n        echo 'a\\rb'\n        weird \u2028 ''' code\x0c\x85 here")
    _, _, text = _minimal(tmp_path, source)
    tree = ast.parse(text)
    sh = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "ctx.sh")
    assert ast.literal_eval(sh.args[0]) == script
    log = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "ctx.log.info")
    assert ast.literal_eval(log.args[0]) == "a\rb"
    assert "#     weird \\u2028 ''' code\\x0c\\x85 here" in text


def test_a_wrong_result_is_the_importers_error_exit_3_and_kept_beside(tmp_path: Path, monkeypatch: Any) -> None:
    import pipekit._ci.jenkins.check as check_module
    from pipekit._ci.jenkins.convert import Converted

    monkeypatch.setattr(check_module, "convert", lambda source, name: Converted("x = f'{a['b']}'\n", ()))
    jenkinsfile = tmp_path / "Jenkinsfile"
    jenkinsfile.write_text(_stage("        sh 'make'"))
    code, err, target = _import(jenkinsfile, tmp_path)
    assert code == 3 and "internal error of the importer" in err and "not valid Python 3.10" in err
    assert not target.exists() and (tmp_path / "pipeline.py.rejected").read_text() == "x = f'{a['b']}'\n"
    monkeypatch.setattr(check_module, "convert", lambda source, name: Converted("import pipekit as pk\n", ()))
    code, err, _ = _import(jenkinsfile, tmp_path)
    assert code == 3 and "does not validate" in err and "defines no stages" in err
    hidden = 'import pipekit as pk\nA = pk.param("a")\nA = pk.param("b")\n\n\n@pk.stage\ndef s(ctx):\n    pass\n'
    monkeypatch.setattr(check_module, "convert", lambda source, name: Converted(hidden, ()))
    code, err, _ = _import(jenkinsfile, tmp_path)
    assert code == 3 and "it loses parts: 1 stages and 2 parameters written, 1 and 1 loaded" in err


@pytest.mark.skipif(not (REAL / "heldout").is_dir(), reason=f"no held-out Jenkinsfiles at {REAL}")
def test_held_out_real_jenkinsfiles_never_give_a_wrong_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Jenkinsfiles kept aside while the importer was written: whatever the command says, its
    result is valid, and its exit code is what it printed."""
    held = sorted((REAL / "heldout").glob("*.Jenkinsfile"))
    assert len(held) >= 10
    counts = {0: 0, 1: 0, 2: 0, 3: 0}
    for path in held:
        folder = tmp_path / path.stem
        folder.mkdir()
        code, err, target = _import(path, folder)
        _said(code, err)
        counts[code] += 1
        if code in (0, 1):
            assert check_source(target.read_text()) is None
            assert find_errors(pk.load(target)) == []
            secrets = {n: "s3cret" for n in re.findall(r'pk\.secret\("(\w+)"\)', target.read_text())}
            run = PipelineRunner(backend=FakeBackend()).run(pk.load(target), secrets=secrets, branch="main")
            assert not [s.error for s in run.stages.values() if " raised " in str(s.error or "")], path.name
    assert counts[3] == 0
    with capsys.disabled():
        print(f"\nheld-out Jenkinsfiles: {len(held)}: {counts[0]} complete, {counts[1]} partial, {counts[2]} refused")


def test_mangled_jenkinsfiles_are_refused_or_converted_to_a_valid_file_never_worse() -> None:
    """Real Jenkinsfiles with random characters put in, cut out and copied over: the importer says
    it cannot read one (ParseError, exit 2) or writes a valid pipeline.py; nothing else."""
    from pipekit._ci.jenkins.check import check

    rng = random.Random(24)
    sources = [p.read_text(encoding="utf-8") for p in CORPUS[::3] or sorted(FILES.glob("*.Jenkinsfile"))]
    pieces = list("{}()[]'\"$/\\\n ;:,=~*#@`\u2028é") + ["${", "$/", "/$", "stage(", '"""', "'''", "//", "/*", "*/"]
    converted = 0
    for _ in range(100):
        source = rng.choice(sources)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(source) + 1)
            j = rng.randrange(len(source) + 1)
            source = rng.choice(
                [
                    source[:i] + rng.choice(pieces) + source[i:],
                    source[:i] + source[i + 20 :],
                    source[:i] + source[j : j + 40] + source[i:],
                ]
            )
        try:
            result = convert(source)
        except ParseError:
            continue
        assert check(result.text) is None, source
        converted += 1
    assert converted > 30  # the rest are refused: a brace or quote cut out leaves a block open


def test_values_known_before_the_run_are_written_out_and_script_values_become_python(tmp_path: Path) -> None:
    pre = "def JDK = 'jdk17'\ndef changing = 'a'\n"
    body = (
        "        script {\n          def v = sh(script: 'git describe', returnStdout: true).trim()\n"
        "          changing = 'b'\n          sh \"build --jdk ${JDK} --version ${v} ${changing}\"\n        }"
    )
    source = _stage(body, pre).replace(
        "  agent any\n", "  agent any\n  environment {\n    A = 'x'\n    B = \"${A}/y\"\n  }\n"
    )
    _, err, text = _minimal(tmp_path, source)
    assert 'env={"A": "x", "B": "x/y"}' in text
    assert 'v = ctx.sh("git describe").stdout.strip()' in text
    assert 'ctx.sh(f"build --jdk jdk17 --version {v} ${{changing}}")' in text
    assert "line 2: Groovy code outside" in err and "`changing` is not set in this pipeline" in err


def test_names_never_clash_with_each_other_or_with_python(tmp_path: Path) -> None:
    source = (
        "pipeline {\n  agent any\n"
        "  parameters { string(name: 'name', defaultValue: 'a'); string(name: 'NAME', defaultValue: 'b') }\n"
        "  stages {\n    stage('pipeline') { steps { sh 'a' } }\n    stage('class') { steps { sh 'b' } }\n"
        "    stage('pk') { steps { echo \"${params.name} ${NAME}\" } }\n  }\n}\n"
    )
    _, _, text = _minimal(tmp_path, source)
    loaded = pk.load(tmp_path / "pipeline.py")
    assert sorted(loaded.params) == ["NAME", "name"]
    assert [s.name for s in loaded.stages] == ["pipeline_2", "class_2", "pk_2"]
    assert 'ctx.log.info(f"{ctx.params.name} {ctx.params.NAME}")' in text


def test_a_file_that_cannot_be_read_or_written_is_said_with_exit_2(tmp_path: Path) -> None:
    jenkinsfile = tmp_path / "Jenkinsfile"
    jenkinsfile.write_bytes(b"pipeline { stages { stage('\xff') { steps { sh 'x' } } } }")
    out, err = io.StringIO(), io.StringIO()
    assert main(["import", "jenkinsfile", str(jenkinsfile)], out=out, err=err) == 2
    assert f"pipekit: cannot read {jenkinsfile}" in err.getvalue()
    jenkinsfile.write_text(_stage("        sh 'make'"))
    target = tmp_path / "no" / "such" / "pipeline.py"
    assert main(["import", "jenkinsfile", str(jenkinsfile), "-o", str(target)], out=out, err=err) == 2
    assert f"pipekit: cannot write {target}: No such file or directory" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_timeout_and_retry_around_all_the_steps_are_the_stages_own(tmp_path: Path) -> None:
    body = "        timeout(time: 5, unit: 'MINUTES') {\n          retry(3) { sh 'make' }\n        }"
    code, _, text = _minimal(tmp_path, _stage(body))
    assert code == 0
    assert '@pk.stage(timeout="5m", retries=2)\ndef a(ctx):' in text
    (tmp_path / "again").mkdir()
    code, err, _ = _minimal(tmp_path / "again", _stage("        timeout(5) { sh 'x' }\n        sh 'y'"))
    assert code == 1 and "`timeout` around these steps" in err


@needs_corpus
def test_every_converted_real_pipeline_runs_on_the_fake_backend_without_a_python_error(tmp_path: Path) -> None:
    """Valid is not enough: the code in the stages must run. On the fake backend (commands do
    nothing, the workspace is empty) a stage may fail for want of a Dockerfile or a JUnit report,
    as on Jenkins, but never because the importer wrote Python that breaks."""
    ran = 0
    for path in CORPUS:
        if path.stem in REFUSED:
            continue
        result = convert(path.read_text(encoding="utf-8"))
        folder = tmp_path / path.stem
        folder.mkdir()
        (folder / "pipeline.py").write_text(result.text)
        secrets = {n: "s3cret" for n in re.findall(r'pk\.secret\("(\w+)"\)', result.text)}
        run = PipelineRunner(backend=FakeBackend()).run(pk.load(folder / "pipeline.py"), secrets=secrets, branch="main")
        for name, stage in run.stages.items():
            problems = [stage.error or "", *(stage.post_errors or ())]
            assert not any(" raised " in str(p) for p in problems), (path.name, name, problems)
        ran += sum(s.status == "succeeded" for s in run.stages.values())
    assert ran > 100


def test_a_parameter_the_jenkinsfile_uses_but_does_not_declare_is_declared_with_a_todo(tmp_path: Path) -> None:
    source = _stage('        sh "deploy ${params.TARGET}"').replace(
        "stage('a') {\n", "stage('a') {\n      when { expression { params.GO } }\n"
    )
    code, err, text = _minimal(tmp_path, source)
    assert code == 1 and "the parameter TARGET is not declared in the Jenkinsfile" in err and "parameter GO" in err
    assert 'TARGET_PARAM = pk.param("TARGET", default="")' in text
    run = PipelineRunner(backend=FakeBackend()).run(pk.load(tmp_path / "pipeline.py"), params={"GO": "true"})
    assert run.stages["a"].status == "succeeded", run.stages["a"].error


# -- input: approval gates --------------------------------------------------------------------------


def test_input_becomes_the_stages_approval_gate_with_its_parameters(tmp_path: Path) -> None:
    target, result = _convert(FILES / "12-input.Jenkinsfile", tmp_path)
    assert result.todos == ()
    compile(result.text, str(target), "exec")  # (and loaded, validated, formatted by the test above)
    text = result.text
    assert 'message="Deploy to production?",\n        approvers=["admin", "devops"],' in text
    assert 'pk.param("VERSION", default="latest", help="the version to deploy")' in text
    assert 'approval=pk.Approval(message="Run the smoke tests?", approvers=["qa"])' in text  # the input step
    pipeline = pk.load(target)
    gate = pipeline.stages[1].approval
    assert (
        gate is not None
        and gate.approvers == ("admin", "devops")
        and [p.name for p in gate.params]
        == [
            "VERSION",
            "DRY_RUN",
        ]
    )

    runner = PipelineRunner()
    waiting = runner.run(pipeline)
    assert waiting.status == "awaiting_approval"
    assert waiting.stages["deployment_production"].status == "awaiting_approval"
    assert waiting.stages["smoke"].status == "skipped" and waiting.commands("build") == ["echo build > built.txt"]

    runner.approve("deployment_production", by="admin", params={"VERSION": "1.4.2", "DRY_RUN": "yes"})
    runner.approve("smoke", by="qa")
    done = runner.run(pipeline)
    assert done.status == "succeeded", done.stages
    deploy = done.calls("deployment_production", "sh")[0]
    assert deploy.text == 'echo "deploying ${VERSION} dry=${DRY_RUN} by ${USER_SUBMIT}" > deployed.txt'
    assert (deploy.env["VERSION"], deploy.env["DRY_RUN"], deploy.env["USER_SUBMIT"]) == ("1.4.2", "true", "admin")
    assert done.commands("smoke") == ["echo smoke > smoke.txt"]


def test_an_input_step_after_other_steps_gates_the_whole_stage_and_says_so(tmp_path: Path) -> None:
    source = _stage("        sh 'make'\n        input 'Ship it?'\n        sh 'ship'")
    code, err, text = _minimal(tmp_path, source)
    assert code == 1
    assert "which now run after the approval" in err
    assert 'approval=pk.Approval(message="Ship it?")' in text
    assert text.index('ctx.sh("make")') < text.index('ctx.sh("ship")')

"""Unit tests of pipeline.py: no Docker engine needed (pipekit's pytest plugin, `pipekit_runner`)."""


def test_package_gets_the_version(pipekit_runner):
    pipekit_runner.respond("echo 1.2.3", stdout="1.2.3\n")
    result = pipekit_runner.run("pipeline.py")
    assert result.status == "succeeded"
    assert result.order[-1] == "package"
    assert result.commands("package") == ["echo packaging 1.2.3 > dist.txt"]


def test_failing_lint_skips_package(pipekit_runner):
    pipekit_runner.respond("echo linting", exit_code=1, stderr="lint: 3 problems")
    result = pipekit_runner.run("pipeline.py")
    assert result.status == "failed" and result.exit_code == 1
    assert result.stages["lint"].status == "failed"
    assert result.stages["package"].status == "skipped"
    assert result.commands("package") == []


def test_only_what_package_needs_runs(pipekit_runner):
    result = pipekit_runner.run("pipeline.py", "version")
    assert list(result.stages) == ["version"]


def test_strict_mode_notices_new_commands(pipekit_runner):
    pipekit_runner.strict = True
    pipekit_runner.respond("echo linting").respond("echo 1.2.3", stdout="1.2.3\n")
    result = pipekit_runner.run("pipeline.py")
    assert result.stages["package"].status == "failed"
    assert "no response is scripted for (strict mode)" in result.stages["package"].error

"""Unit tests of pipeline.py: no Docker engine needed (pipekit's pytest plugin, `pipekit_runner`)."""

SECRETS = {"REGISTRY_USER": "ci", "REGISTRY_PASSWORD": "s3cret"}


def test_main_builds_tests_and_pushes(pipekit_runner):
    result = pipekit_runner.run(
        "pipeline.py", branch="main", params={"registry": "registry.example:5000"}, secrets=SECRETS
    )
    assert result.status == "succeeded" and result.exit_code == 0
    assert result.order == ("build", "test", "smoke", "deploy")
    assert result.built == ["seed-flow:latest"]
    assert result.commands("test") == ["python -m unittest discover -v"]
    assert result.pushed == ["registry.example:5000/seed-flow:latest"]
    assert result.stages["deploy"].output.startswith("registry.example:5000/seed-flow@sha256:")


def test_a_smoke_test_of_the_wrong_files_stops_the_deploy(pipekit_runner):
    pipekit_runner.respond('test "$(python3 -c "import app*', exit_code=1)
    result = pipekit_runner.run("pipeline.py", branch="main", secrets=SECRETS)
    assert result.stages["smoke"].status == "failed"
    assert result.stages["deploy"].status == "skipped"


def test_deploy_skipped_on_feature_branch(pipekit_runner):
    result = pipekit_runner.run("pipeline.py", branch="feature/x")
    assert result.status == "succeeded"
    assert result.stages["deploy"].status == "skipped"
    assert result.stages["deploy"].reason == "condition not met: branch is 'main'"
    assert result.pushed == []


def test_failing_tests_stop_the_deploy(pipekit_runner):
    pipekit_runner.respond("python -m unittest*", exit_code=1, stdout="FAILED (failures=2)")
    result = pipekit_runner.run("pipeline.py", branch="main", secrets=SECRETS)
    assert result.status == "failed" and result.exit_code == 1
    assert result.stages["test"].status == "failed"
    assert "FAILED (failures=2)" in result.stages["test"].error
    assert result.stages["deploy"].status == "skipped"
    assert result.pushed == []


def test_refused_push_fails_deploy(pipekit_runner):
    pipekit_runner.refuse_push("registry.example:5000/*")
    result = pipekit_runner.run(
        "pipeline.py", branch="main", params={"registry": "registry.example:5000"}, secrets=SECRETS
    )
    assert result.exit_code == 1
    assert result.stages["deploy"].status == "failed"
    assert "refused the credentials" in result.stages["deploy"].error
    assert "s3cret" not in result.output


def test_the_whole_run_reads_as_expected(pipekit_runner):
    result = pipekit_runner.run("pipeline.py", branch="main", secrets=SECRETS)
    result.assert_call_tree("main-branch")  # snapshots/main-branch.txt; --pipekit-update-snapshots rewrites it


def test_the_smoke_test_calls_the_app_built_in_this_run(pipekit_runner):
    result = pipekit_runner.run("pipeline.py", branch="feature/x")
    [app] = result.calls("smoke", kind="service")
    assert app.image == result.stages["build"].output.id  # started from this run's image, not a name

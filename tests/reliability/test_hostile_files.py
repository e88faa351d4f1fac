"""Issue 22, items 3, 4 and 11, as an attacker in a container stage would try them: links where
pipekit writes --junit and --report, a file swapped for a link while ctx.archive and ctx.junit read,
routes into .pipekit/ and .git/, and a stale test report. Each runs the installed ``pipekit``
console script (this checkout first on PYTHONPATH) against the real engine, in both workspace modes.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pipekit._dsl.secrets import SecretStore

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]
MODES = ("mount", "copy")
SECRET = "host only: never archived\n"


def _pipekit(folder: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed console script, in the project folder, importing this checkout."""
    exe = shutil.which("pipekit")
    assert exe is not None, "the pipekit console script is not installed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([exe, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def _run(folder: Path, image: str, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    run = ("run", "-f", str(folder), "--workspace", mode, "--image-map", f"busybox={image}")
    return _pipekit(folder, *run, *args, timeout=300)


def _project(tmp_path: Path, pipeline: str, **values: Any) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(pipeline.format(**{k: repr(str(v)) for k, v in values.items()}))
    (folder / "src").mkdir()
    (folder / "src" / "app.py").write_text("print('app')\n")
    return folder


def _stored(folder: Path, content: str) -> bool:
    """Whether the run history holds an artifact with this content."""
    digest = hashlib.sha256(content.encode()).hexdigest()
    return (folder / ".pipekit" / "artifacts" / digest).exists()


PLANT_AT_OUTPUTS = """
import pipekit as pk

@pk.stage(image="busybox")
def plant(ctx):
    ctx.sh("mkdir -p reports && ln -s ../src/app.py reports/pipekit.xml && ln -s " + {victim} + " report.html")
"""


@pytest.mark.parametrize("mode", MODES)
def test_junit_and_report_replace_a_planted_link_and_never_write_through_it(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    """`--junit reports/pipekit.xml` (as `pipekit ci init` writes it) and `--report`, where the
    stage left links to a file of the project and to a file outside it."""
    from junitparser import JUnitXml

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = _project(tmp_path, PLANT_AT_OUTPUTS, victim=victim)
    proc = _run(folder, busybox_image, mode, "--junit", "reports/pipekit.xml", "--report", "report.html")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert victim.read_text() == "precious\n"
    assert (folder / "src" / "app.py").read_text() == "print('app')\n"
    junit = folder / "reports" / "pipekit.xml"
    assert not junit.is_symlink()
    cases = [case.name for suite in JUnitXml.fromfile(str(junit)) for case in suite]
    assert any("plant" in name for name in cases), cases
    page = folder / "report.html"
    assert not page.is_symlink()
    tags: list[str] = []
    parser = html.parser.HTMLParser()
    parser.handle_starttag = lambda tag, attrs: tags.append(tag)  # type: ignore[method-assign]
    parser.feed(page.read_text())
    assert "html" in tags and "script" in tags


PLANT_FOLDERS = """
import pipekit as pk

@pk.stage(image="busybox")
def plant(ctx):
    ctx.sh("ln -s src reports && ln -s " + {outside} + " out")
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_folder_on_the_way_to_the_junit_file_or_report_that_is_a_link_is_refused(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = _project(tmp_path, PLANT_FOLDERS, outside=outside)
    proc = _run(folder, busybox_image, mode, "--report", "out/report.html", "--junit", "reports/pipekit.xml")
    assert list(outside.iterdir()) == []
    assert not (folder / "src" / "pipekit.xml").exists()
    if (folder / "reports").is_symlink():  # brought back (mount mode: it was made there)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Cannot write the JUnit file reports/pipekit.xml: reports (on the way to" in proc.stderr
        assert "is a link inside the workspace" in proc.stderr
    if (folder / "out").is_symlink():
        assert "the report was not written to out/report.html" in proc.stdout + proc.stderr


RACE = """
import json
import pipekit as pk

SECRET, SECRET_JUNIT, RESULT = {secret}, {secret_junit}, {result}
ROUNDS = int({rounds})
GOOD = "<testsuite><testcase classname='t' name='fine'/></testsuite>"


@pk.stage(image="busybox")
def race(ctx):
    ctx.sh("mkdir -p dist real reports && echo harmless > real/app.whl && cp real/app.whl dist/app.whl")
    ctx.sh(f"echo \\"{{GOOD}}\\" > real/junit.xml && cp real/junit.xml reports/junit.xml")
    # a background process that swaps each file and a link to a host file, atomically (rename)
    ctx.sh(
        "(while :; do ln -s " + SECRET + " a.tmp; mv -f a.tmp dist/app.whl;"
        " ln -s " + SECRET_JUNIT + " j.tmp; mv -f j.tmp reports/junit.xml;"
        " cp real/app.whl b.tmp; mv -f b.tmp dist/app.whl; cp real/junit.xml k.tmp; mv -f k.tmp reports/junit.xml;"
        " done) >/dev/null 2>&1 &"
    )
    seen = {{"archived": 0, "refused": 0, "leaked_tests": 0, "tests_read": 0}}
    for _ in range(ROUNDS):
        try:
            seen["archived"] += len(ctx.archive("dist/app.whl"))
        except pk.StageFailed:
            seen["refused"] += 1
        try:
            report = ctx.junit("reports/junit.xml", fail_on_failure=False)
        except pk.StageFailed:
            continue
        seen["tests_read"] += 1
        seen["leaked_tests"] += report.failures
    with open(RESULT, "w") as f:
        json.dump(seen, f)
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_file_swapped_for_a_link_while_archive_and_junit_read_never_yields_the_host_file(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    """The reported attack: a background process in the container swaps a file and a link to a
    host file while ctx.archive and ctx.junit read it; the host file was archived."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    secret_junit = tmp_path / "host-secret.xml"
    secret_junit.write_text(
        "<testsuite><testcase classname='host' name='secret'><failure message='host file read'/></testcase></testsuite>"
    )
    result = tmp_path / "result.json"
    rounds = 250 if mode == "mount" else 25
    folder = _project(tmp_path, RACE, secret=secret, secret_junit=secret_junit, result=result, rounds=rounds)
    proc = _run(folder, busybox_image, mode)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(result.read_text())
    assert seen["leaked_tests"] == 0, seen
    assert not _stored(folder, SECRET), seen
    assert seen["archived"] > 0 and seen["tests_read"] > 0, seen  # the race was run, not refused wholesale
    if mode == "mount":
        assert seen["refused"] > 0, seen  # the link was met, and refused


PLANTED_LINKS = """
import json
import pipekit as pk

RESULT = {result}


def attempt(ctx, patterns, reader):
    results = {{}}
    for pattern in patterns:
        try:
            results[pattern] = ["read", reader(pattern)]
        except pk.StageFailed as e:
            results[pattern] = ["refused", str(e)]
    return results


@pk.stage(image="busybox")
def plant(ctx):
    ctx.sh("mkdir -p dist && ln -s " + {secret} + " dist/app.whl && ln -s " + {secret_dir} + " out")
    ctx.sh("ln -s " + {secret_junit} + " junit.xml && ln -s .pipekit x && ln -s . d && ln -s .git g")
    results = attempt(ctx, ["dist/app.whl", "dist/*", "out/host-secret.txt", "out"], ctx.archive)
    private = [".pipekit/pipekit.db", "x/pipekit.db", "d/.pipekit/pipekit.db", "x", ".git/config", "g/config",
               "d/.git/HEAD", ".PIPEKIT/pipekit.db", "/workspace/.pipekit/pipekit.db", "/workspace/.git/config"]
    results.update(attempt(ctx, private, ctx.archive))
    results.update(attempt(ctx, ["junit.xml"], lambda p: ctx.junit(p, fail_on_failure=False).tests))
    with open(RESULT, "w") as f:
        json.dump(results, f)
"""


@pytest.mark.parametrize("mode", MODES)
def test_links_out_of_the_workspace_and_into_pipekits_state_are_refused(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    """Links in place before the call (a file, a parent folder), and every route into .pipekit/
    and .git/: nothing is archived, and where pipekit meets the link it says why."""
    secret_dir = tmp_path / "host-dir"
    secret_dir.mkdir()
    secret = secret_dir / "host-secret.txt"
    secret.write_text(SECRET)
    secret_junit = tmp_path / "host-secret.xml"
    secret_junit.write_text("<testsuite><testcase classname='host' name='secret'/></testsuite>")
    result = tmp_path / "result.json"
    folder = _project(
        tmp_path, PLANTED_LINKS, secret=secret, secret_dir=secret_dir, secret_junit=secret_junit, result=result
    )
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / ".git" / "config").write_text((folder / ".git" / "config").read_text() + "# git's own\n")
    proc = _run(folder, busybox_image, mode)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(result.read_text())
    read = {pattern: value for pattern, (how, value) in results.items() if how == "read"}
    assert all(value in ([], 0) for value in read.values()), read  # nothing taken (copy mode: not brought back)
    assert not _stored(folder, SECRET)
    artifacts = folder / ".pipekit" / "artifacts"
    assert not artifacts.exists() or not any(artifacts.iterdir())
    for pattern in (".pipekit/pipekit.db", ".PIPEKIT/pipekit.db", "/workspace/.pipekit/pipekit.db"):
        assert results[pattern][0] == "refused" and "pipekit never hands to a stage" in results[pattern][1], pattern
    for pattern in (".git/config", "/workspace/.git/config"):
        assert results[pattern][0] == "refused" and ".git" in results[pattern][1], pattern
    if mode == "mount":  # the links are where pipekit reads: each one is refused, saying why
        for pattern in ("dist/app.whl", "dist/*", "out/host-secret.txt", "out", "junit.xml"):
            assert results[pattern][0] == "refused" and "outside the workspace" in results[pattern][1], pattern
        for pattern in ("x/pipekit.db", "d/.pipekit/pipekit.db", "x"):
            assert results[pattern][0] == "refused" and "under .pipekit/" in results[pattern][1], pattern
        for pattern in ("g/config", "d/.git/HEAD"):
            assert results[pattern][0] == "refused" and "under .git/" in results[pattern][1], pattern


STALE = """
import pipekit as pk

@pk.stage(image="busybox")
def test(ctx):
    ctx.sh({command}, check=False)
    return ctx.junit("reports/junit.xml").summary()
"""
FOUR_PASSED = "<testsuite>" + "".join(f"<testcase classname='t' name='ok{i}'/>" for i in range(4)) + "</testsuite>"


@pytest.mark.parametrize("mode", MODES)
def test_a_stale_report_does_not_turn_a_broken_test_command_green(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    """The reported case: the previous run's report in the folder, a typo in the test command with
    check=False. The run fails, says the report is stale and when it was written."""
    write = f'mkdir -p reports && echo "{FOUR_PASSED}" > reports/junit.xml'
    folder = _project(tmp_path, STALE, command=write)
    first = _run(folder, busybox_image, mode)
    assert first.returncode == 0 and "4 tests: 4 passed" in first.stdout, first.stdout + first.stderr
    earlier = time.time() - 3600  # the earlier run was an hour ago
    os.utime(folder / "reports" / "junit.xml", (earlier, earlier))
    (folder / "pipeline.py").write_text(STALE.format(command=repr("pytset --junitxml=reports/junit.xml")))
    second = _run(folder, busybox_image, mode)
    output = second.stdout + second.stderr
    assert second.returncode == 1, output
    assert "the report reports/junit.xml is stale" in output
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(earlier)) in output
    assert "4 passed" not in output


FETCH_TRAP = """
import pipekit as pk

@pk.stage(image="busybox")
def trap(ctx):
    ctx.sh("echo evil > app.py")
    ctx.archive("app.py")
    ctx.sh(f"ln -s src artifacts-{{ctx.run_id}}")
"""


@pytest.mark.parametrize("mode", MODES)
def test_pipekit_artifacts_does_not_write_through_a_link_planted_at_its_destination(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    """A stage knows its run id, so it can plant a link where `pipekit artifacts RUN` writes
    (artifacts-RUN/ in the project folder by default): `artifacts-RUN -> src` made the fetched
    app.py overwrite the project's src/app.py."""
    folder = _project(tmp_path, FETCH_TRAP)
    assert _run(folder, busybox_image, mode).returncode == 0
    fetch = _pipekit(folder, "artifacts", "last")
    assert (folder / "src" / "app.py").read_text() == "print('app')\n"
    if any(p.is_symlink() for p in folder.glob("artifacts-*")):  # brought back (mount mode: made there)
        assert fetch.returncode == 2, fetch.stdout + fetch.stderr
        assert "is a link inside the workspace" in fetch.stderr
    else:
        assert fetch.returncode == 0 and [p.read_text() for p in folder.glob("artifacts-*/app.py")] == ["evil\n"]


CI_TRAP = """
import pipekit as pk

@pk.stage(image="busybox")
def trap(ctx):
    ctx.sh("mkdir -p .github/workflows && ln -s " + {victim} + " .github/workflows/pipekit.yml")
"""


@pytest.mark.parametrize("mode", MODES)
def test_ci_init_force_replaces_a_planted_link_instead_of_writing_through_it(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    import yaml

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = _project(tmp_path, CI_TRAP, victim=victim)
    assert _run(folder, busybox_image, mode).returncode == 0
    init = _pipekit(folder, "ci", "init", "github", "--force")
    assert init.returncode == 0, init.stdout + init.stderr
    assert victim.read_text() == "precious\n"
    workflow = folder / ".github" / "workflows" / "pipekit.yml"
    assert not workflow.is_symlink()
    assert "jobs" in yaml.safe_load(workflow.read_text())


CI_FOLDER_TRAP = """
import pipekit as pk

@pk.stage(image="busybox")
def trap(ctx):
    ctx.sh("mkdir -p .github && ln -s ../src .github/workflows")
"""


@pytest.mark.parametrize("mode", MODES)
def test_ci_init_refuses_a_folder_link_on_the_way(tmp_path: Path, busybox_image: str, mode: str) -> None:
    folder = _project(tmp_path, CI_FOLDER_TRAP)
    assert _run(folder, busybox_image, mode).returncode == 0
    init = _pipekit(folder, "ci", "init", "github")
    assert not (folder / "src" / "pipekit.yml").exists()
    if (folder / ".github" / "workflows").is_symlink():  # brought back (mount mode: made there)
        assert init.returncode == 2, init.stdout + init.stderr
        assert "workflows (on the way to" in init.stderr and "is a link inside the workspace" in init.stderr
    else:
        assert init.returncode == 0 and (folder / ".github" / "workflows" / "pipekit.yml").is_file()


SECRETS_TRAP = """
import json
import pipekit as pk

RESULT = {result}


@pk.stage(image="busybox")
def trap(ctx):
    ctx.sh("mkdir -p dist && echo wheel > dist/app.whl && ln -s ../.env.ci dist/env")
    results = {{}}
    for pattern in (".env.ci", "dist/env", "dist/*"):
        try:
            results[pattern] = ["read", ctx.archive(pattern)]
        except pk.StageFailed as e:
            results[pattern] = ["refused", str(e)]
    with open(RESULT, "w") as f:
        json.dump(results, f)
"""


@pytest.mark.skipif(not hasattr(SecretStore(), "files"), reason="needs SecretStore.files (issue 22 item 6)")
@pytest.mark.parametrize("mode", MODES)
def test_the_secrets_file_is_never_archived_whatever_route(tmp_path: Path, busybox_image: str, mode: str) -> None:
    """`--secrets-file .env.ci` in the project folder: ctx.archive refuses it, and a link a stage
    made to it (covered in containers, the link still resolves on this machine)."""
    result = tmp_path / "result.json"
    folder = _project(tmp_path, SECRETS_TRAP, result=result)
    secrets = "API_TOKEN=s3cr3t-token-value\n"
    (folder / ".env.ci").write_text(secrets)
    proc = _run(folder, busybox_image, mode, "--secrets-file", ".env.ci")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(result.read_text())
    assert not _stored(folder, secrets)
    assert results[".env.ci"][0] == "refused" and "is the secrets file" in results[".env.ci"][1]
    if (folder / "dist" / "env").is_symlink():  # brought back (mount mode: made there)
        for pattern in ("dist/env", "dist/*"):
            assert results[pattern][0] == "refused" and "is the secrets file" in results[pattern][1], results
    else:
        assert results["dist/env"] == ["read", []] and results["dist/*"] == ["read", ["dist/app.whl"]], results


CACHE_TRAP = """
import pipekit as pk

@pk.stage(image="busybox")
def plant(ctx):
    ctx.sh("mkdir -p src && echo code > src/app.txt && mkfifo src/pipe && ln -s " + {victim} + " src/link")


@pk.stage(image="busybox", cache=pk.inputs("src/**"))
def build(ctx, plant):
    ctx.sh("cat src/app.txt")
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_fifo_or_a_link_out_among_a_cached_stages_input_files_neither_hangs_nor_reads_the_host(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    """`pk.inputs("src/**")` hashes the files a stage before it could plant: a FIFO used to block the
    run forever, a link out made the host file part of the key."""
    victim = tmp_path / "victim.txt"
    victim.write_text("host file\n")
    folder = _project(tmp_path, CACHE_TRAP, victim=victim)
    started = time.monotonic()
    proc = _run(folder, busybox_image, mode, "--log-format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 120
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    reasons = [e.get("reason", "") for e in events if e.get("event") == "stage not cached"]
    if (folder / "src" / "link").is_symlink():  # mount mode: the link is where the key is made
        assert any("src/link is a link to" in r and "outside the workspace" in r for r in reasons), reasons

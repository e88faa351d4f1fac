"""`run --keep-failed`, `pipekit shell`, and what `runs` and `cleanup` say about kept containers."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Terminal, run_console

from pipekit._cli.main import main

PIPELINE = """\
import pipekit as pk


@pk.stage(image={image!r})
def ok(ctx):
    ctx.sh("echo fine")


@pk.stage(image={image!r})
def broken(ctx, ok):
    ctx.sh("echo evidence > /what-happened.txt; mkdir -p out && echo made > out/file.txt; exit 4")
"""


def _containers(docker_client: Any, run_id: str) -> list[Any]:
    return docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"})


def test_a_failed_stage_is_kept_entered_listed_and_cleaned_up(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    (tmp_path / "pipeline.py").write_text(PIPELINE.format(image=busybox_image))
    out = io.StringIO()
    assert main(["run", "-f", str(tmp_path), "--keep-failed", "--progress", "plain"], out=out) == 1
    text = out.getvalue()
    run_id = text.rsplit("run ", 1)[1].split()[0]
    assert f"enter=pipekit shell {run_id} broken" in text
    left = _containers(docker_client, run_id)
    assert len(left) == 1 and left[0].labels["io.pipekit.stage"] == "broken"  # only the failed stage's
    assert left[0].name.startswith(f"pipekit-{run_id}-broken") and left[0].name.endswith("-kept")
    try:
        shell = io.StringIO()
        script = ["sh", "-c", "cat /what-happened.txt; ls out"]
        code = main(["shell", run_id, "broken", "-f", str(tmp_path), "--", *script], out=shell)
        assert code == 0 and shell.getvalue() == "evidence\nfile.txt\n"
        assert (
            main(["shell", run_id, "ok", "-f", str(tmp_path), "--", "true"], out=io.StringIO(), err=io.StringIO()) == 2
        )
        runs = io.StringIO()
        assert main(["runs", "-f", str(tmp_path)], out=runs) == 0
        header, row = runs.getvalue().splitlines()[:2]
        assert header.split()[-1] == "KEPT" and row.startswith(run_id) and row.split()[-1] == "broken"
        # another run (and its sweep of lost runs) leaves the kept container alone
        assert main(["run", "-f", str(tmp_path), "ok", "--progress", "plain"], out=io.StringIO()) == 0
        assert len(_containers(docker_client, run_id)) == 1
    finally:
        cleaned = io.StringIO()
        assert main(["cleanup", run_id, "-f", str(tmp_path)], out=cleaned) == 0
    assert "removed the 1 container(s) kept for `pipekit shell`" in cleaned.getvalue()
    assert _containers(docker_client, run_id) == []


def test_without_the_flag_a_failed_stage_leaves_nothing(tmp_path: Path, busybox_image: str, docker_client: Any) -> None:
    (tmp_path / "pipeline.py").write_text(PIPELINE.format(image=busybox_image))
    out = io.StringIO()
    assert main(["run", "-f", str(tmp_path), "--progress", "plain"], out=out) == 1
    run_id = out.getvalue().rsplit("run ", 1)[1].split()[0]
    assert _containers(docker_client, run_id) == []
    assert "stage kept" not in out.getvalue()


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory, busybox_image: str, docker_client: Any) -> Iterator[tuple[str, str]]:
    """A run of the `pipekit` command whose stage 'broken' failed and was kept: (folder, run id)."""
    folder = tmp_path_factory.mktemp("kept")
    (folder / "pipeline.py").write_text(PIPELINE.format(image=busybox_image))
    ran = run_console(["run", "-f", str(folder), "--keep-failed", "--progress", "plain"])
    assert ran.returncode == 1, ran.stdout + ran.stderr
    run_id = ran.stdout.rsplit("run ", 1)[1].split()[0]
    assert len(_containers(docker_client, run_id)) == 1
    try:
        yield str(folder), run_id
    finally:
        cleaned = run_console(["cleanup", run_id, "-f", str(folder)])
        assert cleaned.returncode == 0 and "removed the 1 container(s) kept" in cleaned.stdout, cleaned.stderr
        assert _containers(docker_client, run_id) == []


def test_shell_on_a_terminal_is_a_shell_you_type_in(kept: tuple[str, str]) -> None:
    """What a user does: `pipekit shell RUN STAGE` from a terminal, commands typed, output read."""
    folder, run_id = kept
    term = Terminal(["shell", run_id, "broken", "-f", folder])
    try:
        term.expect(f"a shell in stage 'broken' of run {run_id}")
        term.send("cat /what-happened.txt\r")
        term.expect("evidence")
        term.send("echo $((6*7*1001)); ls out\r")  # the typed line echoes; its output does not repeat it
        term.expect("42042")
        term.expect("file.txt")
        term.send("ls /no-such-place\r")  # what goes to stderr reaches the terminal too
        term.expect("No such file or directory")
        term.send("sleep 30\r")
        time.sleep(0.5)
        term.send("\x03")  # Ctrl-C stops what runs in the shell, not the shell or pipekit
        term.send("echo after-$((1+1))\r")
        term.expect("after-2", timeout=20)
        term.send("exit 3\r")
        assert term.wait() == 3
    finally:
        term.close()


def test_shell_on_a_terminal_runs_a_command_with_its_arguments_as_given(kept: tuple[str, str]) -> None:
    folder, run_id = kept
    term = Terminal(["shell", run_id, "broken", "-f", folder, "--", "sh", "-c", 'echo "a  b"; tty'])
    try:
        term.expect("a  b")  # quoting kept: two spaces, one argument of echo
        term.expect("/dev/pts/")  # the command has a terminal, as with docker exec -it
        assert term.wait() == 0
    finally:
        term.close()


def test_shell_from_a_script_keeps_the_quoting_and_the_exit_code(kept: tuple[str, str]) -> None:
    folder, run_id = kept
    shell = ["shell", run_id, "broken", "-f", folder, "--"]
    quoted = run_console([*shell, "sh", "-c", 'echo "a b"'])
    assert (quoted.returncode, quoted.stdout) == (0, "a b\n")
    listed = run_console([*shell, "printf", "%s|", "one two", "it's", "$HOME"])
    assert (listed.returncode, listed.stdout) == (0, "one two|it's|$HOME|")
    failed = run_console([*shell, "sh", "-c", "echo to-stderr >&2; exit 5"])
    assert (failed.returncode, failed.stderr) == (5, "to-stderr\n")
    piped = run_console(["shell", run_id, "broken", "-f", folder], input="echo piped-$((1+1))\n")
    assert piped.returncode == 0 and piped.stdout == "piped-2\n"


def test_shell_says_what_is_wrong(kept: tuple[str, str]) -> None:
    folder, run_id = kept
    missing = run_console(["shell", run_id, "broken", "-f", folder, "--", "no-such-tool", "x"])
    assert missing.returncode == 127
    assert missing.stderr == f"pipekit: no command 'no-such-tool' in the container of stage 'broken' (run {run_id})\n"
    builtin = run_console(["shell", run_id, "broken", "-f", folder, "--", "cd", "/"])
    assert builtin.returncode == 127 and "a shell builtin: run it with sh -c" in builtin.stderr
    other = run_console(["shell", run_id, "ok", "-f", folder])
    assert other.returncode == 2 and "kept no container of stage 'ok'" in other.stderr
    assert "Traceback" not in missing.stderr + builtin.stderr + other.stderr


def test_shell_typed_on_a_terminal_with_its_output_to_a_file(kept: tuple[str, str], tmp_path: Path) -> None:
    """`pipekit shell RUN STAGE -- CMD > file` typed at a terminal: the file gets the command's
    output as it is (no terminal line ends, no stderr mixed in)."""
    import os
    import pty
    import subprocess

    from helpers import console_env, console_script

    folder, run_id = kept
    _master, slave = pty.openpty()
    try:
        with open(tmp_path / "out.txt", "w") as target:
            command = ["sh", "-c", "echo 'a  b'; echo to-stderr >&2"]
            proc = subprocess.run(
                [console_script(), "shell", run_id, "broken", "-f", folder, "--", *command],
                stdin=slave,
                stdout=target,
                stderr=subprocess.PIPE,
                env=console_env(),
                timeout=60,
            )
    finally:
        os.close(slave)
        os.close(_master)
    assert proc.returncode == 0 and proc.stderr == b"to-stderr\n"
    assert (tmp_path / "out.txt").read_bytes() == b"a  b\n"

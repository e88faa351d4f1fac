"""The Docker backend runs a stage's commands through its container's own shell (no exec per
command), against a real engine: the output, exit codes, environment and quoting must be exactly
what an exec gives."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import exec_events

import pipekit as pk

pytestmark = pytest.mark.docker


def _execs_during(docker_client: Any, work: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``work()`` and return its result and the engine's exec events of its run meanwhile
    (another test's run may use the engine at the same time: the suite runs in two workers)."""
    since = time.time() - 0.01
    result = work()
    run_id = result[0].run_id
    mine = [e for e in exec_events(docker_client, since) if e["Actor"]["Attributes"].get("io.pipekit.run") == run_id]
    return result, mine


def test_commands_run_in_the_containers_own_shell_without_an_exec(run_on_docker: Any, docker_client: Any) -> None:
    p = pk.Pipeline(name="no-exec", image="busybox")

    @p.stage
    def many(ctx):
        return [ctx.sh(f"echo {i}").stdout for i in range(5)]

    (result, _), execs = _execs_during(docker_client, lambda: run_on_docker(p))
    assert result.status == "succeeded", result.stages
    assert result.stages["many"].output == [f"{i}\n" for i in range(5)]
    assert execs == []


def test_output_exit_codes_and_streams_are_those_of_each_command(run_on_docker: Any) -> None:
    p = pk.Pipeline(name="streams", image="busybox")

    @p.stage
    def probe(ctx):
        results = [
            ctx.sh("printf 'no newline'; printf 'err, no newline' >&2", check=False),
            ctx.sh("echo out; echo err >&2; exit 3", check=False),
            ctx.sh("printf '\\036 looks like a mark\\n\\036'; printf '\\036' >&2", check=False),
            ctx.sh("exit 0"),
            ctx.sh("cat; echo 'stdin was empty'"),
            ctx.sh("kill -9 $$", check=False),
        ]
        return [(r.exit_code, r.stdout, r.stderr) for r in results]

    result, _ = run_on_docker(p)
    assert result.stages["probe"].output == [
        (0, "no newline", "err, no newline"),
        (3, "out\n", "err\n"),
        (0, "\x1e looks like a mark\n\x1e", "\x1e"),
        (0, "", ""),
        (0, "stdin was empty\n", ""),
        (137, "", ""),
    ]


def test_environment_and_script_text_arrive_exactly(run_on_docker: Any) -> None:
    tricky = "it's \"quoted\" $HOME `date` \\ back\nslash\n'"
    p = pk.Pipeline(name="quoting", image="busybox", env={"FROM_PIPELINE": "p"})

    @p.stage(workdir="sub")
    def probe(ctx):
        ctx.sh("true")  # the workdir exists
        env = ctx.sh('printf "%s|%s|%s" "$TRICKY" "$FROM_PIPELINE" "$(pwd)"', env={"TRICKY": tricky}).stdout
        text = ctx.sh("cat <<'EOF'\n" + tricky + "\nEOF").stdout
        unset = ctx.sh('echo "${TRICKY-unset} ${PIPEKIT_SCRIPT-unset}"').stdout
        return env, text, unset

    result, _ = run_on_docker(p)
    assert result.status == "succeeded", result.stages
    assert result.stages["probe"].output == (f"{tricky}|p|/workspace/sub", tricky + "\n", "unset unset\n")


def test_a_name_the_shell_cannot_export_goes_through_exec(run_on_docker: Any, docker_client: Any) -> None:
    p = pk.Pipeline(name="odd-name", image="busybox")

    @p.stage
    def probe(ctx):
        # (a shell does not pass such a name on to its children: read its own environment)
        return ctx.sh("tr '\\0' '\\n' </proc/$$/environ | grep '^odd-name='", env={"odd-name": "x"}).stdout

    (result, _), execs = _execs_during(docker_client, lambda: run_on_docker(p))
    assert result.stages["probe"].output == "odd-name=x\n"
    assert len(execs) == 1


def test_a_background_process_neither_holds_the_command_nor_mixes_into_the_next(run_on_docker: Any) -> None:
    p = pk.Pipeline(name="background", image="busybox")

    @p.stage
    def probe(ctx):
        started = time.monotonic()
        ctx.sh("(sleep 0.5; echo late) & sleep 30 >/dev/null &")
        took = time.monotonic() - started
        first = ctx.sh("sleep 1; echo next").stdout
        return took, first, ctx.sh("echo last").stdout

    result, _ = run_on_docker(p)
    took, first, last = result.stages["probe"].output
    assert took < 5
    assert first in ("next\n", "late\nnext\n")  # printed while `next` ran: it is that command's output
    assert last == "last\n"


def test_commands_from_threads_of_one_stage_all_complete(run_on_docker: Any) -> None:
    p = pk.Pipeline(name="threads", image="busybox")

    @p.stage
    def probe(ctx):
        out: dict[int, str] = {}

        def one(i: int) -> None:
            out[i] = ctx.sh(f"sleep 0.{i}; echo {i}").stdout

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [out[i] for i in range(4)]

    result, _ = run_on_docker(p)
    assert result.stages["probe"].output == [f"{i}\n" for i in range(4)]


def test_a_large_output_with_marks_split_across_frames(run_on_docker: Any) -> None:
    p = pk.Pipeline(name="large", image="busybox")

    @p.stage
    def probe(ctx):
        r = ctx.sh("i=0; while [ $i -lt 3000 ]; do echo line $i; echo e$i >&2; i=$((i+1)); done")
        return (
            len(r.stdout.splitlines()),
            r.stdout.splitlines()[-1],
            len(r.stderr.splitlines()),
            ctx.sh("echo ok").stdout,
        )

    result, _ = run_on_docker(p)
    assert result.stages["probe"].output == (3000, "line 2999", 3000, "ok\n")

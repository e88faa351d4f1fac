"""Threat model: one stage cannot take the machine: processes and memory are limited, and a stage
the kernel kills for memory says so."""

from __future__ import annotations

from typing import Any

import pytest

import pipekit as pk

pytestmark = pytest.mark.docker


def test_every_container_has_a_process_limit_and_resources_set_more(run_on_docker: Any) -> None:
    """A default pids limit of 4096; pk.Resources sets memory, CPUs and processes (stage or pipeline)."""
    p = pk.Pipeline(name="limits", image="busybox", resources=pk.Resources(memory="64m"))

    @p.stage
    def default(ctx):
        return ctx.sh("cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes").stdout.split()

    @p.stage(resources=pk.Resources(cpus=0.5, memory="32m", pids=64))
    def limited(ctx):
        out = ctx.sh("cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes").stdout.split()
        return [*out, ctx.sh("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us").stdout.strip()]

    result, _ = run_on_docker(p)
    assert result.status == "succeeded", result.stages
    assert result["default"].output == ["4096", str(64 << 20)]
    assert result["limited"].output == ["64", str(32 << 20), "50000"]


def test_a_stage_killed_for_memory_says_so(run_on_docker: Any) -> None:
    """Over its memory limit a command is killed, and the stage's error says out of memory and the limit."""
    p = pk.Pipeline(name="oom", image="busybox")

    @p.stage(resources=pk.Resources(memory="16m"))
    def hog(ctx):
        ctx.sh('x=a; while true; do x="$x$x"; done')

    result, _ = run_on_docker(p)
    assert result["hog"].status == "failed"
    assert "killed: out of memory (limit 16m)" in (result["hog"].error or "")


def test_resources_are_checked_when_the_stage_is_defined() -> None:
    """Nonsense limits fail at decoration time with what was expected."""
    with pytest.raises(pk.PipelineError, match="size like '512m'"):
        pk.Resources(memory="lots")
    with pytest.raises(pk.PipelineError, match="positive number of CPUs"):
        pk.Resources(cpus=0)

"""`run --keep-failed`, `pipekit shell`, and what `runs` and `cleanup` say about kept containers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipekit._cli import main

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
        code = main(["shell", run_id, "broken", "-f", str(tmp_path), "--", "cat /what-happened.txt; ls out"], out=shell)
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

"""The package type-checks: typing is part of the API (py.typed ships)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_mypy_strict_on_the_package() -> None:
    """mypy --strict (settings in setup.cfg) finds nothing in pipekit/."""
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_py_typed_ships() -> None:
    """The package marks itself as typed."""
    assert (ROOT / "pipekit" / "py.typed").is_file()


_USER_CODE = """
import pipekit as pk

pipeline = pk.Pipeline(name="ci", image="alpine:3.20", params=[pk.param("who", default="x")])


@pk.stage(image="alpine:3.20", retries=2, timeout="10m", placement=["node.role==worker"])
def good(ctx: pk.Context) -> None: ...


@pipeline.stage(needs=[good], workspace=False)
def also_good(ctx: pk.Context) -> None: ...


@pk.stage(retry=2)
def misspelt(ctx: pk.Context) -> None: ...


@pipeline.stage(workspace="no")
def wrong_type(ctx: pk.Context) -> None: ...


reveal_type(good)
"""


def test_a_type_checker_reads_the_stage_options(tmp_path: Path) -> None:
    """The options' overloads are precise: mypy accepts the right options and names a misspelt
    option and a value of the wrong type, in pk.stage and in Pipeline.stage alike."""
    (tmp_path / "user.py").write_text(_USER_CODE)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file=", "user.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = _USER_CODE.splitlines()
    misspelt, wrong_type = (text.index(d) + 1 for d in ("@pk.stage(retry=2)", '@pipeline.stage(workspace="no")'))
    errors = {int(line.split(":")[1]) for line in proc.stdout.splitlines() if ": error:" in line}
    assert errors == {misspelt, wrong_type}, proc.stdout  # the good calls type-check
    assert f'user.py:{misspelt}: error: Unexpected keyword argument "retry"' in proc.stdout, proc.stdout
    assert f'user.py:{wrong_type}: error: No overload variant of "stage" of "Pipeline" matches argument type "str"' in (
        proc.stdout
    )
    assert "workspace: bool" in proc.stdout  # the variant mypy shows lists the option's type
    assert 'Revealed type is "pipekit._dsl.stage.Stage"' in proc.stdout, proc.stdout

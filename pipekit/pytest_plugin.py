"""The pipekit pytest plugin, registered through the ``pytest11`` entry point.

Fixtures:

``pipekit_runner``
    a :class:`pipekit.testing.PipelineRunner` on the fake backend: no engine, everything recorded.
``pipekit_docker_runner``
    the same on the real Docker backend (recorded too); skips the test, saying why, when no
    engine answers, and removes whatever the test's runs left behind.

Marker ``@pytest.mark.pipekit_docker``: skip the test when no Docker engine answers.
Option ``--pipekit-update-snapshots``: rewrite call-tree snapshots instead of comparing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipekit.testing import PipelineRunner

# pipekit.testing (and with it the executor, structlog and networkx) is imported only when a
# test asks for a fixture: a pytest session that does not use pipekit pays next to nothing.
SNAPSHOT_ENV = "PIPEKIT_UPDATE_SNAPSHOTS"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pipekit", "pipekit pipelines")
    group.addoption(
        "--pipekit-update-snapshots",
        action="store_true",
        default=False,
        help="rewrite the call-tree snapshots of pipekit runs instead of comparing with them",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pipekit_docker: the test needs a Docker engine; skipped when none answers")


def _engine_problem() -> str | None:
    from pipekit._backends.docker.backend import DockerBackend
    from pipekit.exceptions import EngineUnavailable

    try:
        DockerBackend().check()
    except EngineUnavailable as e:
        return str(e)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:  # a dict lookup per test when the marker is absent
    if item.get_closest_marker("pipekit_docker") is not None:
        problem = _engine_problem()
        if problem:
            pytest.skip(f"pipekit_docker: no Docker engine answers: {problem}")


_RESULTS = pytest.StashKey[list]()  # type: ignore[type-arg]
_current: list[pytest.Item] = []  # the test running now, for pytest_assertrepr_compare


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _current.append(item)
    try:
        yield
    finally:
        _current.remove(item)


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """`assert result.stages["deploy"].status == "succeeded"` fails naming the stage, its error
    and its commands, not just `'failed' == 'succeeded'`; `assert result.status == "succeeded"`
    names every stage that did not end well."""
    if op in ("==", "!="):
        explained = _run_outcome(op, left, right)
        if explained is not None:
            return explained
    if op != "==" or not _current or _current[-1].stash.get(_RESULTS, None) is None:
        return None
    from pipekit._core.results import StageStatus

    status = left if isinstance(left, StageStatus) else right if isinstance(right, StageStatus) else None
    if status is None:
        return None
    other = right if status is left else left
    lines = [f"stage status {str(status)!r} == {other!r}"]
    for result in _current[-1].stash[_RESULTS]:
        for name, r in result.stages.items():
            if r.status == status and len(lines) < 40:
                lines += result.describe(name)
    return lines


def _run_outcome(op: str, left: object, right: object) -> list[str] | None:
    import sys

    testing = sys.modules.get("pipekit.testing")
    if testing is None:  # no run was made in this session
        return None
    outcome = left if isinstance(left, testing.RunOutcome) else right if isinstance(right, testing.RunOutcome) else None
    if outcome is None:
        return None
    other = right if outcome is left else left
    explained: list[str] = outcome.explain()
    return [f"run status {str(outcome)!r} {op} {other!r}", *explained]


def _update(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--pipekit-update-snapshots") or os.environ.get(SNAPSHOT_ENV))


@pytest.fixture
def pipekit_runner(request: pytest.FixtureRequest) -> PipelineRunner:
    """Run pipelines on a fake backend; paths are relative to the test file's folder."""
    from pipekit.testing import PipelineRunner

    runner = PipelineRunner(base_dir=request.path.parent, update_snapshots=_update(request))
    request.node.stash[_RESULTS] = runner.results
    return runner


@pytest.fixture
def pipekit_docker_runner(request: pytest.FixtureRequest) -> Iterator[PipelineRunner]:
    """Run pipelines for real on the Docker engine; skipped with the reason when none answers."""
    problem = _engine_problem()
    if problem:
        pytest.skip(f"pipekit_docker_runner: no Docker engine answers: {problem}")
    from pipekit._backends.docker.backend import DockerBackend
    from pipekit.testing import PipelineRunner, RecordingBackend

    backend = RecordingBackend(DockerBackend())
    runner = PipelineRunner(backend=backend, base_dir=request.path.parent, update_snapshots=_update(request))
    request.node.stash[_RESULTS] = runner.results
    yield runner
    for run_id in backend.run_ids:
        backend.cleanup(run_id)

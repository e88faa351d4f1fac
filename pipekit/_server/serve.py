"""``pipekit serve``: the server put together (store, git, queue, triggers, the web app) and run
with uvicorn until SIGINT or SIGTERM, which interrupt the running runs cleanly (they are recorded
as interrupted) and keep the queued ones for the next start."""

from __future__ import annotations

import sys
import time
from typing import Any

from pipekit._server.config import ServerConfig, load_config
from pipekit.exceptions import UsageError

__all__ = ["serve"]


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pipekit serve: {message}", file=sys.stderr, flush=True)


def _imports() -> Any:
    try:
        import croniter  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        from pipekit._ci.wrappers import DISTRIBUTION

        raise UsageError(f"pipekit serve needs {e.name}: pip install '{DISTRIBUTION}[server]'") from None
    return uvicorn


def build(config: ServerConfig) -> tuple[Any, Any, Any]:
    """The app and the parts that run beside it (the queue, the triggers)."""
    from pipekit._server.app import make_app
    from pipekit._server.git import Git
    from pipekit._server.store import Store
    from pipekit._server.triggers import Triggers
    from pipekit._server.work import Work

    config.logins()  # a missing or short token, two users with one token: an error before anything starts
    store = Store(config.state_dir)
    git = Git(config.state_dir)
    work = Work(config, store, git, _log, f"http://{config.listen}")
    triggers = Triggers(config, store, git, work, _log)

    def shutdown() -> None:
        triggers.stop()
        running = work.running()
        if running:
            _log(f"stopping: interrupting runs {', '.join(map(str, running))}; queued runs wait for the next start")
        work.stop()

    return make_app(config, store, work, triggers, shutdown), work, triggers


def _quiet_server(uvicorn: Any) -> Any:
    """uvicorn's server, except that SIGINT and SIGTERM end it (runs interrupted and recorded, see
    ``build``) and ``serve`` returns: uvicorn would re-raise the signal and the process die of it."""
    import contextlib
    import signal

    class Server(uvicorn.Server):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    return Server


def _ignored_settings() -> None:
    import os

    from pipekit._server.env import NOT_PASSED

    found = [n for n in NOT_PASSED if n in os.environ]
    if found:
        _log(
            f"{' and '.join(found)} {'is' if len(found) == 1 else 'are'} set: the server's runs do not get"
            f" {'it' if len(found) == 1 else 'them'}; a user of the server decides on a gate (the run's page,"
            " or POST /api/runs/ID/approvals)"
        )


def serve(config_path: str) -> int:
    import os
    from pathlib import Path

    from pipekit._server.env import hide_and_reexec, not_dumpable

    uvicorn = _imports()
    config = load_config(config_path)
    config.logins()  # a missing or short token, two users with one token: an error before anything starts
    # the secrets are in ``config.values`` now: out of this process's environment (and its
    # /proc/PID/environ, which the re-executed image starts without), so no child inherits them
    hide_and_reexec(config.hidden_env(), ["serve", "--config", str(Path(config_path).resolve())])
    for name in config.hidden_env():
        os.environ.pop(name, None)
    not_dumpable()  # its memory holds them still: no same-user ptrace or /proc/PID/mem
    app, work, triggers = build(config)
    _ignored_settings()
    work.start()
    triggers.start()
    names = ", ".join(p.name for p in config.projects) or "no projects"
    _log(f"listening on http://{config.listen} ({names}; state in {config.state_dir})")
    server = _quiet_server(uvicorn)(
        uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=3)
    )
    server.run()
    _log("stopped")
    return 0

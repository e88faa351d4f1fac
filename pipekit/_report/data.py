"""What `pipekit report` shows, gathered from the run history: one JSON-able mapping per run."""

from __future__ import annotations

import json
import time
from typing import Any

from pipekit._history.store import History
from pipekit._plan.dag import Dag
from pipekit._plan.render import routes

__all__ = ["report_data"]

TAIL = 20  # lines of a failed stage's log shown with its error


def _read(path: Any) -> str:
    try:
        return str(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""


def _epoch(timestamp: str | None) -> float | None:
    import datetime

    try:
        return datetime.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _retries(history: History, run_id: str, started: float) -> dict[str, list[float]]:
    """When each stage's later attempts began, in seconds from the run's start."""
    out: dict[str, list[float]] = {}
    for line in _read(history.run_file(run_id, "attempts.jsonl")).splitlines():
        a = json.loads(line)
        when = _epoch(a.get("timestamp"))
        if when is not None:
            out.setdefault(a["stage"], []).append(when - started)
    return out


def _by_stage(history: History, run_id: str) -> tuple[dict[str, list[Any]], ...]:
    """Each stage's commands, test reports and artifacts."""
    commands: dict[str, list[Any]] = {}
    for line in _read(history.run_file(run_id, "commands.jsonl")).splitlines():
        c = json.loads(line)
        commands.setdefault(c["stage"], []).append(c)
    tests: dict[str, list[Any]] = {}
    for t in history.tests(run_id):
        failed = [{"name": f.name, "message": f.message, "kind": f.kind} for f in t.failed]
        tests.setdefault(t.stage, []).append(
            {"tests": t.tests, "failures": t.failures, "errors": t.errors, "skipped": t.skipped, "failed": failed}
        )
    artifacts: dict[str, list[Any]] = {}
    for a in history.artifacts(run_id):
        artifacts.setdefault(a.stage, []).append({"path": a.path, "size": a.size, "sha256": a.sha256})
    return commands, tests, artifacts


#: the graph's boxes in the page: width, height, and the gaps between columns and rows
BOX = (170, 34, 60, 22)


def _place(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Each stage's column and row in the drawing of the graph; the drawing's size and its edges,
    routed around the boxes (:func:`pipekit._plan.render.routes`)."""
    dag = Dag({s["name"]: s for s in stages}, ((n, s["name"]) for s in stages for n in s["needs"]))
    place = dag.layout([s["name"] for s in stages])
    for name, (column, row) in place.items():
        dag.nodes[name].update(layer=column, row=row)
    edges = [(n, s["name"]) for s in stages for n in s["needs"]]
    w, h, gx, gy = BOX
    columns = 1 + max((c for c, _ in place.values()), default=0)
    rows = 1 + max((r for _, r in place.values()), default=0)
    return {
        "w": w,
        "h": h,
        "gx": gx,
        "gy": gy,
        "width": 20 + columns * (w + gx) - gx,
        "height": gy + rows * (h + gy),
        "edges": [
            {"from": u, "to": v, "points": [[round(x, 1), round(y, 1)] for x, y in points]}
            for (u, v), points in zip(edges, routes(edges, place, BOX), strict=True)
        ],
    }


def _run_facts(run: Any) -> dict[str, Any]:
    return {
        "id": run.id,
        "pipeline": run.pipeline,
        "path": run.path,
        "branch": run.branch,
        "commit": run.git_commit,
        "status": run.status,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started)),
        "duration": run.duration_s,
        "argv": run.argv,
        "user": f"{run.user}@{run.host}",
    }


def report_data(history: History, run_id: str) -> dict[str, Any]:
    run = history.run(run_id)
    plan_text = _read(history.run_file(run_id, "plan.json"))
    plan = json.loads(plan_text) if plan_text else {"stages": [], "params": {}}
    planned = {s["name"]: s for s in plan["stages"]}
    commands, tests, artifacts = _by_stage(history, run_id)
    retries = _retries(history, run_id, run.started)
    rows = {s.name: s for s in history.stages(run_id)}
    order = [n for n in planned if n in rows] + [n for n in rows if n not in planned]
    stages, logs = [], {}
    ends: dict[str, float] = {}
    for name in order:
        row, p = rows[name], planned.get(name, {})
        started = (row.started - run.started) if row.started else None
        needs = [n for n in p.get("needs", []) if n in rows]
        ready = max((ends[n] for n in needs if n in ends), default=0.0)
        if started is not None and row.duration_s is not None:
            ends[name] = started + row.duration_s
        log = _read(history.log_path(run_id, name))
        logs[name] = log
        lines = log.splitlines()
        end = max((i for i, text in enumerate(lines) if text.startswith("= ")), default=len(lines))
        stages.append(
            {
                "name": name,
                "status": str(row.status),
                "attempts": row.attempts,
                "started": started,
                "ready": ready if started is not None else None,
                "duration": row.duration_s,
                "exit_code": row.exit_code,
                "error": row.error,
                "reason": row.reason or ("cache hit" if row.cache_hit else None),
                "needs": needs,
                "image": p.get("image"),
                "location": p.get("location"),
                "commands": commands.get(name, []),
                "retries": retries.get(name, []),
                "tests": tests.get(name, []),
                "artifacts": artifacts.get(name, []),
                "lines": len(lines),
                "tail": lines[:end][-TAIL:],  # the last lines before the stage's result
            }
        )
    dag = _place(stages)
    return {
        "run": _run_facts(run),
        "dag": dag,
        "params": plan.get("params", {}),
        "stages": stages,
        "logs": logs,
    }

"""`pipekit report`: one self-contained HTML file of a run (inline CSS and JS, no network).

The run's data travels as JSON in a ``<script type="application/json">`` element (with ``<``
escaped, so no text of a log can end it), and the page's script builds every element from it with
``textContent``: a log line is never read as HTML. A Content-Security-Policy forbids every request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipekit._core.util import write_file
from pipekit._plan.render import FILLS

__all__ = ["render_report", "write_report"]


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>pipekit run %ID%</title><style>%CSS%</style></head>
<body><header><h1 id="title"></h1><div class="meta" id="meta"></div></header><main>
<section><h2>Stages</h2><svg id="dag" xmlns="http://www.w3.org/2000/svg"></svg>
<div class="hint">wheel: zoom · drag: pan · double-click: the whole graph</div></section>
<section><h2>Timeline</h2><svg id="timeline" xmlns="http://www.w3.org/2000/svg"></svg></section>
<section id="stage"></section>
<section><h2>Search the logs</h2><input type="search" id="q" placeholder="text in any stage's log">
<span id="hit-count"></span><div id="hits"></div></section>
<section><h2>Parameters</h2><table id="params"></table></section>
</main>
<script type="application/json" id="pipekit-data">%DATA%</script>
<script>%JS%</script></body></html>
"""


def _asset(name: str) -> str:
    """report.js and report.css, shipped beside this module."""
    from importlib.resources import files

    return files("pipekit._report").joinpath(name).read_text(encoding="utf-8")


def render_report(data: dict[str, Any]) -> str:
    payload = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    script = _asset("report.js").replace("%FILL%", json.dumps(FILLS))
    page = PAGE.replace("%CSS%", _asset("report.css")).replace("%JS%", script)
    return page.replace("%ID%", str(data["run"]["id"])).replace("%DATA%", payload)


def write_report(history: Any, run_id: str, target: str | os.PathLike[str]) -> Path:
    """The run's page, written to ``target`` (never through a link a stage left in the workspace:
    :func:`pipekit._core.safefile.write_file`, the workspace being the history's folder)."""
    from pipekit._report.data import report_data

    folder = getattr(history, "dir", None)
    root = Path(folder).parent if folder is not None else None
    return write_file(target, render_report(report_data(history, run_id)), root=root)

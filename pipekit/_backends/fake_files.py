"""The files a fake stage's scripted commands write (``respond(files=...)``): each stage's own view
of the workspace, which ``ctx.junit`` and ``ctx.archive`` read under the test runner instead of the
real folder, and the absolute paths of its container."""

from __future__ import annotations

import io
import posixpath
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from pipekit._core.safefile import write_file

__all__ = ["FILES_HINT", "ScriptedFiles", "checked"]

FILES_HINT = (
    "Under the test runner, ctx.junit and ctx.archive read only the files that scripted commands"
    " write: runner.respond('pytest*', files={'reports/junit.xml': '<testsuite>...</testsuite>'})"
)


def checked(files: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    """``respond(files=...)`` checked: paths relative to the workspace (or absolute, in the
    stage's container), contents as text (UTF-8) or bytes."""
    out: dict[str, bytes] = {}
    for path, content in (files or {}).items():
        if not isinstance(path, str) or not path.strip("/") or ".." in path.split("/"):
            raise ValueError(f"respond(files=...) takes paths such as 'reports/junit.xml', got {path!r}")
        if not isinstance(content, (str, bytes)):
            raise TypeError(f"respond(files=...): the content of {path} is {type(content).__name__}, not str or bytes")
        out[path] = content.encode("utf-8") if isinstance(content, str) else content
    return out


class ScriptedFiles:
    """Per stage handle: a temporary folder (the stage's workspace) and absolute files."""

    def __init__(self) -> None:
        self._views: dict[str, Path] = {}
        self._absolute: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    def view(self, key: str) -> Path:
        with self._lock:
            if key not in self._views:
                self._views[key] = Path(tempfile.mkdtemp(prefix="pipekit-fake-workspace-"))
            return self._views[key]

    def write(self, key: str, files: Mapping[str, bytes]) -> None:
        view = self.view(key)
        for path, data in files.items():
            if path.startswith("/"):
                with self._lock:
                    self._absolute.setdefault(key, {})[path] = data
            else:
                write_file(view / path, data, root=view)

    def archive(self, key: str, path: str) -> bytes | None:
        """The absolute files at or under ``path`` as the engine archives it (members named from
        its base name); None when none was written."""
        base = path.rstrip("/") or "/"
        with self._lock:
            scripted = dict(self._absolute.get(key, {}))
        inside = {p: d for p, d in scripted.items() if p == base or p.startswith(base.rstrip("/") + "/")}
        if not inside:
            return None
        top = posixpath.basename(base) or "root"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in sorted(inside.items()):
                rel = posixpath.relpath(name, base)
                info = tarfile.TarInfo(top if rel == "." else f"{top}/{rel}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def release(self, key: str) -> None:
        with self._lock:
            self._absolute.pop(key, None)
            view = self._views.pop(key, None)
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)

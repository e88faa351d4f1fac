"""Files between this machine and a stage's container: the workspace's mounts (and what covers the
parts of it no stage may touch), and tar archives in and out for copy mode, streamed."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any

from pipekit._backends.docker.engine import WORKDIR, container_of, engine_message
from pipekit._workspace.archive import ChunkReader
from pipekit._workspace.delta import hidden_names
from pipekit._workspace.hosttree import CHUNK
from pipekit.backend import StageHandle, StageSpec
from pipekit.exceptions import BackendError

if TYPE_CHECKING:
    import docker

__all__ = ["Files", "workspace_covers"]


def workspace_covers(spec: StageSpec) -> list[Any]:
    """Mounts over the bind-mounted workspace: its ``.git`` read-only (hooks and config a stage
    wrote there would run on this machine at the next git command), and the secrets file, when it
    lies in the workspace, covered by an empty read-only file. (``.pipekit/`` is covered by a tmpfs.)"""
    from docker.types import Mount

    mounts = []
    git = spec.workspace / ".git"
    if os.path.lexists(git):  # a folder, or a worktree's file (the folder it names is not mounted)
        mounts.append(Mount(f"{WORKDIR}/.git", str(git.resolve()), type="bind", read_only=True))
    for name in hidden_names(spec.workspace, spec.hidden):
        if not os.path.isfile(spec.workspace / name):
            continue  # (a mount over a missing file would make an empty one here)
        mounts.append(Mount(f"{WORKDIR}/{name}", os.devnull, type="bind", read_only=True))
    return mounts


class Files:
    """Files in and out of stages' containers, over the backend's client (``client()``)."""

    def __init__(self, client: Callable[[], docker.DockerClient]) -> None:
        self._client = client

    def put_files(self, handle: StageHandle, archive: bytes, dest: str) -> None:
        from docker.errors import APIError

        try:
            self._client().api.put_archive(container_of(handle), dest, archive)
        except APIError as e:
            raise BackendError(
                f"Cannot copy files into stage '{handle.spec.stage}' ({dest}): {engine_message(e)}"
            ) from e

    def get_files(self, handle: StageHandle, path: str) -> bytes | None:
        from docker.errors import NotFound

        try:
            stream, _stat = self._client().api.get_archive(container_of(handle), path)
        except NotFound:
            return None
        return b"".join(stream)

    def put_stream(self, handle: StageHandle, chunks: Iterable[bytes], dest: str) -> None:
        """Unpack a tar stream at ``dest``, sent as it is made (``chunks``): nothing whole in memory."""
        self.put_files(handle, chunks, dest)  # type: ignore[arg-type]  # docker-py sends an iterable, chunked

    def get_stream(self, handle: StageHandle, path: str) -> IO[bytes] | None:
        """``path`` as a tar stream (named as get_files names it), read as the engine sends it;
        None when it does not exist."""
        from docker.errors import NotFound

        try:
            stream, _stat = self._client().api.get_archive(container_of(handle), path, chunk_size=CHUNK)
        except NotFound:
            return None
        return io.BufferedReader(ChunkReader(stream), CHUNK)

    def exists(self, handle: StageHandle, path: str) -> bool:
        """Whether ``path`` exists in the stage's container (the engine's stat of it; a link is not followed)."""
        api = self._client().api
        answer = api.head(api._url("/containers/{0}/archive", container_of(handle)), params={"path": path})
        if answer.status_code == 404:
            return False
        api._raise_for_status(answer)
        return True

"""The stage cache shared through an OCI registry (``--cache-registry``): entries, their format, and
how they are pushed, found, checked and restored.

An entry is an OCI artifact in the repository given, tagged ``pk1-KEY`` (KEY: the stage's cache
key, 64 hex digits). Its manifest (``application/vnd.oci.image.manifest.v1+json``, artifactType
``application/vnd.pipekit.cache.v1``) names:

- a config blob ``application/vnd.pipekit.cache.entry.v1+json``: the key, pipeline, stage, run,
  host, creation time, the stage's return value (JSON), its test report, the names of its declared
  output files and of its archived artifacts;
- at most one ``application/vnd.pipekit.cache.files.v1.tar`` layer: the declared output files
  (``pk.inputs(..., outputs=[...])``), an uncompressed tar of regular files only;
- one ``application/vnd.pipekit.cache.artifact.v1`` layer per archived artifact (its path in the
  ``org.opencontainers.image.title`` annotation).

A blob of at most 16 KiB (the config, a small stage's files) is also embedded in its descriptor
(the OCI ``data`` field, base64), so that a small entry is read in one request; it is checked against
its digest like any other. Blobs go up first and the manifest last, so an entry exists only once
everything it names is there.

A run that reads the cache lists the repository's tags once, when it starts (in a thread of its
own, beside the run's own start): a key whose tag is not listed is a miss without a request. A run
that writes leaves, when it ends, the pipeline's index (tag ``pk1index-`` and 32 hex digits of the
pipeline's name; artifactType ``application/vnd.pipekit.cache.index.v1``): a config blob
``application/vnd.pipekit.cache.index.v1+json`` holding, for each stage of the pipeline, the key and
the manifest of the entry that run took or pushed. A later run reads it with the tag list, so that
a stage whose key the index names and whose tag is listed is read without a request of its own
(its small blobs are embedded in that manifest); the manifest is checked as one read from its tag
(embedded blobs against their digests, its config's key and stage). The listing is used for
:data:`LISTING_TTL` seconds; after that, each key is asked for on its own again.
On the way back every blob is read into memory and checked against its digest and size before
anything is written; an entry whose key is not the one asked for, or that names a file its stage
does not declare, is refused like a tampered one. Files are written without following links, never
into ``.git/`` or ``.pipekit/``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import posixpath
import socket
import tarfile
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pipekit._core.safefile import Beneath
from pipekit._dsl.conditions import glob_match
from pipekit._history.oci import MANIFEST_TYPES, MAX_MANIFEST, BlobMismatch, OciClient
from pipekit._workspace.hosttree import HostTree, TreeRefused, is_private
from pipekit.exceptions import RegistryError, RegistryUnavailable

__all__ = [
    "ARTIFACT_TYPE",
    "MODES",
    "Entry",
    "EntryInfo",
    "RegistryCache",
    "Tampered",
    "describe",
    "index_tag",
    "pack_files",
    "restore_files",
    "tag_of",
]

FORMAT = 1
TAG_PREFIX = f"pk{FORMAT}-"
ARTIFACT_TYPE = "application/vnd.pipekit.cache.v1"
CONFIG_TYPE = "application/vnd.pipekit.cache.entry.v1+json"
FILES_TYPE = "application/vnd.pipekit.cache.files.v1.tar"
ARTIFACT_LAYER_TYPE = "application/vnd.pipekit.cache.artifact.v1"
TITLE = "org.opencontainers.image.title"
MAX_CONFIG = 64 << 20
MAX_BLOB = 8 << 30
MAX_ENTRY = 8 << 30  # an entry's blobs in all (they are held in memory while checked): larger is a miss
MAX_LAYERS = 4096  # the files and each artifact are one layer each
EMBED = 16 << 10  # blobs up to this size travel inside the manifest too
MODES = ("read", "write", "readwrite", "off")
INDEX_PREFIX = f"pk{FORMAT}index-"
INDEX_ARTIFACT = "application/vnd.pipekit.cache.index.v1"
INDEX_TYPE = "application/vnd.pipekit.cache.index.v1+json"
MAX_INDEX = 8 << 20
EMBED_INDEX = 512 << 10  # an index up to this size travels inside its manifest: read in one request
LISTING_TTL = 60.0  # seconds a run trusts the tag list it took when it started
MAX_TAG_PAGES = 20  # a repository with more tags than this many pages of 1000 is asked key by key


class Tampered(Exception):
    """An entry that does not hold together (a blob that does not match its digest, a key that is
    not the one asked for, a file its stage does not declare): a miss, with a warning."""


def tag_of(key: str) -> str:
    return TAG_PREFIX + key


def index_tag(pipeline: str) -> str:
    """The tag of a pipeline's index."""
    return INDEX_PREFIX + hashlib.sha256(pipeline.encode()).hexdigest()[:32]


@attrs.frozen
class Listing:
    """What a run learnt of the repository when it started: its tags, and the manifests the
    pipeline's index holds (by key, only those whose tag is listed)."""

    tags: frozenset[str]
    manifests: Mapping[str, bytes]
    taken: float = attrs.field(factory=time.monotonic)


@attrs.frozen
class Entry:
    """One stage's result as the shared cache holds it."""

    key: str
    pipeline: str
    stage: str
    run_id: str
    output_json: str
    host: str = attrs.field(factory=socket.gethostname)
    created: float = attrs.field(factory=time.time)
    files: bytes | None = attrs.field(default=None, repr=False)  # a tar of the declared output files
    file_names: tuple[str, ...] = ()
    artifacts: tuple[tuple[str, bytes], ...] = attrs.field(default=(), repr=False)
    tests: dict[str, Any] | None = None


@attrs.frozen
class EntryInfo:
    """What ``pipekit cache`` shows of an entry: from its manifest's annotations."""

    tag: str
    digest: str
    stage: str
    pipeline: str
    run_id: str
    host: str
    created: str
    size: int
    problem: str = ""  # why the entry cannot be read ("" when it can)


def pack_files(workspace: Path, patterns: Sequence[str]) -> tuple[bytes | None, tuple[str, ...]]:
    """The files the patterns select in the workspace (read without following a link out of it), as
    a tar with fixed owners and times (the same files make the same blob), and their names."""
    with Beneath(workspace) as tree:
        names = tree.matching(patterns, glob_match)
        if not names:
            return None, ()
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                data, st = tree.read(name)
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), st.st_mode & 0o755 | 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), tuple(names)


def _checked_members(data: bytes, patterns: Sequence[str]) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The tar's files, each one a regular file the stage declares; Tampered otherwise."""
    members = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                name = posixpath.normpath(info.name)
                if (
                    not info.isreg()
                    or name != info.name
                    or name.startswith(("/", "../"))
                    or name == ".."
                    or is_private(name)
                    or not any(
                        name == p or name.startswith(p.rstrip("/") + "/") or glob_match(p, name) for p in patterns
                    )
                ):
                    raise Tampered(f"it holds {info.name!r}, which is not one of the stage's declared output files")
                f = tar.extractfile(info)
                members.append((info, f.read() if f is not None else b""))
    except tarfile.TarError as e:
        raise Tampered(f"its files are not a readable tar ({e})") from None
    return members


def restore_files(workspace: Path, data: bytes, patterns: Sequence[str]) -> list[str]:
    """Write an entry's output files into the workspace: every member checked first, then written
    through :class:`HostTree` (no link followed, a hard link replaced rather than written into)."""
    members = _checked_members(data, patterns)
    tree = HostTree(str(workspace))
    written = []
    try:
        for info, content in members:
            try:
                tree.write_file(info.name, io.BytesIO(content), len(content), info.mode, None)
            except TreeRefused as e:
                raise Tampered(f"{info.name} cannot be written in the workspace ({e})") from None
            written.append(info.name)
    finally:
        tree.close()
    return written


class RegistryCache:
    """The shared cache in one repository: ``mode`` read, write or readwrite. A registry that cannot
    be reached is given up for the rest of the run after the first failure (each stage would
    otherwise wait for its own timeout); the caller warns once."""

    def __init__(
        self,
        target: str,
        mode: str = "read",
        auth: tuple[str, str] | None = None,
        timeout: tuple[float, float] = (2.0, 10.0),
    ) -> None:
        self.client = OciClient(target, auth, timeout)
        self.target = self.client.target
        self.mode = mode
        self.down: str | None = None
        self.pipeline: str | None = None
        self.index_problem: str | None = None  # why the pipeline's index was not used
        self._lister: threading.Thread | None = None
        self._listed = threading.Event()
        self._listing: Listing | None = None
        self._list_error: RegistryError | None = None
        self._index: dict[str, tuple[str, bytes]] | None = None  # the index read: stage -> (key, manifest)
        self._used: dict[str, tuple[str, bytes]] = {}  # this run's hits and pushes: stage -> (key, manifest)
        self._lock = threading.Lock()

    @property
    def reads(self) -> bool:
        return self.mode in ("read", "readwrite") and self.down is None

    @property
    def writes(self) -> bool:
        return self.mode in ("write", "readwrite") and self.down is None

    def close(self) -> None:
        self.client.close()

    def _unavailable(self, e: RegistryError) -> None:
        from pipekit.exceptions import RegistryUnavailable

        if isinstance(e, RegistryUnavailable):
            self.down = str(e)

    # -- the listing a run takes when it starts ---------------------------------------------
    def prepare(self, pipeline: str) -> None:
        """Start listing the repository's tags and reading ``pipeline``'s index, in a thread of its
        own: by the time the first stage is looked up, a miss needs no request and a stage the
        index names none either."""
        self.pipeline = pipeline
        if not self.reads or self._lister is not None:
            return
        self._lister = threading.Thread(target=self._list, name="pipekit-cache-list", daemon=True)
        self._lister.start()

    def _list(self) -> None:
        try:
            tags = self.client.tags_within(MAX_TAG_PAGES)
            if tags is not None:
                listed = frozenset(tags)
                index = self._read_index(listed)
                known = {key: manifest for key, manifest in index.values() if tag_of(key) in listed}
                self._listing = Listing(listed, known)
        except RegistryUnavailable as e:  # said by the first lookup
            self._list_error = e
        except Exception:  # a registry that does not list tags to this login: each key is asked for
            pass
        finally:
            self._listed.set()

    def _read_index(self, tags: Collection[str] | None) -> dict[str, tuple[str, bytes]]:
        """The pipeline's index (stage -> key, manifest); empty when there is none or it does not
        hold together (then ``index_problem`` says why). RegistryError when the registry fails."""
        index: dict[str, tuple[str, bytes]] = {}
        tag = index_tag(self.pipeline or "")
        try:
            found = None if tags is not None and tag not in tags else self.client.manifest(tag)
            if found is not None:
                manifest = _json(found[1], "its manifest")
                data = _json(self._blob(_descriptor(manifest.get("config"), INDEX_TYPE), MAX_INDEX), "its index")
                index = _index_entries(data, self.pipeline)
        except (Tampered, BlobMismatch) as e:
            self.index_problem = f"the index {tag} was not used: {e}"
        self._index = index
        return index

    def _listed_now(self) -> Listing | None:
        """The run's listing, when it was taken (waiting for it at most as long as one request may
        take) less than LISTING_TTL seconds ago; its failure, once, when the registry is unavailable."""
        if self._lister is None or not self._listed.wait(self.client.wait_s):
            return None
        error, self._list_error = self._list_error, None
        if error is not None:
            raise error
        listing = self._listing
        if listing is None or time.monotonic() - listing.taken > LISTING_TTL:
            return None
        return listing

    def _manifest(self, key: str) -> bytes | None:
        """An entry's manifest: from the run's listing when it knows the key (or knows there is
        none), else asked for by its tag."""
        listing = self._listed_now()
        if listing is not None:
            if tag_of(key) not in listing.tags:
                return None
            known = listing.manifests.get(key)
            if known is not None:
                return known
        found = self.client.manifest(tag_of(key))
        return None if found is None else found[1]

    # -- reading ---------------------------------------------------------------------------
    def fetch(self, key: str, stage: str, *, layers: bool = True) -> Entry | None:
        """The entry for the key, every blob checked; None when there is none; Tampered when it does
        not hold together; a RegistryError when the registry fails. ``layers=False``: its manifest
        and config only (what ``pipekit plan`` needs: the result, not the files)."""
        try:
            body = self._manifest(key)
            if body is None:
                return None
            manifest = _json(body, "its manifest")
            config_desc = _descriptor(manifest.get("config"), CONFIG_TYPE)
            config = _json(self._blob(config_desc, MAX_CONFIG), "its config")
            descs = [_descriptor(d, None) for d in manifest.get("layers") or []] if layers else []
            _bounded(descs)
            blobs = [(d, self._blob(d, MAX_BLOB)) for d in descs]
        except BlobMismatch as e:
            raise Tampered(str(e)) from None
        except RegistryError as e:
            self._unavailable(e)
            raise
        entry = _entry(key, stage, config, blobs)
        if layers:
            with self._lock:
                self._used[stage] = (key, body)
        return entry

    def _blob(self, desc: dict[str, Any], limit: int) -> bytes:
        """A blob from its descriptor's embedded data, else from the registry; checked either way."""
        embedded = desc.get("data")
        if not isinstance(embedded, str):
            return self.client.blob(desc["digest"], min(desc["size"], limit))
        try:
            data = base64.b64decode(embedded, validate=True)
        except ValueError:
            raise Tampered("an embedded blob is not base64") from None
        if len(data) != desc["size"] or "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"]:
            raise Tampered(f"the blob {desc['digest']} embedded in its manifest does not match its digest")
        return data

    def entries(self) -> list[EntryInfo]:
        """Every entry of the repository, newest first (a manifest request per entry)."""
        infos = []
        for tag in self.client.tags():
            if not tag.startswith(TAG_PREFIX):
                continue
            found = None
            try:
                found = self.client.manifest(tag)
                if found is not None:
                    infos.append(_info(tag, *found))
            except BlobMismatch as e:  # an entry that cannot be read is listed as such, the others after it
                infos.append(EntryInfo(tag, "", "?", "?", "?", "?", "", 0, problem=str(e)))
            except (Tampered, ValueError, TypeError, AttributeError) as e:
                infos.append(EntryInfo(tag, found[0] if found else "", "?", "?", "?", "?", "", 0, problem=str(e)))
        return sorted(infos, key=lambda i: i.created, reverse=True)

    def delete(self, digest: str) -> None:
        self.client.delete_manifest(digest)

    # -- writing ---------------------------------------------------------------------------
    def push(self, entry: Entry) -> str:
        """Push the entry: its blobs, then its manifest (the entry exists only once all is there)."""
        try:
            return self._push(entry)
        except RegistryError as e:
            self._unavailable(e)
            raise

    def _push(self, entry: Entry) -> str:
        layers = []
        if entry.files is not None:
            layers.append(self._layer(entry.files, FILES_TYPE, {}))
        for path, data in entry.artifacts:
            layers.append(self._layer(data, ARTIFACT_LAYER_TYPE, {TITLE: path}))
        config = json.dumps(
            {
                "format": FORMAT,
                "key": entry.key,
                "pipeline": entry.pipeline,
                "stage": entry.stage,
                "run_id": entry.run_id,
                "host": entry.host,
                "created": entry.created,
                "output": entry.output_json,
                "files": list(entry.file_names),
                "artifacts": [path for path, _ in entry.artifacts],
                "tests": entry.tests,
            },
            sort_keys=True,
        ).encode()
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.created))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPES,
            "artifactType": ARTIFACT_TYPE,
            "config": self._layer(config, CONFIG_TYPE, {}),
            "layers": layers,
            "annotations": {
                "dev.pipekit.key": entry.key,
                "dev.pipekit.pipeline": entry.pipeline,
                "dev.pipekit.stage": entry.stage,
                "dev.pipekit.run": entry.run_id,
                "dev.pipekit.host": entry.host,
                "org.opencontainers.image.created": created,
            },
        }
        body = json.dumps(manifest, sort_keys=True).encode()
        digest = self.client.put_manifest(tag_of(entry.key), body)
        with self._lock:
            self._used[entry.stage] = (entry.key, body)
        return digest

    def push_index(self) -> bool:
        """Write the pipeline's index when it changed: for each stage, the entry this run took or
        pushed, else the one the index had (while its tag is listed: a run of some stages only
        keeps the others'). Whether it was written."""
        if not self.writes or self.pipeline is None:
            return False
        try:
            return self._push_index()
        except RegistryError as e:
            self._unavailable(e)
            raise

    def _push_index(self) -> bool:
        if self._lister is not None:  # the index it read, not a second read beside it
            self._listed.wait(self.client.wait_s)
        with self._lock:
            used = dict(self._used)
        before = self._index if self._index is not None else self._read_index(None)
        listing = self._listing
        kept = {s: v for s, v in before.items() if listing is None or tag_of(v[0]) in listing.tags}
        merged = {**kept, **used}
        if not merged or merged == before:
            return False
        entries = [{"stage": s, "key": k, "manifest": m.decode()} for s, (k, m) in sorted(merged.items())]
        data = json.dumps({"format": FORMAT, "pipeline": self.pipeline, "entries": entries}, sort_keys=True).encode()
        if len(data) > MAX_INDEX:
            return False
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPES,
            "artifactType": INDEX_ARTIFACT,
            "config": self._layer(data, INDEX_TYPE, {}, EMBED_INDEX),
            "layers": [],
            "annotations": {"dev.pipekit.pipeline": self.pipeline},
        }
        self.client.put_manifest(index_tag(self.pipeline or ""), json.dumps(manifest, sort_keys=True).encode())
        return True

    def _layer(self, data: bytes, media_type: str, annotations: dict[str, str], embed: int = EMBED) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": media_type, "digest": self.client.put_blob(data), "size": len(data)}
        if annotations:
            desc["annotations"] = annotations
        if len(data) <= embed:
            desc["data"] = base64.b64encode(data).decode()
        return desc


def _bounded(descs: list[dict[str, Any]]) -> None:
    """Tampered when an entry's layers are more than MAX_LAYERS or MAX_ENTRY bytes in all."""
    total = sum(d["size"] for d in descs)
    if len(descs) > MAX_LAYERS or total > MAX_ENTRY:
        limits = f"{MAX_LAYERS} layers, {MAX_ENTRY >> 30} GiB"
        raise Tampered(f"its {len(descs)} layers of {total} bytes are more than an entry may hold ({limits})")


def _info(tag: str, digest: str, body: bytes) -> EntryInfo:
    """What ``pipekit cache list`` shows of an entry, from its manifest; Tampered (or ValueError,
    TypeError, AttributeError) when the manifest is not one."""
    manifest = _json(body, "its manifest")
    notes = manifest.get("annotations") or {}
    size = sum(int(d.get("size", 0)) for d in [manifest.get("config") or {}, *(manifest.get("layers") or [])])
    return EntryInfo(
        tag=tag,
        digest=digest,
        stage=str(notes.get("dev.pipekit.stage", "?")),
        pipeline=str(notes.get("dev.pipekit.pipeline", "?")),
        run_id=str(notes.get("dev.pipekit.run", "?")),
        host=str(notes.get("dev.pipekit.host", "?")),
        created=str(notes.get("org.opencontainers.image.created", "")),
        size=size,
    )


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data[:MAX_MANIFEST] if what == "its manifest" else data)
    except ValueError:
        raise Tampered(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise Tampered(f"{what} is not a JSON object")
    return value


def _descriptor(value: Any, media_type: str | None) -> dict[str, Any]:
    ok = (
        isinstance(value, dict)
        and isinstance(value.get("digest"), str)
        and value["digest"].startswith("sha256:")
        and isinstance(value.get("size"), int)
        and value["size"] >= 0
        and (media_type is None or value.get("mediaType") == media_type)
    )
    if not ok:
        raise Tampered("its manifest is not one of pipekit's cache entries")
    return dict(value)


def _index_entries(data: dict[str, Any], pipeline: str | None) -> dict[str, tuple[str, bytes]]:
    """An index's entries, stage -> (key, manifest); Tampered when it is not one of this pipeline's."""
    entries = data.get("entries")
    if data.get("format") != FORMAT or data.get("pipeline") != pipeline or not isinstance(entries, list):
        raise Tampered("it is not this pipeline's index")
    index = {}
    for e in entries:
        if not (isinstance(e, dict) and all(isinstance(e.get(f), str) for f in ("stage", "key", "manifest"))):
            raise Tampered("an entry of it is not one")
        index[e["stage"]] = (e["key"], e["manifest"].encode())
    return index


def _entry(key: str, stage: str, config: dict[str, Any], blobs: Iterable[tuple[dict[str, Any], bytes]]) -> Entry:
    if config.get("format") != FORMAT or config.get("key") != key or config.get("stage") != stage:
        raise Tampered(f"it is not the entry of stage '{stage}' for key {key[:12]}")
    files, artifacts = None, []
    for desc, data in blobs:
        if desc.get("mediaType") == FILES_TYPE and files is None:
            files = data
        elif desc.get("mediaType") == ARTIFACT_LAYER_TYPE:
            path = (desc.get("annotations") or {}).get(TITLE)
            if not isinstance(path, str) or not path:
                raise Tampered("an artifact of it has no name")
            artifacts.append((path, data))
        else:
            raise Tampered(f"it holds a layer of type {desc.get('mediaType')!r}")
    output, tests = config.get("output"), config.get("tests")
    if not isinstance(output, str) or (tests is not None and not isinstance(tests, dict)):
        raise Tampered("its config is not one of pipekit's")
    return Entry(
        key=key,
        pipeline=str(config.get("pipeline", "")),
        stage=stage,
        run_id=str(config.get("run_id", "?")),
        output_json=output,
        host=str(config.get("host", "?")),
        created=float(config.get("created", 0.0)),
        files=files,
        file_names=tuple(str(n) for n in config.get("files") or ()),
        artifacts=tuple(artifacts),
        tests=tests,
    )


def describe(entry: Entry, target: str) -> str:
    """Where a hit came from, as the run's output and the report say it."""
    return f"cache hit: registry {target}, run {entry.run_id} on host {entry.host}"

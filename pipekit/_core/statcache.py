"""File fingerprints for the stage cache: each file hashed once per run, and only when it changed.

``cache=pk.inputs("src/**")`` makes a stage's key depend on the content of every file the globs
select. Reading and hashing all of them for every stage on every run costs as much as the files
weigh; like git's index, pipekit keeps instead a **stat cache**: for each file, what ``lstat`` said
of it (size, ``mtime_ns``, ``ctime_ns``, inode, mode) when it was last hashed, and its digest. A
file whose stat is the same as then is not read again. It lives in ``.pipekit/filestat.db``
(SQLite, its own file: a busy run history never holds it up), is written only when something was
hashed, and is never opened through a link.

A stat that matches does not prove the content is the same when the file was written again in
the same tick of the file system's clock as the hash was taken (git's "racily clean" files): an
entry is trusted only when the file's ``mtime`` and ``ctime`` are older than the moment the hash
started by :data:`RACY_NS`; a newer one is hashed again (and recorded again, to be trusted next
time). ``ctime`` cannot be set back by a program (``touch -d`` sets ``mtime`` only).

Within one run (:class:`FileDigests`, one per run) a file is hashed at most once whatever the
number of stages that name it: an entry made in this run is reused, even racy, as long as no stage
has run since (:meth:`FileDigests.writing` is held by every stage that runs: in mount mode it
writes the workspace); the walk of the workspace is reused on the same terms.

Files are read as ``ctx.archive`` reads them (:class:`pipekit._core.safefile.Beneath`): no link
out of the workspace, nothing under ``.pipekit/`` or ``.git/``, no FIFO; a link is hashed through
what it resolves to, and its stat is the target's. Content is streamed in 1 MiB pieces into
BLAKE3 (the ``blake3`` wheel, imported when a file is first hashed), never whole in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipekit._core.listing import listing
from pipekit._core.safefile import PRIVATE, Beneath, UnsafePath

if TYPE_CHECKING:
    import sqlite3

__all__ = ["DB_NAME", "RACY_NS", "FileDigests", "FileSet", "KnownFiles", "files_digest", "glob_root", "stat_key"]

#: the stat cache's file, in ``.pipekit/``
DB_NAME = "filestat.db"
#: how much older than its hash a file's mtime/ctime must be for its entry to be trusted: more
#: than the coarsest file-system clock tick pipekit expects (FAT's 2 s), and clock skew between
#: this host and a network file system's server up to that much
RACY_NS = 2_000_000_000
_CHUNK = 1 << 20

#: what identifies a file's state without reading it: size, mtime_ns, ctime_ns, inode, mode, packed
_KEY = struct.Struct("<qqqQQ")
_SCHEMA = "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, stat BLOB, digest TEXT, trusted INTEGER)"
#: sets of patterns known by their digest: the mark of the listings they were made from (KnownFiles)
_SETS = "CREATE TABLE IF NOT EXISTS sets (patterns TEXT PRIMARY KEY, mark TEXT, digest TEXT, count INTEGER)"
#: what a set's mark also depends on: bump it when what patterns select changes
_MARK_VERSION = b"pipekit listing mark 1\0"
_GLOB = "*?[{\\"
#: folders a glob's walk never enters (as :meth:`Beneath.matching`)
GLOB_SKIP = (*PRIVATE, "__pycache__")

#: an entry: (path, packed stat, digest, trusted): trusted when the file was not racily clean
Entry = tuple[str, bytes, str, int]
#: selects the names a glob matches among names (``pipekit._dsl.conditions.glob_filter``)
Select = Callable[[str, Sequence[str]], list[str]]
Walked = list[tuple[str, os.stat_result]]
#: names and their lstat, None for a name opened to be known (a link)
Selected = list[tuple[str, "os.stat_result | None"]]


def stat_key(st: os.stat_result) -> bytes:
    return _KEY.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


class FileSet(dict[str, str]):
    """Files by name and their digests; :meth:`digest` (what a cache key takes of them) is computed
    once, however many stage keys name the same set. Not to be changed once made."""

    _digest: str | None = None

    def digest(self) -> str:
        if self._digest is None:
            self._digest = files_digest(self)
        return self._digest


class KnownFiles:
    """The files a set of patterns selects, known by the one hash a cache key takes of them
    (:meth:`digest`) and their number, not by name: every name under the folders the patterns
    are looked for in has the stat it had when that set was last made, of trusted entries only
    (:meth:`FileDigests.fingerprint`). :meth:`whole` makes the set by name, from the workspace as
    it is now (what the history keeps of a key that missed)."""

    def __init__(self, digest: str, count: int, whole: Callable[[], FileSet]) -> None:
        self._digest, self._count, self._whole = digest, count, whole

    def digest(self) -> str:
        return self._digest

    def __len__(self) -> int:
        return self._count

    def whole(self) -> FileSet:
        return self._whole()


def files_digest(files: Mapping[str, str]) -> str:
    """One hash of a set of files' names and digests (the part of a cache key they make)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def glob_root(pattern: str) -> str:
    """The folder every match of a glob lies under (``src/**/*.py``: ``src``), "" for the whole
    tree: its leading components without a glob character (case-sensitive file systems only)."""
    if not sys.platform.startswith("linux"):
        return ""
    root: list[str] = []
    for part in pattern.split("/")[:-1]:
        if part in ("", ".", "..") or any(c in part for c in _GLOB):
            break
        root.append(part)
    return "/".join(root)


class FileDigests:
    """One run's file fingerprints under ``workspace`` (thread-safe: stages ask in parallel; one
    computation at a time, so that parallel stages naming the same files share it).

    ``persist``: read and write the stat cache in ``.pipekit/`` (when that folder exists: a run
    that records nothing does not create it). ``hashed`` counts the files read and hashed by this
    object, ``reused`` the digests taken from an entry without reading, ``recalled`` the sets
    known by their listings (:meth:`fingerprint`)."""

    def __init__(self, workspace: Path, *, persist: bool = True) -> None:
        self.workspace = Path(workspace)
        self.persist = persist
        self.hashed = 0
        self.reused = 0
        self.recalled = 0
        self._lock = threading.Lock()  # the fields below
        self._computing = threading.Lock()  # one digests() at a time
        self._entries: dict[str, Entry] | None = None
        self._mine: dict[str, int] = {}  # racy entries made by this run: the epoch they were made in
        self._dirty: dict[str, Entry] = {}
        self._stale: set[str] = set()
        self._epoch = 0
        self._running = 0
        self._walks: dict[tuple[str, tuple[str, ...]], Walked] = {}
        self._results: dict[tuple[str, ...], FileSet | KnownFiles] = {}

    # -- stages that write the workspace ------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held while a stage runs: what was seen of the workspace before may be stale after."""
        with self._lock:
            self._running += 1
            self._forget()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._forget()

    def _forget(self) -> None:
        self._epoch += 1
        self._walks.clear()
        self._results.clear()

    def _quiet(self, epoch: int) -> bool:
        """Whether nothing ran since ``epoch`` and nothing runs (the caller holds the lock)."""
        return self._epoch == epoch and self._running == 0

    def prefetch(self, pattern_sets: Sequence[Sequence[str]], select: Select) -> None:
        """Fingerprint these sets of patterns in a thread of their own, started now: while the run
        gets ready (the engine, the images), the walk is done by the time the first stage's key
        is made, and reused as long as no stage has run since. Errors are left to the stages."""
        sets = list(dict.fromkeys(tuple(p) for p in pattern_sets if p))
        if not sets:
            return

        def work() -> None:
            for patterns in sets:
                with contextlib.suppress(Exception):
                    self.fingerprint(patterns, select)

        # one digests() at a time: a stage that asks meanwhile waits for this one and takes its result
        threading.Thread(target=work, name="pipekit-fingerprints", daemon=True).start()

    # -- digests ------------------------------------------------------------------------------
    def digests(self, patterns: Sequence[str], select: Select) -> FileSet:
        """The digest of every regular file ``patterns`` select (as :meth:`Beneath.matching`
        selects them), by name. UnsafePath (an OSError) for a link out of the workspace. The
        same set is handed to every stage that asks while nothing runs: not to be changed."""
        key = tuple(patterns)
        with self._computing:
            with self._lock:
                done = self._results.get(key) if self._running == 0 else None
                if isinstance(done, FileSet):
                    return done
                epoch = self._epoch
            with Beneath(self.workspace) as tree:
                out, _ = self._compute(tree, patterns, select, epoch)
            self._save()
            return out

    def fingerprint(self, patterns: Sequence[str], select: Select) -> FileSet | KnownFiles:
        """What a cache key takes of the files ``patterns`` select: :meth:`digests`, or, when the
        listing of every folder they are looked for in (:func:`pipekit._core.listing.listing`:
        names and their stat, by a C walker) is what it was when that set was last made of
        trusted entries only, that set known by its digest, without an entry loaded or a name
        compared (the cached rerun of a large tree)."""
        key = ("\0known", *patterns)
        with self._computing:
            with self._lock:
                done = self._results.get(key) if self._running == 0 else None
                if done is not None:
                    return done
                epoch = self._epoch
            memo = None
            with Beneath(self.workspace) as tree:
                mark = self._mark(tree, patterns, select)
                found: FileSet | KnownFiles | None = self._recall(patterns, mark, select) if mark else None
                if found is None:
                    found, settled = self._compute(tree, patterns, select, epoch)
                    # the listings taken before and after the walk are the same: the set was made
                    # of what they list (a name renamed and back meanwhile is not remembered)
                    if mark and settled and self._mark(tree, patterns, select) == mark:
                        memo = (json.dumps(list(patterns)), mark, found.digest(), len(found))
            self._save(memo)
            with self._lock:
                if self._quiet(epoch):
                    self._results[key] = found
            return found

    def _compute(self, tree: Beneath, patterns: Sequence[str], select: Select, epoch: int) -> tuple[FileSet, bool]:
        """The set, and whether every file in it was a regular file known by a trusted entry (no
        link, none racily clean) and no other name than a regular file was selected."""
        self._load()
        selected, plain = self._select(tree, patterns, select, epoch)
        digests, settled = self._digest_all(tree, selected, epoch)
        out = FileSet(digests)
        with self._lock:
            if self._quiet(epoch):
                self._results[tuple(patterns)] = out
        return out, plain and settled

    def _mark(self, tree: Beneath, patterns: Sequence[str], select: Select) -> str | None:
        """One hash of the listings of the folders ``patterns`` are looked for in; None when they
        are not all globs (a name is opened as such, through a link too), there is no stat cache,
        or a folder could not be listed."""
        if not self.persist or not self._db_folder() or not all(any(c in p for c in "*?[") for p in patterns):
            return None
        h = hashlib.sha256(_MARK_VERSION + f"{select.__module__}.{select.__qualname__}\0".encode())
        h.update(json.dumps(list(patterns)).encode())
        for root in sorted({glob_root(p) for p in patterns}):
            h.update(b"\0\0\0" + root.encode("utf-8", "surrogateescape") + b"\0")
            parts = root.split("/") if root else []
            if parts and (parts[0].lower() in PRIVATE or any(p in GLOB_SKIP for p in parts)):
                continue  # never walked: nothing is selected there, whatever it holds
            try:
                found = listing(tree.fd, root, GLOB_SKIP)
            except (FileNotFoundError, NotADirectoryError, UnsafePath):
                h.update(b"not a folder")  # the walk selects nothing there (a file, a link, nothing)
                continue
            except OSError:
                return None
            if found is None:
                return None
            h.update(found)
        return h.hexdigest()

    def _recall(self, patterns: Sequence[str], mark: str, select: Select) -> KnownFiles | None:
        """The set known by ``mark``, None when its listings changed since it was made."""
        import sqlite3

        with contextlib.suppress(sqlite3.Error, OSError):
            db = self._db()
            if db is None:
                return None
            try:
                row = db.execute(
                    "SELECT mark, digest, count FROM sets WHERE patterns = ?", (json.dumps(list(patterns)),)
                )
                found = row.fetchone()
            finally:
                db.close()
            if found is not None and found[0] == mark:
                with self._lock:
                    self.recalled += 1
                return KnownFiles(found[1], found[2], lambda: self.digests(patterns, select))
        return None

    def _select(self, tree: Beneath, patterns: Sequence[str], select: Select, epoch: int) -> tuple[Selected, bool]:
        """The names selected, each with its lstat when it is a regular file, or with None (a link,
        or a path named as such: opened by name, a link on the way resolved as Beneath does); and
        whether only globs selected them and none is a link (whatever it points to)."""
        plain = True
        found: Selected = []
        links: list[str] = []
        for pattern in patterns:
            if any(c in pattern for c in "*?["):
                walked = self._glob_walk(tree, glob_root(pattern), epoch)
                names = set(select(pattern, [n for n, _ in walked]))
                entries = [(n, st) for n, st in walked if n in names] if len(names) < len(walked) else walked
                plain = plain and not any(stat.S_ISLNK(st.st_mode) for _, st in entries)
            else:
                plain = False
                name = posixpath.normpath(pattern)
                kind = tree.kind(name)
                if kind == "file":
                    links.append(name)
                    continue
                entries = self._walk(tree, name, (), epoch) if kind == "dir" else []
            found.extend(e for e in entries if stat.S_ISREG(e[1].st_mode))
            links.extend(n for n, st in entries if stat.S_ISLNK(st.st_mode) and tree.kind(n) == "file")
        if len(patterns) == 1 and not links:
            return found, plain
        merged = dict(found)
        for n in links:
            merged.setdefault(n, None)
        return list(merged.items()), plain

    def _glob_walk(self, tree: Beneath, root: str, epoch: int) -> Walked:
        """What a glob's walk sees under ``root`` (every match lies there): the whole tree's walk
        would find the same names there, so the walk starts there when ``root`` is a real folder
        on a way of real folders; nothing when that way goes through a folder a walk skips."""
        parts = root.split("/") if root else []
        if parts and (parts[0].lower() in PRIVATE or any(p in GLOB_SKIP for p in parts)):
            return []
        try:
            for i in range(len(parts)):
                if not stat.S_ISDIR(os.stat("/".join(parts[: i + 1]), dir_fd=tree.fd, follow_symlinks=False).st_mode):
                    return []  # a file, or a link: the whole tree's walk enters no link
        except FileNotFoundError:
            return []
        except OSError:
            root = ""
        try:
            return self._walk(tree, root, GLOB_SKIP, epoch)
        except (UnsafePath, FileNotFoundError, NotADirectoryError):  # changed meanwhile
            return [(n, st) for n, st in self._walk(tree, "", GLOB_SKIP, epoch) if n.startswith(root + "/")]

    def _walk(self, tree: Beneath, rel: str, skip: tuple[str, ...], epoch: int) -> Walked:
        with self._lock:
            done = self._walks.get((rel, skip)) if self._quiet(epoch) else None
        if done is not None:
            return done
        walked = tree.scan(rel, skip)
        with self._lock:
            if self._quiet(epoch):
                self._walks[(rel, skip)] = walked
            entries = self._entries or {}
            if skip == GLOB_SKIP and len(entries) > len(walked):  # some entries are of files gone
                seen = {n for n, _ in walked}
                under = rel + "/" if rel else ""
                self._stale |= {
                    p for p in entries if p.startswith(under) and p not in seen and "__pycache__" not in p.split("/")
                }
        return walked

    def _digest_all(self, tree: Beneath, found: Selected, epoch: int) -> tuple[dict[str, str], bool]:
        """Digests by name: an entry's when the file's stat is the entry's and the entry can be
        trusted (not racily clean, or made by this run with nothing run since); read otherwise.
        And whether every one is now known by an entry not racily clean."""
        out: dict[str, str] = {}
        todo: list[str] = []
        racy = 0
        with self._lock:
            entries = self._entries if self._entries is not None else {}
            mine = self._mine if self._quiet(epoch) else {}
            pack = _KEY.pack
            for name, st in found:
                e = entries.get(name)
                if (
                    e is not None
                    and st is not None
                    and e[1] == pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
                    and (e[3] or mine.get(name) == epoch)
                ):
                    out[name] = e[2]
                    racy += not e[3]
                else:
                    todo.append(name)
            self.reused += len(found) - len(todo)
        for name in todo:
            out[name], trusted = self._read(tree, name, epoch)
            racy += not trusted
        return out, racy == 0

    def _read(self, tree: Beneath, name: str, epoch: int) -> tuple[str, bool]:
        """Hash one file, opened through ``tree`` (a link resolved inside); recorded when it was
        not written while it was read. And whether it is known by a trusted entry now."""
        fd = tree.open(name)
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"{name} is not a regular file")
            before = stat_key(st)
            with self._lock:  # a link's target may be known by its own stat
                e = (self._entries or {}).get(name)
                if (
                    e is not None
                    and e[1] == before
                    and (e[3] or (self._quiet(epoch) and self._mine.get(name) == epoch))
                ):
                    self.reused += 1
                    return e[2], bool(e[3])
            os.set_blocking(fd, True)
            hashed_ns = time.time_ns()
            digest = _hash(f)
            unchanged = stat_key(os.fstat(fd)) == before
        trusted = unchanged and max(st.st_mtime_ns, st.st_ctime_ns) < hashed_ns - RACY_NS
        with self._lock:
            self.hashed += 1
            if unchanged and self._entries is not None:
                self._entries[name] = self._dirty[name] = (name, before, digest, int(trusted))
                if not trusted:
                    self._mine[name] = epoch
        return digest, trusted

    # -- the stat cache in .pipekit/ ----------------------------------------------------------
    def _db(self) -> sqlite3.Connection | None:
        """The stat cache's database, or None when there is no real ``.pipekit/`` folder (a link
        there, or at the file's own place, is refused: SQLite's ``nofollow``)."""
        import sqlite3

        if not self._db_folder():
            return None
        path = self.workspace / PRIVATE[0] / DB_NAME
        # made here, owner only, never through a link (SQLite would create it through a dangling
        # one); SQLite's ``nofollow`` refuses a link put there afterwards
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        uri = "file:" + str(path).replace("?", "%3f").replace("#", "%23") + "?nofollow=1"
        db = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute(_SCHEMA)  # opens the file: not through a link
            db.execute(_SETS)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _db_folder(self) -> bool:
        """Whether the stat cache is used: a real ``.pipekit/`` folder (not a link) is there."""
        try:
            return self.persist and stat.S_ISDIR(os.lstat(self.workspace / PRIVATE[0]).st_mode)
        except OSError:
            return False

    def _load(self) -> None:
        """Read the stat cache once (a damaged or unreadable one counts as empty: it is a cache)."""
        if self._entries is not None:
            return
        import sqlite3

        self._entries = {}
        with contextlib.suppress(sqlite3.Error, OSError):
            db = self._db()
            if db is None:
                return
            try:
                self._entries = {r[0]: r for r in db.execute("SELECT path, stat, digest, trusted FROM files")}
            finally:
                db.close()

    def _save(self, memo: tuple[str, str, str, int] | None = None) -> None:
        """Write what was hashed since the last save, forget the files found gone, remember the
        set ``memo`` (patterns, mark, digest, count) (best effort: a locked or read-only cache
        only means hashing again next time)."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            stale, self._stale = self._stale, set()
            for name in stale:
                (self._entries or {}).pop(name, None)
        if not dirty and not stale and memo is None:
            return
        import sqlite3

        rows = list(dirty.values())
        with contextlib.suppress(sqlite3.Error, OSError):
            db = self._db()
            if db is None:
                return
            try:
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany("DELETE FROM files WHERE path = ?", [(name,) for name in stale])
                    db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", rows)
                    if memo is not None:
                        db.execute("INSERT OR REPLACE INTO sets VALUES (?, ?, ?, ?)", memo)
            finally:
                db.close()


def _hash(f: Any) -> str:
    """BLAKE3 of an open file, read in 1 MiB pieces."""
    from blake3 import blake3

    h = blake3()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)
        if not n:
            break
        h.update(view[:n])
    return "b3:" + h.hexdigest()

"""``pipekit cache`` for the shared cache (``--cache-registry``): the registry's entries of this
project listed, one inspected, old ones pruned. ``pipekit._cli.history``'s ``cache`` command calls it."""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import IO, Any

from pipekit._dsl.control import parse_duration
from pipekit._dsl.secrets import SecretStore
from pipekit._history.remote import EntryInfo, RegistryCache, Tampered, tag_of
from pipekit._run.sharedcache import cache_login, open_shared_cache
from pipekit.exceptions import PipekitError, UsageError

__all__ = ["registry_cache"]


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KB"
    for bigger in ("MB", "GB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def _open(args: SimpleNamespace, mode: str) -> RegistryCache:
    secrets = SecretStore.from_file(getattr(args, "secrets_file", None))
    return open_shared_cache(args.cache_registry, mode, cache_login(secrets, None))


def registry_cache(args: SimpleNamespace, out: IO[str]) -> int:
    """``list``, ``inspect ENTRY`` or ``prune --remote`` on the registry of ``--cache-registry``."""
    if not args.cache_registry:
        raise UsageError(
            "pipekit cache --remote needs the registry: --cache-registry REGISTRY/REPO (or PIPEKIT_CACHE_REGISTRY,"
            " or cache-registry in [tool.pipekit])"
        )
    cache = _open(args, "readwrite" if args.action == "prune" else "read")
    try:
        entries = cache.entries()
        if args.action == "list":
            _list(cache, entries, out)
            return 1 if any(e.problem for e in entries) else 0
        elif args.action == "inspect":
            _inspect(cache, _one(entries, args.entry), out)
        else:
            _prune(cache, entries, args, out)
    finally:
        cache.close()
    return 0


def _list(cache: RegistryCache, entries: Sequence[EntryInfo], out: IO[str]) -> None:
    total = sum(e.size for e in entries)
    print(f"{len(entries)} entries in registry {cache.target} ({_size(total)})", file=out)
    for e in entries:
        key = e.tag.split("-", 1)[1][:12]
        if e.problem:
            print(f"  {key}  unreadable: {e.problem}", file=out)
            continue
        print(
            f"  {key}  {e.stage}  run {e.run_id} on {e.host}  {e.created or '-'}  {_size(e.size)}",
            file=out,
        )


def _one(entries: Sequence[EntryInfo], ref: str | None) -> EntryInfo:
    if not ref:
        raise UsageError("pipekit cache inspect --remote ENTRY: give an entry's key (or its first characters)")
    ref = ref.removeprefix("pk1-")
    found = [e for e in entries if e.tag.split("-", 1)[1].startswith(ref)]
    if len(found) != 1:
        what = "no entry" if not found else f"{len(found)} entries"
        raise UsageError(
            f"{what} of the registry cache has a key starting with {ref!r}; `pipekit cache list` shows them"
        )
    return found[0]


def _inspect(cache: RegistryCache, info: EntryInfo, out: IO[str]) -> None:
    key = info.tag.split("-", 1)[1]
    try:
        entry = cache.fetch(key, info.stage, layers=False)
    except Tampered as e:
        raise UsageError(f"the entry {key[:12]} does not hold together: {e}") from None
    if entry is None:
        raise UsageError(f"the entry {key[:12]} is gone from {cache.target}")
    rows: list[tuple[str, Any]] = [
        ("key", key),
        ("tag", tag_of(key)),
        ("manifest", info.digest),
        ("pipeline", entry.pipeline),
        ("stage", entry.stage),
        ("run", entry.run_id),
        ("host", entry.host),
        ("created", info.created),
        ("size", _size(info.size)),
        ("result", entry.output_json if len(entry.output_json) <= 200 else entry.output_json[:200] + "..."),
        ("files", ", ".join(entry.file_names) or "-"),
    ]
    if entry.tests:
        rows.append(("tests", f"{entry.tests.get('tests')} tests, {entry.tests.get('failures')} failures"))
    for name, value in rows:
        print(f"{name + ':':<10} {value}", file=out)


def _age(text: str) -> float | None:
    """``30d``, ``12h``, ``90m``... in seconds."""
    try:
        if text.strip().endswith("d") and text.strip()[:-1].replace(".", "", 1).isdigit():
            return float(text.strip()[:-1]) * 86400
        return parse_duration(text, "--older-than")
    except PipekitError as e:
        raise UsageError(f"{e}; days too: '30d'") from None


def _prune(cache: RegistryCache, entries: Sequence[EntryInfo], args: SimpleNamespace, out: IO[str]) -> None:
    older = _age(args.older_than) if args.older_than else None
    now = time.time()
    chosen = []
    for e in entries:
        if (args.stage and e.stage != args.stage) or not e.digest:
            continue
        if older is not None:
            try:
                created: float = calendar.timegm(time.strptime(e.created, "%Y-%m-%dT%H:%M:%SZ"))
            except ValueError:
                created = now
            if now - created < older:
                continue
        chosen.append(e)
    removed = 0
    for e in chosen:
        try:
            cache.delete(e.digest)
        except PipekitError as err:
            print(f"removed {removed} entries from {cache.target}; stopped: {err}", file=out)
            raise
        removed += 1
    print(f"removed {removed} entries from registry {cache.target}", file=out)

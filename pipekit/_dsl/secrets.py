"""Secrets: ``pk.secret("NAME")`` references, the run's store, and the masker.

A :class:`Secret` is only a name. Its value is looked up when a stage uses it, in the
environment or the ``--secrets-file`` (dotenv), so a missing secret fails only the stages that
need it. Every value looked up, and every value of the secrets file, is masked as ``***`` in all
log output and in error messages.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pipekit.exceptions import SecretMissing, UsageError

__all__ = ["Credentials", "MASK", "Masker", "Secret", "SecretStore", "parse_dotenv", "secret"]

MASK = "***"
MIN_LENGTH = 4  # shorter values are not masked (they would hide every "1" of the output), as GitLab refuses them
MIN_FRAGMENT = 4  # lines of a multi-line secret shorter than this are not masked on their own


def encoded_forms(value: str) -> set[str]:
    """The forms a secret's value takes when a tool prints it encoded: base64 (standard and
    URL-safe, with and without padding); URL-encoded (``quote`` with and without ``/`` kept,
    ``quote_plus``, upper- and lower-case hex); escaped inside a JSON string (``\\uXXXX`` escapes
    in either case, or raw UTF-8 as ``ensure_ascii=False`` writes it; ``/`` plain or as ``\\/``)."""
    import base64
    import json
    from urllib.parse import quote, quote_plus

    raw = value.encode()
    urls = {quote(value, safe=""), quote(value), quote_plus(value), quote_plus(value, safe="/")}
    urls |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), u) for u in urls}
    jsons = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    jsons |= {j.replace("/", "\\/") for j in jsons}
    jsons |= {re.sub(r"\\u[0-9a-f]{4}", lambda m: "\\u" + m.group()[2:].upper(), j) for j in jsons}
    forms = urls | jsons
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode()
        forms |= {text, text.rstrip("=")}
    return {f for f in forms if f != value and len(f) >= MIN_LENGTH}


@attrs.frozen(repr=False)
class Secret:
    """A reference to a secret value, resolved at run time. It refuses to become text."""

    name: str
    #: False: the value is not secret (a user name): it is not masked, and never warned about
    mask: bool = attrs.field(default=True, kw_only=True)

    def __str__(self) -> str:
        raise TypeError(
            f"pk.secret({self.name!r}) cannot be turned into text. Pass it where pipekit takes"
            " secrets (ctx.sh(env=...), pk.Credentials, build secrets=...), or use"
            f" ctx.secret({self.name!r}) to get the value, which is then masked in logs"
        )

    def __format__(self, spec: str) -> str:
        return self.__str__()

    def __repr__(self) -> str:
        return f"Secret(name={self.name!r}{'' if self.mask else ', mask=False'})"


def secret(name: str, *, mask: bool = True) -> Secret:
    """Refer to a secret by name: read at run time from the environment or ``--secrets-file``.
    ``mask=False`` declares a value that is not secret (a registry user name): it is read the same
    way, but not masked in logs (and not warned about when it is too short to mask)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"a secret's name is an environment variable name, got {name!r}")
    if not isinstance(mask, bool):
        raise ValueError(f"pk.secret({name!r}, mask=...) takes True or False, got {mask!r}")
    return Secret(name, mask=mask)


@attrs.frozen(repr=False)
class Credentials:
    """A registry login; either field may be a :class:`Secret`."""

    username: str | Secret
    password: str | Secret
    registry: str | None = None

    def __repr__(self) -> str:
        user = f"secret {self.username.name}" if isinstance(self.username, Secret) else repr(self.username)
        return f"Credentials(username={user}, password=***)"


MAX_SECRETS_FILE = 1 << 20  # a secrets file is small: anything bigger is a mistake (or /dev/zero)


def parse_dotenv(path: Path) -> dict[str, str]:
    """Read a dotenv file with python-dotenv's rules: ``KEY=VALUE``, ``export``, single and double
    quotes (a double-quoted value may span lines and use escapes), ``#`` comments. Values are
    taken as written: ``${VAR}`` is not expanded."""
    import io

    from dotenv.parser import parse_stream

    try:
        if not os.path.lexists(path):
            raise UsageError(f"The secrets file {path} does not exist; give a dotenv file of KEY=VALUE lines")
        if not path.is_file() or path.stat().st_size > MAX_SECRETS_FILE:
            what = "is not a regular file" if not path.is_file() else "is larger than 1 MiB"
            raise UsageError(f"The secrets file {path} {what}; give a dotenv file of KEY=VALUE lines")
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"Cannot read the secrets file {path}: {e.strerror}") from e
    except UnicodeDecodeError:
        raise UsageError(f"The secrets file {path} is not text; give a dotenv file of KEY=VALUE lines") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.key is None and not binding.error:
            continue  # a blank line or a comment
        if binding.error or binding.value is None or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", binding.key or ""):
            line = binding.original.line
            raise UsageError(f"{path}:{line}: expected KEY=VALUE (the line's value is not shown)")
        values[str(binding.key)] = binding.value
    return values


class Masker:
    """Replaces every known secret value (and its encoded forms) with ``***``; usable as a structlog
    processor. Values shorter than 4 characters are not masked: :meth:`add` returns False."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._needles: tuple[str, ...] = ()
        #: called with each value newly masked (and its encoded forms) before :meth:`add` returns:
        #: a CI that masks on its side (GitHub's ``::add-mask::``) hears of it before any use
        self.listeners: list[Callable[[list[str]], None]] = []

    @property
    def values(self) -> list[str]:
        """Every text masked so far (values and their encoded forms)."""
        return list(self._needles)

    def add(self, value: str) -> bool:
        if len(value) < MIN_LENGTH:
            return False
        parts = {value} | encoded_forms(value)
        if "\n" in value or "\r" in value:
            parts |= {p.strip() for p in value.splitlines() if len(p.strip()) >= MIN_FRAGMENT}
        with self._lock:
            new = sorted(parts - set(self._needles))
            self._needles = tuple(sorted(set(self._needles) | parts, key=len, reverse=True))
        if new:
            for listener in list(self.listeners):
                listener(new)
        return True

    def mask(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text

    def mask_any(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: self.mask_any(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.mask_any(v) for v in value)
        return value

    def batch_lines(self, _stage: str, _stream: str, lines: list[str]) -> list[str]:
        """The batch form: a batch of output lines masked at once (a value that spans lines too)."""
        if not self._needles:
            return lines
        text = "\n".join(lines)
        masked = self.mask(text)
        return lines if masked is text else masked.split("\n")

    def __call__(self, _logger: Any, _name: str, event_dict: Any) -> Any:
        if not self._needles:
            return event_dict
        for key, value in list(event_dict.items()):
            event_dict[key] = self.mask_any(value)
        return event_dict


class SecretStore:
    """The run's secrets: the environment, overlaid by the secrets file; every value read is masked."""

    def __init__(
        self,
        masker: Masker | None = None,
        *,
        file_values: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        files: Sequence[str] = (),
    ) -> None:
        self.masker = masker or Masker()
        self._file = dict(file_values or {})
        #: the secrets files read (absolute): kept out of build contexts and stages' workspaces
        self.files = tuple(os.path.abspath(f) for f in files)
        self._environ = environ if environ is not None else os.environ
        #: names of secrets too short to mask; the run warns about each once, when a stage first
        #: uses it (``on_unmasked``: after the run's first line, in the run's log)
        self.unmasked: set[str] = set()
        self._warned: set[str] = set()
        self.on_unmasked: Callable[[str], None] = lambda name: None
        for name, value in self._file.items():
            self._mask(name, value)

    def _mask(self, name: str, value: str) -> None:
        if value and not self.masker.add(value):
            self.unmasked.add(name)

    def _warn_unmasked(self, name: str) -> None:
        if name in self.unmasked and name not in self._warned:
            self._warned.add(name)
            self.on_unmasked(name)

    @classmethod
    def from_file(cls, path: str | Path | None, masker: Masker | None = None) -> SecretStore:
        return cls(masker, file_values=parse_dotenv(Path(path)) if path else {}, files=(str(path),) if path else ())

    def get(self, name: str, *, stage: str, mask: bool = True) -> str:
        value = self._file.get(name)
        if value is None:
            value = self._environ.get(name)
        if value is None:
            raise SecretMissing(name, stage=stage)
        if mask:
            self._mask(name, value)
            self._warn_unmasked(name)
        return value

    def has(self, name: str) -> bool:
        """Whether the secret is set (in the secrets file or the environment)."""
        return name in self._file or name in self._environ

    def preload(self, names: set[str]) -> None:
        """Mask the values of these secrets from the start, when they are set."""
        for name in names:
            value = self._file.get(name, self._environ.get(name))
            if value:
                self._mask(name, value)

    def resolve(self, value: str | Secret, *, stage: str) -> str:
        return self.get(value.name, stage=stage, mask=value.mask) if isinstance(value, Secret) else value

    def resolve_env(self, env: Mapping[str, Any], *, stage: str) -> dict[str, str]:
        return {str(k): self.resolve(v, stage=stage) if isinstance(v, Secret) else str(v) for k, v in env.items()}

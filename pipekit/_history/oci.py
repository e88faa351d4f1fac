"""A small client of the OCI Distribution HTTP API, for the shared stage cache (``_history/remote.py``).

pipekit talks to the registry itself (over ``requests``) rather than through the ``oras`` package:
it needs only seven calls (manifest get/put/delete, blob get/head/upload, the tag list), it must
bound every call by a timeout and turn every failure into one of pipekit's registry errors (a cache
that cannot be reached is a miss, never a failed run), and it verifies each blob's digest as it
streams, in memory, before anything reaches the workspace.

Authentication as Docker's own client does it: a first request without credentials; on a 401,
``WWW-Authenticate: Basic`` (a plain ``registry`` with htpasswd, Harbor) sends the login with each
request, ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` (Docker Hub, GHCR, GitLab, ECR
through its token) asks the realm for a token with the login (or anonymously) and sends that.
The password never appears in an error or a log line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from pipekit.exceptions import RegistryAuthError, RegistryError, RegistryUnavailable

__all__ = ["BlobMismatch", "OciClient", "parse_target"]

MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json"
MAX_MANIFEST = 4 << 20  # a manifest larger than this is not one of pipekit's
CHUNK = 1 << 20
MAX_ANSWER = 1 << 20  # an error's text or a token service's answer: read no further than this
MAX_TAG_PAGE = 8 << 20  # one page of the tag list (1000 tags of ~70 bytes: ~70 kB)
MAX_PAGES = 1000  # pages of the tag list followed at most (a million tags)
MIN_DEADLINE = 30.0  # seconds a manifest or blob may take in all (not per read), plus 1 s per MiB of it
MIN_RATE = 1 << 20


class BlobMismatch(RegistryError):
    """A blob (or manifest) whose bytes do not match its digest or size: tampered or damaged."""


def parse_target(target: str) -> tuple[str, str, str]:
    """``REGISTRY/REPO`` (or ``http://REGISTRY/REPO``) → (base URL, registry, repository). A
    loopback registry speaks plain HTTP, as the Docker engine assumes; any other one HTTPS unless
    the address starts with ``http://``."""
    text = target.strip()
    scheme = None
    match = re.match(r"^(https?)://", text)
    if match:
        scheme, text = match.group(1), text[match.end() :]
    host, sep, repo = text.strip("/").partition("/")
    repo = repo.strip("/")
    if not sep or not host or not repo or not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*", repo):
        from pipekit.exceptions import UsageError

        raise UsageError(
            f"--cache-registry {target!r} is not REGISTRY/REPOSITORY (for example ghcr.io/acme/app-cache or"
            " 127.0.0.1:5000/pipekit-cache): a registry address, then a lowercase repository path"
        )
    if scheme is None:
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        scheme = "http" if name == "localhost" or _loopback(name) else "https"
    return f"{scheme}://{host}", host, repo


def _loopback(name: str) -> bool:
    """A loopback IP address (``127.0.0.1``, ``[::1]``), not a host name that looks like one (``127.example.com``)."""
    import ipaddress

    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int | None]:
    """scheme, host and port of a URL (the port a scheme implies made explicit)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), port or {"http": 80, "https": 443}.get(scheme)


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


class OciClient:
    """One repository of one registry. ``auth``: (user, password) or None (anonymous);
    ``timeout``: (connect, read) seconds for every request."""

    def __init__(
        self, target: str, auth: tuple[str, str] | None = None, timeout: tuple[float, float] = (3.0, 10.0)
    ) -> None:
        import requests

        self.base, self.registry, self.repo = parse_target(target)
        self.target = f"{self.registry}/{self.repo}"
        self._auth = auth
        self._timeout = timeout
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "pipekit-cache"
        # The environment is read once, not on every request (requests would read the proxy
        # variables and ~/.netrc each time: a few ms per request): proxies per host, the CA bundle.
        self._session.trust_env = False
        self._session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._proxies: dict[str, dict[str, str]] = {}
        self._basic = False
        self._tokens: dict[str, str] = {}

    def close(self) -> None:
        self._session.close()

    # -- requests and authentication --------------------------------------------------------
    def _request(self, method: str, url: str, *, push: bool = False, **kwargs: Any) -> Any:
        import requests

        scope = f"repository:{self.repo}:{'pull,push' if push else 'pull'}"
        if not url.startswith("http"):
            url = f"{self.base}/v2/{self.repo}/{url}"
        elif _origin(url) != _origin(self.base):  # the login goes to the registry's own origin only
            raise RegistryError(
                f"Registry {self.registry} sent pipekit to another host ({_origin(url)[1]}): not followed",
                registry=self.registry,
                reference=self.target,
            )
        kwargs.setdefault("timeout", self._timeout)
        kwargs.setdefault("stream", True)  # every body is read by pipekit, within a limit
        try:
            response = self._send(method, url, scope, kwargs)
            if response.status_code == 401:
                _discard(response)
                self._answer(response.headers.get("WWW-Authenticate", ""), scope)
                response = self._send(method, url, scope, kwargs)
        except requests.RequestException as e:
            raise RegistryUnavailable(
                f"Cannot reach registry {self.registry} ({type(e).__name__}: {_short(e)})",
                registry=self.registry,
                reference=self.target,
            ) from None
        if response.status_code in (401, 403):
            _discard(response)
            who = "without a login" if self._auth is None else "with the login given"
            raise RegistryAuthError(
                f"Registry {self.registry} refused to let pipekit {'push to' if push else 'read'} {self.target} {who}"
                f" (HTTP {response.status_code}). Set PIPEKIT_REGISTRY_USER and PIPEKIT_REGISTRY_PASSWORD"
                " (a token with the right scope)",
                registry=self.registry,
                reference=self.target,
            )
        return response

    def _send(self, method: str, url: str, scope: str, kwargs: dict[str, Any]) -> Any:
        """One request, with what the registry asked for so far (the caller's headers kept as given)."""
        headers = dict(kwargs.get("headers") or {})
        token = self._tokens.get(scope)
        auth = self._auth if self._basic and token is None else None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        rest = {k: v for k, v in kwargs.items() if k != "headers"}
        return self._session.request(method, url, headers=headers, auth=auth, proxies=self._proxies_for(url), **rest)

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The proxies the environment gives this URL's host (``HTTPS_PROXY``, ``NO_PROXY``...), once per host."""
        from urllib.parse import urlsplit

        import requests

        host = urlsplit(url).netloc
        found = self._proxies.get(host)
        if found is None:
            found = self._proxies[host] = dict(requests.utils.get_environ_proxies(url))
        return found

    def _answer(self, header: str, scope: str) -> None:
        """Take up the registry's challenge: Basic with the login, or a Bearer token from its realm."""
        import requests

        scheme, params = _challenge(header)
        if scheme == "basic":
            self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            return  # answered below as refused
        query = {"service": params.get("service", self.registry), "scope": params.get("scope", scope)}
        realm = params["realm"]
        # the login never goes in clear text to a token service of an HTTPS registry
        auth = self._auth if realm.startswith("https://") or self.base.startswith("http://") else None
        response = self._session.get(
            realm, params=query, auth=auth, timeout=self._timeout, proxies=self._proxies_for(realm), stream=True
        )
        if response.status_code != 200:
            _discard(response)
            return
        try:
            body = json.loads(_read(response, MAX_ANSWER) or b"-")
        except (ValueError, requests.RequestException):
            return
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if isinstance(token, str):
            self._tokens[scope] = token

    def _failed(self, response: Any, what: str) -> RegistryError:
        text = ""
        if response.headers.get("Content-Type", "").startswith(("application/json", "text/")):
            try:  # the start of its text only: an error answer may never end
                text = (_read(response, 4096, whole=False) or b"").decode("utf-8", "replace")[:200].strip()
            except Exception:
                text = ""
        response.close()
        return RegistryError(
            f"Registry {self.registry} failed to {what} (HTTP {response.status_code}{': ' + text if text else ''})",
            registry=self.registry,
            reference=self.target,
        )

    # -- reading ---------------------------------------------------------------------------
    def manifest(self, ref: str) -> tuple[str, bytes] | None:
        """The manifest of a tag (or digest): its digest and bytes, verified; None when there is none."""
        response = self._request("GET", f"manifests/{ref}", headers={"Accept": MANIFEST_TYPES}, stream=True)
        if response.status_code == 404:
            _discard(response)
            return None
        if response.status_code != 200:
            raise self._failed(response, f"read manifest {ref}")
        body = b"".join(self._chunks(response, MAX_MANIFEST, ref))
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        said = response.headers.get("Docker-Content-Digest")
        if (ref.startswith("sha256:") and ref != digest) or (said and said.startswith("sha256:") and said != digest):
            raise BlobMismatch(
                f"the manifest {ref} in {self.target} does not match its digest", registry=self.registry, reference=ref
            )
        return digest, body

    def blob(self, digest: str, size: int) -> bytes:
        """A blob's bytes, checked against its digest and size (BlobMismatch otherwise)."""
        response = self._request("GET", f"blobs/{digest}", stream=True)
        if response.status_code != 200:
            raise self._failed(response, f"read blob {digest}")
        hasher, parts, total = hashlib.sha256(), [], 0
        for chunk in self._chunks(response, size, digest):
            hasher.update(chunk)
            parts.append(chunk)
            total += len(chunk)
        if total != size or "sha256:" + hasher.hexdigest() != digest:
            raise BlobMismatch(
                f"blob {digest} in {self.target} does not match its digest (tampered or damaged)",
                registry=self.registry,
                reference=digest,
            )
        return b"".join(parts)

    def _chunks(self, response: Any, limit: int, what: str) -> Iterator[bytes]:
        """The body in pieces, at most ``limit`` bytes, within MIN_DEADLINE + 1 s per MiB of ``limit``
        in all: a registry that sends a byte now and then ends as a slow one (RegistryUnavailable)."""
        import requests
        import urllib3

        allowed = MIN_DEADLINE + limit / MIN_RATE
        total, deadline = 0, time.monotonic() + allowed
        try:
            for chunk in _pieces(response):
                total += len(chunk)
                if total > limit:
                    raise BlobMismatch(
                        f"{what} in {self.target} is larger than it should be",
                        registry=self.registry,
                        reference=what,
                    )
                if time.monotonic() > deadline:
                    raise RegistryUnavailable(
                        f"Registry {self.registry} sends {what} too slowly (not all in {allowed:.0f} s)",
                        registry=self.registry,
                        reference=self.target,
                    )
                yield chunk
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise RegistryUnavailable(
                f"Registry {self.registry} stopped sending {what} ({type(e).__name__})",
                registry=self.registry,
                reference=self.target,
            ) from None
        finally:
            response.close()

    @property
    def wait_s(self) -> float:
        """The longest one request may take (connect and read timeouts)."""
        return float(self._timeout[0] + self._timeout[1])

    def tags(self) -> list[str]:
        """Every tag of the repository (following the ``Link`` pages); none when it does not exist."""
        found = self.tags_within(None)
        assert found is not None
        return found

    def tags_within(self, pages: int | None) -> list[str] | None:
        """The repository's tags, or None when they take more than ``pages`` pages of 1000."""
        url: str | None = "tags/list?n=1000"
        found: list[str] = []
        asked: set[str] = set()
        while url:
            if pages is not None:
                if pages == 0:
                    return None
                pages -= 1
            if url in asked or len(asked) >= MAX_PAGES:  # a list that never ends, or goes round
                raise self._broken(f"its tag list goes on past {len(asked)} pages, or links back to a page it gave")
            asked.add(url)
            response = self._request("GET", url)
            if response.status_code == 404:
                _discard(response)
                return found
            if response.status_code != 200:
                raise self._failed(response, "list tags")
            found.extend(self._tag_page(response))
            following = response.links.get("next", {}).get("url")
            url = f"{self.base}{following}" if following and following.startswith("/") else following
        return found

    def _tag_page(self, response: Any) -> list[str]:
        """The tags of one page of the list; RegistryError when it is not one (or too large to be)."""
        import requests

        try:
            body = json.loads(_read(response, MAX_TAG_PAGE) or b"-")
        except requests.RequestException as e:
            raise RegistryUnavailable(
                f"Registry {self.registry} stopped sending its tag list ({type(e).__name__})",
                registry=self.registry,
                reference=self.target,
            ) from None
        except ValueError:
            body = None
        tags = body.get("tags") if isinstance(body, dict) else 0
        if not isinstance(tags, list | None) or not all(isinstance(t, str) for t in tags or []):
            raise self._broken("its tag list is not one (not JSON, not a list of names, or too large)")
        return tags or []

    def _broken(self, what: str) -> RegistryError:
        return RegistryError(f"Registry {self.registry}: {what}", registry=self.registry, reference=self.target)

    # -- writing ---------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        response = self._request("HEAD", f"blobs/{digest}", push=True)
        _discard(response)
        return response.status_code == 200  # type: ignore[no-any-return]

    def put_blob(self, data: bytes) -> str:
        """Upload a blob (monolithic: POST, then PUT with its digest) unless the registry has it."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.has_blob(digest):
            return digest
        start = self._request("POST", "blobs/uploads/", push=True)
        if start.status_code not in (201, 202) or "Location" not in start.headers:
            raise self._failed(start, "start a blob upload")
        _discard(start)
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        done = self._request(
            "PUT",
            f"{location}{sep}digest={digest}",
            push=True,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise self._failed(done, f"upload blob {digest}")
        _discard(done)
        return digest

    def put_manifest(self, tag: str, body: bytes) -> str:
        response = self._request(
            "PUT", f"manifests/{tag}", push=True, data=body, headers={"Content-Type": MANIFEST_TYPES}
        )
        if response.status_code not in (200, 201):
            raise self._failed(response, f"store manifest {tag}")
        _discard(response)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def delete_manifest(self, digest: str) -> None:
        response = self._request("DELETE", f"manifests/{digest}", push=True)
        if response.status_code == 405:
            _discard(response)
            raise RegistryError(
                f"Registry {self.registry} does not allow deleting (HTTP 405): enable deletes in its configuration"
                " (Distribution: storage.delete.enabled) or let its own retention policy remove old entries",
                registry=self.registry,
                reference=digest,
            )
        if response.status_code not in (200, 202, 404):
            raise self._failed(response, f"delete {digest}")
        _discard(response)


def _pieces(response: Any) -> Iterator[bytes]:
    """A streamed body as it comes (each piece one read of the socket: a deadline can be checked
    between them, however slowly the bytes arrive); its connection is used again at the end."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 < 2: pieces of CHUNK bytes
        yield from response.iter_content(CHUNK)
        return
    while True:
        piece = read1(CHUNK, decode_content=True)
        if not piece:
            response.raw.release_conn()
            return
        yield piece


def _read(response: Any, limit: int, *, whole: bool = True) -> bytes | None:
    """At most ``limit`` bytes of a (streamed) answer's body, then the answer closed. ``whole``:
    None when the body is longer; else its first ``limit`` bytes."""
    data = bytearray()
    try:
        for chunk in response.iter_content(min(limit, CHUNK)):
            data += chunk
            if len(data) > limit:
                return None if whole else bytes(data[:limit])
        return bytes(data)
    finally:
        response.close()


def _discard(response: Any) -> None:
    """An answer whose body is not used: read when it is short (its connection is used again), else dropped."""
    try:
        _read(response, 64 << 10)
    except Exception:
        response.close()


def _short(e: Exception) -> str:
    text = str(e)
    # requests repeats the whole URL and pool state: keep the reason at the end
    match = re.search(r"(Connection refused|timed out|Name or service not known|Remote end closed[^'\")]*)", text)
    return match.group(1) if match else text[:160]

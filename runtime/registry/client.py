"""One registry, as rewarm speaks to it: oras-py's Registry for requests, auth and blob calls,
with the rules a node needs around it.

- Credentials come from one docker-format auth file: `registry_auth_file`, else $REGISTRY_AUTH_FILE
  (Podman's variable), else $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
- TLS is checked against `registry_ca_file` when set. Plain HTTP only for a loopback registry the
  caller names explicitly (`plain_http_registries` or `--plain-http`).
- The auth scheme is the one the registry asks for: Basic (htpasswd) or Bearer tokens. oras's token
  backend turns a Basic challenge into a token request to the realm, which fails after minutes of
  retries, so the scheme is read from the registry's own challenge once.
- oras retries any error for about two minutes (sleeps of 2 + 3^n s); a node must fail fast and
  fall back to a cold start, so requests go through oras's undecorated request function with a
  short retry of connection errors and 5xx only, and every request has a timeout.
- The registry is not trusted with the node's memory or time:
  - every body is read with its limit enforced as it arrives (`read_body`): a manifest, a small
    blob (at most its descriptor's size), an error, a redirect, a token. What the server declares
    (Content-Length, or none) bounds nothing;
  - a redirect, or an upload location, is followed only to the registry itself or to a host of
    `registry_redirect_hosts` (blob storage, a CDN), never from TLS to plain HTTP, never from a
    loopback registry to another address (`redirect_refusal`); a refused one is refused before
    any connection to its target;
  - every exchange but a blob's bytes ends within `Bounds.deadline_s` (`pull_stall_s`):
    socket timeouts bound each read, not their sum, and a peer that sends a byte every few
    seconds never trips them. The blobs' bytes have the pull's stall watchdog (transfer.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import oras.auth
import oras.container
import oras.provider
import oras.utils
import requests
import requests.adapters
import urllib3
import urllib3.connection

from runtime.model.errors import RegistryError, TransferInterrupted
from runtime.model.registry_ref import Reference
from runtime.model.settings import Settings
from runtime.registry.media_types import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

# Without the index type here, a registry answers a tag that holds an index with a manifest of its
# choosing (distribution picks linux/amd64) or not at all.
ACCEPT_MANIFESTS = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
ATTEMPTS = 3
MAX_MANIFEST_BYTES = 4 << 20
SMALL_BODY_BYTES = 1 << 20   # a body rewarm does not size itself: an error, a redirect, a token, an answer to a PUT
READ_PIECE = 64 << 10
TAGS_PAGE = 1000           # tags asked for per page of a tag list
MAX_TAG_PAGES = 100        # a repository lists at most this many pages (100,000 tags): the rest is not read


@dataclass(frozen=True)
class Bounds:
    """What a Client holds its registry to, from the node's settings: how long an exchange may take
    (`deadline_s`, pull_stall_s) and where a redirect may lead besides the registry itself
    (`redirect_hosts`, registry_redirect_hosts)."""
    deadline_s: float = float(Settings().pull_stall_s)
    redirect_hosts: tuple[str, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> "Bounds":
        return cls(float(settings.pull_stall_s), settings.registry_redirect_hosts)


def auth_file(configured: str = "") -> str | None:
    """The credentials file in use (None when there is none)."""
    candidates = [configured, os.environ.get("REGISTRY_AUTH_FILE", "")]
    if os.environ.get("DOCKER_CONFIG"):
        candidates.append(os.path.join(os.environ["DOCKER_CONFIG"], "config.json"))
    candidates.append(os.path.expanduser("~/.docker/config.json"))
    return next((c for c in candidates if c and os.path.isfile(c)), None)


# --- bodies --------------------------------------------------------------------------------------
def read_body(response: requests.Response, limit: int, what: str) -> bytes:
    """The body of `response`, refused once more than `limit` bytes came (at most one piece more
    is read). The response is closed either way."""
    body = bytearray()
    try:
        for piece in response.iter_content(min(READ_PIECE, limit + 1)):
            body += piece
            if len(body) > limit:
                raise RegistryError(f"{what}: larger than {limit} bytes")
    except (requests.RequestException, OSError) as e:
        raise RegistryError(f"{what}: transfer broke off: {_short(e)}") from e
    finally:
        response.close()
    return bytes(body)


# --- redirects -----------------------------------------------------------------------------------
def redirect_refusal(registry: str, tls: bool, target: str, allowed_hosts: Sequence[str]) -> str | None:
    """Why a request to `registry` (HOST[:PORT], spoken to over TLS or not) may not follow a redirect,
    or an upload location, to URL `target`; None: it may. It may go to the registry itself (same
    host and port) or to an entry of `allowed_hosts` (HOST: its scheme's default port, HOST:PORT,
    *.DOMAIN: any host below DOMAIN); never from TLS to plain HTTP, never from a loopback registry
    to an address off loopback."""
    try:
        url = urllib.parse.urlsplit(target)
        where = _endpoint(url)
    except ValueError:
        return "not a valid URL"
    if url.scheme not in ("http", "https") or not url.hostname:
        return "not an http(s) URL"
    if tls and url.scheme != "https":
        return "it leaves TLS for plain HTTP"
    if Reference(registry, "").is_loopback and not Reference(_host_port(url), "").is_loopback:
        return "a loopback registry is followed only to loopback addresses"
    if where != _endpoint(urllib.parse.urlsplit(f"{'https' if tls else 'http'}://{registry}")) \
            and not any(_listed(entry, url) for entry in allowed_hosts):
        return "neither the registry itself nor in registry_redirect_hosts"
    return None


def _endpoint(url: urllib.parse.SplitResult) -> tuple[str, int]:
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def _host_port(url: urllib.parse.SplitResult) -> str:
    return url.netloc.rpartition("@")[2]   # no credentials in messages or checks


def _where(target: str) -> str:
    """The HOST[:PORT] a URL names, for a message (the URL itself, cut, where it names none)."""
    try:
        return _host_port(urllib.parse.urlsplit(target)) or target[:100]
    except ValueError:
        return target[:100]


def _listed(entry: str, url: urllib.parse.SplitResult) -> bool:
    try:
        host, port = _endpoint(urllib.parse.urlsplit(f"{url.scheme}://{entry}"))
    except ValueError:
        return False
    name = url.hostname or ""
    return port == _endpoint(url)[1] and (name == host or host.startswith("*.") and name.endswith(host[1:]))


# --- deadlines -----------------------------------------------------------------------------------
_exchange = threading.local()   # .deadline: the _Deadline of the exchange this thread is in


class _Deadline:
    """The wall-clock limit of one exchange. When it passes, the sockets of the exchange's
    connections are shut, which ends a read blocked on them (headers or body, TLS or not)."""

    def __init__(self, seconds: float) -> None:
        self.passed = False
        self._connections: set[urllib3.connection.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def watch(self, connection: urllib3.connection.HTTPConnection) -> None:
        with self._lock:
            if self.passed:
                raise TimeoutError("the exchange's deadline has passed")
            self._connections.add(connection)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            connections = list(self._connections)
        for c in connections:
            _shut(c.sock)


def _watched(connection: urllib3.connection.HTTPConnection) -> None:
    deadline: _Deadline | None = getattr(_exchange, "deadline", None)
    if deadline is not None:
        deadline.watch(connection)


def _deadline_passed() -> bool:
    deadline: _Deadline | None = getattr(_exchange, "deadline", None)
    return deadline is not None and deadline.passed


@contextlib.contextmanager
def _within(seconds: float, what: str) -> Iterator[None]:
    """The block as one exchange: whatever it still waits for after `seconds` is cut off, and it
    fails naming the limit. Inside an exchange already, the outer one's limit holds."""
    if getattr(_exchange, "deadline", None) is not None:
        yield
        return
    deadline = _exchange.deadline = _Deadline(seconds)
    deadline.start()
    cut: Exception | None = None
    try:
        yield
    except Exception as e:
        if not deadline.passed:
            raise
        cut = e
    finally:
        deadline.cancel()
        _exchange.deadline = None
    if deadline.passed:   # an error or not: an answer cut off can look complete (a body that ends with its connection)
        raise RegistryError(f"{what}: no complete answer within {seconds:g}s (pull_stall_s): "
                            "the registry sends too slowly or not at all") from cut


class _HTTPConnection(urllib3.connection.HTTPConnection):
    """A connection the exchange under way on its thread can cut off (on connecting, and on each
    request of a kept-alive one)."""

    def connect(self) -> None:
        _watched(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watched(self)
        super().request(*args, **kwargs)


class _HTTPSConnection(_HTTPConnection, urllib3.connection.HTTPSConnection):
    """_HTTPConnection's watch, over TLS (the handshake included)."""


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    """Every request gets a timeout (requests has no session-wide one, and oras sets none) and a
    connection that a deadline can cut off."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: float | tuple[float | None, float | None] | None = None, verify: bool | str = True,
             cert: str | tuple[str, str] | None = None, proxies: dict[str, str] | None = None) -> requests.Response:
        return super().send(request, stream, timeout or (CONNECT_TIMEOUT_S, READ_TIMEOUT_S), verify, cert, proxies)


class _Oras(oras.provider.Registry):  # type: ignore[misc]
    """oras's Registry with a bounded retry in place of its two-minute one."""

    def do_request(self, url: str, method: str = "GET", data: Any = None, headers: dict[str, str] | None = None,
                   json: Any = None, stream: bool = False) -> requests.Response:
        undecorated = oras.provider.Registry.do_request.__wrapped__
        headers = dict(headers or {})
        basic = getattr(self.auth, "_basic_auth", None)
        if basic and isinstance(self.auth, oras.auth.BasicAuth):
            headers.setdefault("Authorization", f"Basic {basic}")   # not one 401 round trip per request
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                response: requests.Response = undecorated(self, url, method, data, dict(headers), json, stream)
            except (requests.ConnectionError, requests.Timeout):
                if last or _deadline_passed():
                    raise
            else:
                if response.status_code < 500 or last:
                    return response
                response.close()
            time.sleep(0.3 * 2 ** attempt)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Fetched:
    """A manifest (or index) as the registry gave it: the digest and size of its bytes, and what they say."""
    digest: str
    body: dict[str, Any]
    size: int


class Client:
    """Blob and manifest calls on one repository, within its `bounds`."""

    def __init__(self, ref: Reference, *, auth: str = "", ca_file: str = "", plain_http: bool = False,
                 threads: int = 8, bounds: Bounds = Bounds()):
        if plain_http and not ref.is_loopback:
            raise RegistryError(f"plain HTTP is only spoken to a loopback registry, not {ref.registry}")
        self.ref = ref
        self.threads = threads   # blobs moved at once
        self.bounds = bounds
        self.tls = not plain_http
        self._streams: set[requests.Response] = set()
        self._streams_lock = threading.Lock()
        verify: bool | str = ca_file or True
        if ca_file and not os.path.isfile(ca_file):
            raise RegistryError(f"registry CA file {ca_file} does not exist")
        self.base = f"{'https' if self.tls else 'http'}://{ref.registry}/v2/{ref.repository}"
        scheme = self._challenge(verify)
        self.oras = _Oras(hostname=ref.registry, insecure=plain_http, tls_verify=verify,
                          auth_backend="basic" if scheme == "basic" else "token")
        self._guard(self.oras.session)   # oras's token requests share it
        self.container = oras.container.Container(f"{ref.repository}:{ref.tag or 'latest'}", registry=ref.registry)
        self.auth_file = auth_file(auth)
        self.oras.auth.load_configs(self.container, configs=[self.auth_file] if self.auth_file else None)
        if scheme and not getattr(self.oras.auth, "_basic_auth", None) and scheme == "basic":
            raise RegistryError(f"registry {ref.registry} asks for a login and "
                                + (f"{self.auth_file} has none for it" if self.auth_file else
                                   "no credentials file was found (registry_auth_file, $REGISTRY_AUTH_FILE, "
                                   "docker's config.json)"))

    def exchange(self, what: str) -> contextlib.AbstractContextManager[None]:
        """The block as one exchange with the registry, over within the bounds' deadline or refused."""
        return _within(self.bounds.deadline_s, what)

    def _guard(self, session: requests.Session) -> requests.Session:
        adapter = _Adapter(pool_connections=2, pool_maxsize=max(self.threads, 2))
        for prefix in ("http://", "https://"):
            session.mount(prefix, adapter)
        session.hooks["response"].append(self._on_response)
        return session

    def _on_response(self, r: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        """Each answer, before requests follows it as a redirect or reads its body itself (either
        whole): a redirect off the registry is refused, and a body the caller does not stream is
        read here within SMALL_BODY_BYTES."""
        if r.is_redirect:
            try:
                target = urllib.parse.urljoin(r.url, r.headers["location"])
            except ValueError:
                target = r.headers["location"]   # refused below as not a valid URL
            self._refuse_off_registry(target, "redirect to", r)
        if r.is_redirect or not kwargs.get("stream"):
            r._content = read_body(r, SMALL_BODY_BYTES, f"answer of {_host_port(urllib.parse.urlsplit(r.url))}")
            r._content_consumed = True   # requests' own fields for a body it has read
        return r

    def _refuse_off_registry(self, target: str, kind: str, r: requests.Response) -> None:
        why = redirect_refusal(self.ref.registry, self.tls, target, self.bounds.redirect_hosts)
        if why:
            r.close()
            raise RegistryError(f"{kind} {_where(target)} refused: {why}")

    def _challenge(self, verify: bool | str) -> str:
        """'' (open registry), 'basic' or 'bearer', from GET /v2/."""
        url = self.base.rsplit("/v2/", 1)[0] + "/v2/"
        with self.exchange(f"registry {self.ref.registry}"), self._guard(requests.Session()) as s:
            try:
                r = s.get(url, verify=verify, stream=True, timeout=(CONNECT_TIMEOUT_S, 30))
            except requests.exceptions.SSLError as e:
                raise RegistryError(f"registry {self.ref.registry}: TLS certificate not trusted "
                                    f"(set registry_ca_file?): {_short(e)}") from e
            except requests.RequestException as e:
                raise RegistryError(f"registry {self.ref.registry} unreachable: {_short(e)}") from e
            except RegistryError as e:
                raise RegistryError(f"registry {self.ref.registry}: {e}") from e
            r.close()   # its status and header are the answer
        if r.status_code == 401:
            return r.headers.get("WWW-Authenticate", "bearer").split(" ", 1)[0].lower()
        return ""

    # --- requests --------------------------------------------------------------------------
    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        try:
            return self.oras.do_request(url, method, **kwargs)
        except requests.exceptions.SSLError as e:
            raise RegistryError(f"{what}: TLS certificate not trusted: {_short(e)}") from e
        except (requests.RequestException, ValueError) as e:   # oras raises ValueError on refused auth
            raise RegistryError(f"{what}: {_short(e)}") from e
        except RegistryError as e:   # refused by _on_response
            raise RegistryError(f"{what}: {e}") from e

    def _check(self, response: requests.Response, what: str, ok: tuple[int, ...]) -> requests.Response:
        if response.status_code in ok:
            return response
        if response.status_code in (401, 403):
            response.close()
            raise RegistryError(f"{what}: registry {self.ref.registry} refused the credentials"
                                f" ({response.status_code}; from {self.auth_file or 'no auth file'})")
        detail = _errors_of(response)
        raise RegistryError(f"{what}: HTTP {response.status_code}" + (f" ({detail})" if detail else ""))

    def _get(self, url: str, what: str, limit: int, headers: dict[str, str] | None = None) -> bytes:
        """A body of at most `limit` bytes, within the deadline."""
        body = self._find(url, what, limit, headers)
        if body is None:
            raise RegistryError(f"{what}: HTTP 404 (not in the registry)")
        return body

    def _find(self, url: str, what: str, limit: int, headers: dict[str, str] | None = None) -> bytes | None:
        """_get's body, or None where the registry says there is none (404)."""
        with self.exchange(what):
            r = self._request("GET", url, what, headers=headers, stream=True)
            if r.status_code == 404:
                r.close()
                return None
            return read_body(self._check(r, what, (200,)), limit, what)

    # --- manifests -------------------------------------------------------------------------
    def get_manifest(self, reference: str | None = None) -> tuple[str, dict[str, Any]]:
        """The manifest or index (digest, parsed) that a tag or digest names; the digest is of the bytes received."""
        found = self.fetch_manifest(reference)
        return found.digest, found.body

    def fetch_manifest(self, reference: str | None = None) -> Fetched:
        """get_manifest's manifest with its size: what a descriptor of it needs."""
        found = self.find_manifest(reference)
        if found is None:
            raise RegistryError(f"{self._manifest_what(reference or self.ref.reference)}: HTTP 404 (no such "
                                "manifest in the registry)")
        return found

    def find_manifest(self, reference: str | None = None) -> Fetched | None:
        """fetch_manifest's answer, or None where the registry has no manifest under that tag or digest."""
        reference = reference or self.ref.reference
        what = self._manifest_what(reference)
        body = self._find(f"{self.base}/manifests/{reference}", what, MAX_MANIFEST_BYTES,
                          {"Accept": ACCEPT_MANIFESTS})
        if body is None:
            return None
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{what}: content does not match the digest")
        try:
            manifest = json.loads(body)
        except ValueError as e:
            raise RegistryError(f"{what}: not JSON ({e})") from e
        if not isinstance(manifest, dict):
            raise RegistryError(f"{what}: not a manifest")
        return Fetched(digest, manifest, len(body))

    def manifest_digest(self, tag: str) -> str | None:
        """The digest of the manifest a tag names, as the registry says it (HEAD: no body), or None
        where the tag is not there. Only a hint: a manifest fetched by it is checked against it."""
        what = self._manifest_what(tag)
        with self.exchange(what):
            r = self._request("HEAD", f"{self.base}/manifests/{tag}", what, headers={"Accept": ACCEPT_MANIFESTS})
            if r.status_code == 404:
                return None
            self._check(r, what, (200,))
        digest = r.headers.get("Docker-Content-Digest", "")
        return digest if digest.startswith("sha256:") and len(digest) == 71 else None

    def _manifest_what(self, reference: str) -> str:
        return f"manifest of {self.ref.name}:{reference}" if ":" not in reference else f"manifest {reference}"

    def put_manifest(self, manifest: dict[str, Any], tag: str) -> dict[str, Any]:
        """Put a manifest (or an index) under `tag`; its descriptor (media type, digest, size)."""
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        media = manifest.get("mediaType", OCI_MANIFEST)
        what = f"tag {self.ref.name}:{tag}"
        with self.exchange(what):
            self._check(self._request("PUT", f"{self.base}/manifests/{tag}", what, data=body,
                                      headers={"Content-Type": media}),
                        what, (201, 200))
        return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)}

    def tags(self) -> list[str]:
        """The repository's tags (the distribution API's tag list, page by page, at most
        MAX_TAG_PAGES; none where the repository is not there yet)."""
        tags: list[str] = []
        url: str | None = f"{self.base}/tags/list?n={TAGS_PAGE}"
        what = f"tags of {self.ref.name}"
        for _ in range(MAX_TAG_PAGES):
            if url is None:
                break
            with self.exchange(what):
                r = self._request("GET", url, what, stream=True)
                if r.status_code == 404:
                    r.close()
                    break
                body = read_body(self._check(r, what, (200,)), MAX_MANIFEST_BYTES, what)
            tags += _tags_of(body)
            url = _next_page(self.base, r.headers.get("Link", ""))
        return tags

    # --- blobs -----------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        what = f"blob {digest[:19]}"
        with self.exchange(what):
            r = self._request("HEAD", f"{self.base}/blobs/{digest}", what)
            if r.status_code == 404:
                return False
            self._check(r, what, (200,))
        return True

    def put_blob(self, digest: str, data: bytes) -> None:
        """A monolithic upload: POST for a session, PUT the bytes with their digest (the registry
        checks it). oras's put_upload reads a whole file; a chunk is a slice of one. The PUT has
        no deadline: its time is the upload's."""
        what = f"upload of blob {digest[:19]}"
        with self.exchange(what):
            r = self._check(self._request("POST", f"{self.base}/blobs/uploads/", what,
                                          headers={"Content-Length": "0"}), what, (202,))
        location = self.oras._get_location(r, self.container)
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location")
        self._refuse_off_registry(location, f"{what}: upload location", r)
        url = oras.utils.append_url_params(location, {"digest": digest})
        self._check(self._request("PUT", url, what, data=data,
                                  headers={"Content-Type": "application/octet-stream"}), what, (201,))

    def blob_bytes(self, digest: str, size: int) -> bytes:
        """A small blob whole, within the deadline: no more than `size` bytes (its descriptor's) are read."""
        return self._get(f"{self.base}/blobs/{digest}", f"blob {digest[:19]}", size)

    def blob_stream(self, digest: str, piece: int = 1 << 20) -> Iterator[bytes]:
        """A blob's bytes as they come; its answer's headers come within the deadline, the bytes
        are the caller's to watch (transfer.download's stall watchdog)."""
        what = f"blob {digest[:19]}"
        with self.exchange(what):
            r = self._check(self._request("GET", f"{self.base}/blobs/{digest}", what, stream=True), what, (200,))
        with self._streams_lock:
            self._streams.add(r)
        try:
            yield from r.iter_content(piece)
        except (requests.RequestException, OSError) as e:
            raise TransferInterrupted(f"{what}: transfer broke off: {_short(e)}") from e
        finally:
            with self._streams_lock:
                self._streams.discard(r)
            r.close()

    def abort(self) -> None:
        """Break off every blob transfer in flight: their threads wait inside a read, which a shut
        socket ends at once (closing the response from here would not wake them)."""
        with self._streams_lock:
            streams = list(self._streams)
        for r in streams:
            _shut(getattr(getattr(r.raw, "_connection", None), "sock", None))


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)   # the socket's own, also under TLS


def _tags_of(body: bytes) -> list[str]:
    try:
        listed = json.loads(body).get("tags") or []
    except (ValueError, AttributeError) as e:
        raise RegistryError(f"tag list: not the distribution API's answer ({_short(e)})") from e
    return [t for t in listed if isinstance(t, str)] if isinstance(listed, list) else []


def _next_page(base: str, link: str) -> str | None:
    """The next page of a tag list (RFC 5988 Link, rel="next"), on the registry itself only."""
    target, _, rel = link.partition(";")
    target = target.strip()
    if 'rel="next"' not in rel or not (target.startswith("<") and target.endswith(">")):
        return None
    path = target[1:-1]
    if not path.startswith("/v2/"):
        return None   # another host: a page is never fetched off the registry
    return base.split("/v2/", 1)[0] + path


def _errors_of(response: requests.Response) -> str:
    """The registry's own words on a failure, from a body read within SMALL_BODY_BYTES ('' if none)."""
    try:
        errors = json.loads(read_body(response, SMALL_BODY_BYTES, "error")).get("errors", [])
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:300]
    except (ValueError, AttributeError, TypeError, RegistryError):
        return ""


def _short(e: BaseException) -> str:
    text = str(e)
    if "Connection refused" in text:
        return "connection refused"
    return text[:300]

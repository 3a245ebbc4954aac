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
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from typing import Any, Iterator

import oras.auth
import oras.container
import oras.provider
import oras.utils
import requests
import requests.adapters

from runtime.model.errors import RegistryError, TransferInterrupted
from runtime.model.registry_ref import Reference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
ATTEMPTS = 3
MAX_MANIFEST_BYTES = 4 << 20


def auth_file(configured: str = "") -> str | None:
    """The credentials file in use (None when there is none)."""
    candidates = [configured, os.environ.get("REGISTRY_AUTH_FILE", "")]
    if os.environ.get("DOCKER_CONFIG"):
        candidates.append(os.path.join(os.environ["DOCKER_CONFIG"], "config.json"))
    candidates.append(os.path.expanduser("~/.docker/config.json"))
    return next((c for c in candidates if c and os.path.isfile(c)), None)


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """Every request gets a timeout (requests has no session-wide one, and oras sets none)."""

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
            try:
                response: requests.Response = undecorated(self, url, method, data, dict(headers), json, stream)
            except (requests.ConnectionError, requests.Timeout):
                if attempt == ATTEMPTS - 1:
                    raise
            else:
                if response.status_code < 500 or attempt == ATTEMPTS - 1:
                    return response
            time.sleep(0.3 * 2 ** attempt)
        raise AssertionError("unreachable")


class Client:
    """Blob and manifest calls on one repository."""

    def __init__(self, ref: Reference, *, auth: str = "", ca_file: str = "", plain_http: bool = False,
                 threads: int = 8):
        if plain_http and not ref.is_loopback:
            raise RegistryError(f"plain HTTP is only spoken to a loopback registry, not {ref.registry}")
        self.ref = ref
        self.threads = threads   # blobs moved at once
        self._streams: set[requests.Response] = set()
        self._streams_lock = threading.Lock()
        verify: bool | str = ca_file or True
        if ca_file and not os.path.isfile(ca_file):
            raise RegistryError(f"registry CA file {ca_file} does not exist")
        self.base = f"{'http' if plain_http else 'https'}://{ref.registry}/v2/{ref.repository}"
        scheme = self._challenge(verify)
        self.oras = _Oras(hostname=ref.registry, insecure=plain_http, tls_verify=verify,
                          auth_backend="basic" if scheme == "basic" else "token")
        adapter = _TimeoutAdapter(pool_connections=2, pool_maxsize=max(threads, 2))
        for prefix in ("http://", "https://"):
            self.oras.session.mount(prefix, adapter)
        self.container = oras.container.Container(f"{ref.repository}:{ref.tag or 'latest'}", registry=ref.registry)
        self.auth_file = auth_file(auth)
        self.oras.auth.load_configs(self.container, configs=[self.auth_file] if self.auth_file else None)
        if scheme and not getattr(self.oras.auth, "_basic_auth", None) and scheme == "basic":
            raise RegistryError(f"registry {ref.registry} asks for a login and "
                                + (f"{self.auth_file} has none for it" if self.auth_file else
                                   "no credentials file was found (registry_auth_file, $REGISTRY_AUTH_FILE, "
                                   "docker's config.json)"))

    def _challenge(self, verify: bool | str) -> str:
        """'' (open registry), 'basic' or 'bearer', from GET /v2/."""
        url = self.base.rsplit("/v2/", 1)[0] + "/v2/"
        try:
            with requests.Session() as s:
                s.mount(url.split("://")[0] + "://", _TimeoutAdapter())
                r = s.get(url, verify=verify, timeout=(CONNECT_TIMEOUT_S, 30))
        except requests.exceptions.SSLError as e:
            raise RegistryError(f"registry {self.ref.registry}: TLS certificate not trusted "
                                f"(set registry_ca_file?): {_short(e)}") from e
        except requests.RequestException as e:
            raise RegistryError(f"registry {self.ref.registry} unreachable: {_short(e)}") from e
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

    def _check(self, response: requests.Response, what: str, ok: tuple[int, ...]) -> requests.Response:
        if response.status_code in ok:
            return response
        if response.status_code in (401, 403):
            raise RegistryError(f"{what}: registry {self.ref.registry} refused the credentials"
                                f" ({response.status_code}; from {self.auth_file or 'no auth file'})")
        detail = _errors_of(response)
        raise RegistryError(f"{what}: HTTP {response.status_code}" + (f" ({detail})" if detail else ""))

    # --- manifests -------------------------------------------------------------------------
    def get_manifest(self, reference: str | None = None) -> tuple[str, dict[str, Any]]:
        """The manifest (digest, parsed) that a tag or digest names; the digest is of the bytes received."""
        reference = reference or self.ref.reference
        what = f"manifest of {self.ref.name}:{reference}" if ":" not in reference else f"manifest {reference}"
        r = self._check(self._request("GET", f"{self.base}/manifests/{reference}", what,
                                      headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}), what, (200,))
        if len(r.content) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{what}: larger than {MAX_MANIFEST_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{what}: content does not match the digest")
        try:
            manifest = json.loads(r.content)
        except ValueError as e:
            raise RegistryError(f"{what}: not JSON ({e})") from e
        if not isinstance(manifest, dict):
            raise RegistryError(f"{what}: not a manifest")
        return digest, manifest

    def put_manifest(self, manifest: dict[str, Any], tag: str) -> str:
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        what = f"tag {self.ref.name}:{tag}"
        self._check(self._request("PUT", f"{self.base}/manifests/{tag}", what, data=body,
                                  headers={"Content-Type": manifest.get("mediaType", OCI_MANIFEST)}), what, (201, 200))
        return "sha256:" + hashlib.sha256(body).hexdigest()

    # --- blobs -----------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        what = f"blob {digest[:19]}"
        r = self._request("HEAD", f"{self.base}/blobs/{digest}", what)
        if r.status_code == 404:
            return False
        self._check(r, what, (200,))
        return True

    def put_blob(self, digest: str, data: bytes) -> None:
        """A monolithic upload: POST for a session, PUT the bytes with their digest (the registry
        checks it). oras's put_upload reads a whole file; a chunk is a slice of one."""
        what = f"upload of blob {digest[:19]}"
        r = self._check(self._request("POST", f"{self.base}/blobs/uploads/", what,
                                      headers={"Content-Length": "0"}), what, (202,))
        location = self.oras._get_location(r, self.container)
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location")
        url = oras.utils.append_url_params(location, {"digest": digest})
        self._check(self._request("PUT", url, what, data=data,
                                  headers={"Content-Type": "application/octet-stream"}), what, (201,))

    def blob_stream(self, digest: str, piece: int = 1 << 20) -> Iterator[bytes]:
        what = f"blob {digest[:19]}"
        r = self._check(self.oras.get_blob(self.container, digest, stream=True), what, (200,))
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
            sock = getattr(getattr(r.raw, "_connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)   # the socket's own, also under TLS


def _errors_of(response: requests.Response) -> str:
    try:
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in response.json().get("errors", []))[:300]
    except (ValueError, AttributeError):
        return ""


def _short(e: BaseException) -> str:
    text = str(e)
    if "Connection refused" in text:
        return "connection refused"
    return text[:300]

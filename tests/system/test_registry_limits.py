"""A registry that means harm, served by the test itself on loopback (stdlib http.server, TLS from a
test CA where it matters): bodies of a gigabyte with, without or against their Content-Length,
redirects off the registry, a manifest trickled a byte at a time. What a node owner cares about is
asserted: the refusal's reason, the pull's peak memory and its wall-clock time, that nothing was
connected to where a redirect pointed, and that the store holds nothing half-written."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import events, run_measured
from runtime.host import settings_file
from runtime.snapshot import store
from runtime.registry import client as registry_client
from runtime.registry import cosign, media_types, native
from runtime.registry.client import Bounds, Client
from runtime.front.names import CONFIG_ENV
from runtime.lab.private_node import write_config
from runtime.lab.registry_lab import make_tls
from runtime.model.errors import RegistryError
from runtime.model.registry_ref import parse
from runtime.model.settings import Settings

GIB = 1 << 30
PEAK_RSS_LIMIT = 256 << 20       # a pull's whole process; a body read whole would take GIB and more
REPO = "rewarm/hostile"
OFF_LOOPBACK = "http://10.99.0.1:8081/latest/meta-data/iam"   # never connected to: the refusal comes first
CONNECT_BOUND_S = registry_client.CONNECT_TIMEOUT_S / 2        # less than one connect attempt's timeout

Behaviour = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    registry: "HostileRegistry"

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_GET

    def _serve(self) -> None:
        path = self.path.split("?")[0]
        self.registry.hits[path] += 1
        try:
            self.registry.routes.get(path, answer(b'{"errors": []}', 404))(self)
        except OSError:   # the client went away: what a refusal looks like from here
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


class HostileRegistry:
    """A registry on loopback that answers each path with a behaviour of the test's choosing."""

    def __init__(self, tls: tuple[str, str] | None = None):
        self.routes: dict[str, Behaviour] = {"/v2/": answer(b"{}")}
        self.hits: Counter[str] = Counter()
        self.sent = 0                     # body bytes written, all paths
        self.stop = threading.Event()     # ends trickles
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"registry": self}))
        self.server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ref(self, tag: str = "v1") -> str:
        return f"{self.address}/{REPO}:{tag}"

    def manifests(self, tag: str) -> str:
        return f"/v2/{REPO}/manifests/{tag}"

    def blobs(self, digest: str) -> str:
        return f"/v2/{REPO}/blobs/{digest}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def answer(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Behaviour:
    def serve(h: _Handler) -> None:
        h.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
    return serve


def redirect(location: str) -> Behaviour:
    return answer(b"", 307, {"Location": location})


def endless(framing: str, status: int = 200, total: int = GIB) -> Behaviour:
    """`total` bytes of body, framed by a true Content-Length ("length"), chunks ("chunked") or the
    connection's end ("close"), for as long as the client reads."""
    piece = b"x" * (1 << 20)

    def serve(h: _Handler) -> None:
        h.send_response(status)
        if framing == "length":
            h.send_header("Content-Length", str(total))
        elif framing == "chunked":
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        for _ in range(total // len(piece)):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
            h.registry.sent += len(piece)
        if framing == "chunked":
            h.wfile.write(b"0\r\n\r\n")
    return serve


def trickle(phase: str, gap: float = 0.5) -> Behaviour:
    """One byte every `gap` seconds, of the headers or of the body, until the client hangs up:
    every read ends well inside any socket timeout."""
    def serve(h: _Handler) -> None:
        if phase == "headers":
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        else:
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
        while not h.registry.stop.wait(gap):
            h.wfile.write(b"a")
    return serve


class Listener:
    """A loopback port that serves nothing: a connection made to it waits in its backlog, so once
    the client is done, `knocks()` says whether it connected at all."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def knocks(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    return make_tls(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def tls_hostile(tls_files: tuple[str, str, str]) -> Iterator[HostileRegistry]:
    server = HostileRegistry(tls=tls_files[1:])
    yield server
    server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    the_listener = Listener()
    yield the_listener
    the_listener.sock.close()


@pytest.fixture
def pull_config(node: Settings, tmp_path: Any) -> str:
    """A node config of this test's own (its store and event log)."""
    return write_config(str(tmp_path), **node.to_json())


# --- the pull as an operator runs it, measured ------------------------------------------------------
def measured_pull(config: str, ref: str, name: str, *extra: str,
                  timeout: float = 180) -> tuple[subprocess.CompletedProcess[str], int, float]:
    """`rewarm pull REF --name NAME` in a process of its own: its outcome, its peak resident memory
    in bytes (the kernel's count for that one process) and its wall-clock seconds."""
    args = [os.path.join(os.path.dirname(sys.executable), "rewarm"), "pull", ref, "--name", name, *extra]
    return run_measured(args, env=dict(os.environ, **{CONFIG_ENV: config}), timeout=timeout)


def assert_refused(out: subprocess.CompletedProcess[str], config: str, name: str, *reasons: str) -> str:
    """The pull failed with one line naming every reason, logged a pull-failed event, and left
    nothing in the store: no entry and no staging directory."""
    node = settings_file.load(config)
    assert out.returncode == 1, out
    errors = [line for line in out.stderr.splitlines() if line.startswith("rewarm pull: ")]
    assert len(errors) == 1 and all(r in errors[0] for r in reasons), out.stderr
    assert store.Store(node.store).entries("default", name) == []
    tmp = os.path.join(node.store, "tmp")
    assert not [d for d in (os.listdir(tmp) if os.path.isdir(tmp) else []) if f"-{name}-" in d]
    failed = [e for e in events(node, "pull-failed") if e["snapshot"] == name]
    assert failed and all(r in failed[-1]["reason"] for r in reasons)
    return errors[0]


def native_manifest(config_size: int) -> tuple[bytes, str]:
    """A rewarm snapshot's manifest (no layers) whose config claims `config_size` bytes; its bytes
    and the config's digest."""
    config_digest = "sha256:" + hashlib.sha256(b"config").hexdigest()
    body = json.dumps({"schemaVersion": 2, "mediaType": media_types.OCI_MANIFEST, "artifactType": native.ARTIFACT_TYPE,
                       "config": {"mediaType": native.CONFIG_TYPE, "digest": config_digest, "size": config_size},
                       "layers": [], "annotations": {}}).encode()
    return body, config_digest


# --- bodies ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_gigabyte_manifest_is_refused_at_its_limit_in_bounded_memory(hostile, pull_config, framing):
    hostile.routes[hostile.manifests("v1")] = endless(framing)
    out, peak, _ = measured_pull(pull_config, hostile.ref(), f"big-{framing}", "--plain-http")
    assert_refused(out, pull_config, f"big-{framing}", f"larger than {registry_client.MAX_MANIFEST_BYTES} bytes")
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak >> 20} MiB"
    assert hostile.sent < 64 << 20        # the pull stopped reading; the rest was never sent


@pytest.mark.parametrize("status", [404, 500])
def test_a_gigabyte_error_body_is_not_read_and_the_status_is_the_reason(hostile, pull_config, status):
    hostile.routes[hostile.manifests("v1")] = endless("chunked", status)
    out, peak, _ = measured_pull(pull_config, hostile.ref(), f"error-{status}", "--plain-http")
    assert_refused(out, pull_config, f"error-{status}", f"HTTP {status}")
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak >> 20} MiB"


def test_a_config_blob_longer_than_its_descriptor_is_refused_in_bounded_memory(hostile, pull_config):
    body, config_digest = native_manifest(config_size=200)
    hostile.routes[hostile.manifests("v1")] = answer(body)
    hostile.routes[hostile.blobs(config_digest)] = endless("close")       # 200 bytes said, a gigabyte sent
    out, peak, _ = measured_pull(pull_config, hostile.ref(), "long-config", "--plain-http")
    assert_refused(out, pull_config, "long-config", f"blob {config_digest[:19]}: larger than 200 bytes")
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak >> 20} MiB"


def test_a_signature_payload_is_read_no_further_than_its_descriptor(hostile, pull_config, tmp_path):
    """With a signature required, a payload that goes on for a gigabyte is cut at its declared
    size, the pull is refused as unsigned, and not a byte of the snapshot is fetched."""
    body, config_digest = native_manifest(config_size=200)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    payload_digest = "sha256:" + hashlib.sha256(b"payload").hexdigest()
    signature = {"schemaVersion": 2, "mediaType": media_types.OCI_MANIFEST,
                 "config": {"mediaType": media_types.OCI_CONFIG, "digest": config_digest, "size": 2},
                 "layers": [{"mediaType": cosign.PAYLOAD_TYPE, "digest": payload_digest, "size": 1000,
                             "annotations": {cosign.SIGNATURE_KEY: base64.b64encode(b"not a signature").decode()}}]}
    hostile.routes[hostile.manifests("v1")] = answer(body)
    hostile.routes[hostile.manifests(cosign.tag_of(digest))] = answer(json.dumps(signature).encode())
    hostile.routes[hostile.blobs(payload_digest)] = endless("length")
    public = tmp_path / "verify.pem"
    public.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    out, peak, _ = measured_pull(pull_config, hostile.ref(), "signed-huge", "--plain-http", "--verify-key", str(public))
    assert_refused(out, pull_config, "signed-huge", "no signature there verifies",
                   f"blob {payload_digest[:19]}: larger than 1000 bytes")
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak >> 20} MiB"
    assert hostile.hits[hostile.blobs(config_digest)] == 0


# --- redirects ---------------------------------------------------------------------------------------
def test_a_redirect_from_a_loopback_registry_off_loopback_is_refused_before_any_connection(hostile, pull_config):
    hostile.routes[hostile.manifests("v1")] = redirect(OFF_LOOPBACK)
    out, _, seconds = measured_pull(pull_config, hostile.ref(), "metadata", "--plain-http")
    assert_refused(out, pull_config, "metadata",
                   "redirect to 10.99.0.1:8081 refused: a loopback registry is followed only to loopback addresses")
    assert seconds < CONNECT_BOUND_S      # no connect attempt (10 s each, retried) was waited for


def test_a_redirect_to_another_host_is_refused_and_nothing_connects_to_it(hostile, pull_config, listener):
    hostile.routes[hostile.manifests("v1")] = redirect(f"http://{listener.address}/elsewhere")
    out, _, _ = measured_pull(pull_config, hostile.ref(), "elsewhere", "--plain-http")
    assert_refused(out, pull_config, "elsewhere",
                   f"redirect to {listener.address} refused: neither the registry itself nor in "
                   "registry_redirect_hosts")
    assert listener.knocks() == 0


@pytest.mark.parametrize("target", ["http://{listener}/iam", "http://{registry}/v2/", OFF_LOOPBACK])
def test_a_tls_registry_is_never_followed_to_plain_http(tls_hostile, tls_files, node, tmp_path, listener, target):
    """Not even to the registry's own host and port, nor to a host the config allows."""
    location = target.format(listener=listener.address, registry=tls_hostile.address)
    tls_hostile.routes[tls_hostile.manifests("v1")] = redirect(location)
    config = write_config(str(tmp_path), **{**node.to_json(), "registry_ca_file": tls_files[0]})
    out, _, seconds = measured_pull(config, tls_hostile.ref(), "downgrade")
    where = location.split("/")[2]
    assert_refused(out, config, "downgrade", f"redirect to {where} refused: it leaves TLS for plain HTTP")
    assert listener.knocks() == 0 and seconds < CONNECT_BOUND_S
    client = Client(parse(tls_hostile.ref()), ca_file=tls_files[0], bounds=Bounds(redirect_hosts=(where,)))
    with pytest.raises(RegistryError, match="it leaves TLS for plain HTTP"):
        client.get_manifest()
    assert listener.knocks() == 0


def test_a_tls_registry_is_not_followed_to_another_tls_host_unless_the_config_names_it(
        tls_hostile, tls_files, listener):
    tls_hostile.routes[tls_hostile.manifests("v1")] = redirect(f"https://{listener.address}/cdn")
    client = Client(parse(tls_hostile.ref()), ca_file=tls_files[0])
    with pytest.raises(RegistryError, match=f"redirect to {listener.address} refused: neither the registry"):
        client.get_manifest()
    assert listener.knocks() == 0


def test_a_redirect_within_the_registry_or_to_a_named_host_is_followed(hostile, tls_files):
    """Blob storage behind a redirect is a registry feature: the same host, or a host in
    registry_redirect_hosts, serves the bytes."""
    cdn = HostileRegistry()
    try:
        data = b"the config"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        hostile.routes[hostile.blobs(digest)] = redirect(f"http://{cdn.address}/bucket/{digest}")
        cdn.routes[f"/bucket/{digest}"] = answer(data)
        hostile.routes[hostile.manifests("v1")] = redirect(hostile.manifests("moved"))   # relative: the same host
        hostile.routes[hostile.manifests("moved")] = answer(b'{"schemaVersion": 2}')
        client = Client(parse(hostile.ref()), plain_http=True, bounds=Bounds(redirect_hosts=(cdn.address,)))
        assert client.get_manifest()[1] == {"schemaVersion": 2}
        assert client.blob_bytes(digest, len(data)) == data
        assert cdn.hits[f"/bucket/{digest}"] == 1
        alone = Client(parse(hostile.ref()), plain_http=True)
        with pytest.raises(RegistryError, match=f"redirect to {cdn.address} refused"):
            alone.blob_bytes(digest, len(data))
        assert cdn.hits[f"/bucket/{digest}"] == 1
    finally:
        cdn.close()


def test_an_upload_location_off_the_registry_gets_no_bytes(hostile, listener):
    hostile.routes[f"/v2/{REPO}/blobs/uploads/"] = answer(b"", 202, {"Location": f"http://{listener.address}/up"})
    client = Client(parse(hostile.ref()), plain_http=True)
    with pytest.raises(RegistryError, match=f"upload location {listener.address} refused: neither the registry"):
        client.put_blob("sha256:" + hashlib.sha256(b"memory").hexdigest(), b"memory")
    assert listener.knocks() == 0


# --- deadlines ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickled_manifest_ends_at_the_deadline(hostile, tls_hostile, tls_files, tls, phase):
    """A byte every half second never trips a socket timeout; the exchange's deadline ends it."""
    server = tls_hostile if tls else hostile
    server.routes[server.manifests("v1")] = trickle(phase)
    client = Client(parse(server.ref()), plain_http=not tls, ca_file=tls_files[0] if tls else "",
                    bounds=Bounds(deadline_s=2))
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"no complete answer within 2s \(pull_stall_s\)"):
        client.get_manifest()
    assert time.monotonic() - started < 2 + 3


def test_a_trickled_signature_payload_ends_at_one_deadline_for_the_whole_check(hostile):
    """However many layers a signature lists, the check as a whole ends at the deadline."""
    body, config_digest = native_manifest(config_size=200)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    layers = []
    for i in range(20):
        payload = "sha256:" + hashlib.sha256(b"%d" % i).hexdigest()
        hostile.routes[hostile.blobs(payload)] = trickle("body")
        layers.append({"mediaType": cosign.PAYLOAD_TYPE, "digest": payload, "size": 1000,
                       "annotations": {cosign.SIGNATURE_KEY: base64.b64encode(b"x").decode()}})
    hostile.routes[hostile.manifests(cosign.tag_of(digest))] = answer(json.dumps({
        "schemaVersion": 2, "mediaType": media_types.OCI_MANIFEST, "layers": layers,
        "config": {"mediaType": media_types.OCI_CONFIG, "digest": config_digest, "size": 2}}).encode())
    client = Client(parse(hostile.ref()), plain_http=True, bounds=Bounds(deadline_s=2))
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"no complete answer within 2s"):
        cosign.verify(client, digest, [key])
    assert time.monotonic() - started < 2 + 3


def test_a_trickled_manifest_ends_the_pull_at_its_deadline_with_nothing_stored(hostile, pull_config):
    """The pull as an operator runs it: its manifest trickles; the pull ends at the deadline the
    node's settings give its client (pull_stall_s), with the reason and nothing stored."""
    from runtime.engine.pull import client_for
    hostile.routes[hostile.manifests("v1")] = trickle("body")
    with open(pull_config) as f:
        config = json.load(f)
    with open(pull_config, "w") as f:
        json.dump({**config, "pull_stall_s": 4}, f)   # the node's setting is the deadline
    settings = settings_file.load(pull_config)
    deadline = client_for(dataclasses.replace(settings, plain_http_registries=(hostile.address,)),
                          parse(hostile.ref())).bounds.deadline_s
    out, _, seconds = measured_pull(pull_config, hostile.ref(), "trickled", "--plain-http", timeout=deadline + 60)
    assert_refused(out, pull_config, "trickled", f"no complete answer within {deadline:g}s (pull_stall_s)")
    assert deadline == 4 and deadline <= seconds < deadline + 15

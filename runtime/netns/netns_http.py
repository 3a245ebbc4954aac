"""HTTP from inside a network namespace: readiness checks, the quiesce/resume hooks, probes.

The connection is made by a short-lived thread that enters the namespace (setns changes only the
calling thread's namespace) and hands the connected socket back; a socket stays in the namespace it
was made in, so the request itself runs in the caller's thread. No process is started: a request
costs what the worker takes to answer.
"""
from __future__ import annotations

import http.client
import os
import socket
import threading
import urllib.parse

from runtime.netns.netns_setup import in_netns

NETNS_DIR = "/var/run/netns"


def connect(netns_path: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection made inside the namespace (raises OSError when nothing answers)."""
    return in_netns(netns_path, lambda: socket.create_connection((host, port), timeout=timeout))


MAX_BODY = 1 << 20


def request(netns: str, url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """GET url (POST with `data`) inside a network namespace: a name under /run/netns or a path such
    as /proc/PID/ns/net. Returns (HTTP status, body: its first MAX_BODY bytes, for the answer comes
    from inside a container); (0, why) when no whole answer came. `timeout` bounds the whole request
    by the wall clock: a peer that answers a byte at a time cannot stretch it (a socket timeout
    alone restarts with every byte)."""
    path = netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    try:
        sock = connect(path, host, port, timeout)
    except OSError as e:
        return 0, f"nothing answered ({e.strerror or e})"
    cut = threading.Event()
    deadline = threading.Timer(timeout, _cut, (sock, cut))
    deadline.start()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        conn.request("POST" if data is not None else "GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                     body=data, headers={"Content-Type": "application/json"} if data is not None else {})
        response = conn.getresponse()
        status, body = response.status, response.read(MAX_BODY)
    except (OSError, http.client.HTTPException) as e:
        status, body = 0, f"the answer broke off ({type(e).__name__})".encode()
    finally:
        deadline.cancel()
        sock.close()
    if cut.is_set():   # whatever was read before the cut is not the whole answer
        return 0, f"no whole answer within {timeout:g}s"
    return status, body.decode(errors="replace")


def _cut(sock: socket.socket, cut: threading.Event) -> None:
    """The deadline passed: wake the reader blocked on this socket (it sees the end of the stream)."""
    cut.set()
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

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
import urllib.parse

from runtime.adapters.netns_setup import in_netns

NETNS_DIR = "/var/run/netns"


def connect(netns_path: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection made inside the namespace (raises OSError when nothing answers)."""
    return in_netns(netns_path, lambda: socket.create_connection((host, port), timeout=timeout))


MAX_BODY = 1 << 20


def request(netns: str, url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """GET url (POST with `data`) inside a network namespace: a name under /run/netns or a path such
    as /proc/PID/ns/net. Returns (HTTP status, body: its first MAX_BODY bytes, for the answer comes
    from inside a container); (0, "") when nothing answered."""
    path = netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)
    parts = urllib.parse.urlsplit(url)
    try:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        conn.sock = connect(path, parts.hostname or "127.0.0.1", parts.port or 80, timeout)
        target = parts.path or "/"
        conn.request("POST" if data is not None else "GET", target + (f"?{parts.query}" if parts.query else ""),
                     body=data, headers={"Content-Type": "application/json"} if data is not None else {})
        response = conn.getresponse()
        status, body = response.status, response.read(MAX_BODY)
        conn.close()
    except (OSError, http.client.HTTPException):
        return 0, ""
    return status, body.decode(errors="replace")

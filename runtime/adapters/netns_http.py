"""HTTP from inside a network namespace: readiness checks, the quiesce/resume hooks, probes.

The request runs in a child Python entered into the namespace with nsenter, so the caller keeps
its own namespace (a thread cannot safely switch it in a Python process).
"""
from __future__ import annotations

import os
import subprocess
import sys

NETNS_DIR = "/var/run/netns"
_CODE = """import sys, urllib.request, urllib.error
url, timeout, data = sys.argv[1], float(sys.argv[2]), sys.stdin.buffer.read() if sys.argv[3] == "post" else None
request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=timeout) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except Exception:
    sys.exit(3)
sys.stdout.write(f"{status}\\n")
sys.stdout.flush()
sys.stdout.buffer.write(body)
"""


def request(netns: str, url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """GET url (POST with `data`) inside a network namespace: a name under /run/netns or a path such
    as /proc/PID/ns/net. Returns (HTTP status, body); (0, "") when nothing answered."""
    path = netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)
    try:
        proc = subprocess.run(["nsenter", f"--net={path}", sys.executable, "-I", "-S", "-c", _CODE, url, str(timeout),
                               "get" if data is None else "post"], input=data or b"", capture_output=True,
                              timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return 0, ""
    if proc.returncode != 0:
        return 0, ""
    status, _, body = proc.stdout.partition(b"\n")
    return int(status), body.decode(errors="replace")

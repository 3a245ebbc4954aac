"""The addresses a container's sockets are bound to, read from /proc/PID/net (the container's
network namespace). Recorded at capture: a restore into a pod with another IP must make them exist
(rewarm-hook prestart does), or CRIU cannot bind the sockets again."""
from __future__ import annotations

import ipaddress
import socket
import struct

TABLES = ("tcp", "udp", "tcp6", "udp6")


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hex_ip, 16)))
    words = struct.unpack(">4I", raw)   # /proc prints IPv6 as four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, struct.pack("<4I", *words))


def bound_addresses(pid: int) -> list[str]:
    """Specific (not wildcard, not loopback) local addresses of the sockets in pid's network namespace."""
    found: set[str] = set()
    for table in TABLES:
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local = row.split()[1].rsplit(":", 1)[0]
            address = ipaddress.ip_address(_address(local))
            if not (address.is_unspecified or address.is_loopback):
                found.add(str(address))
    return sorted(found)

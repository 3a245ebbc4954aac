"""Network set-up of a container about to be restored, inside its network namespace: loopback up,
and the addresses its snapshot's sockets were bound to present (on loopback, /32 or /128), so that
CRIU can bind them again in a pod that got another IP.

The hook process itself enters the namespace (it is short-lived and does nothing else there). It
first checks with plain sockets, which costs nothing; pyroute2 (~130 ms to import) is loaded only
when something must change.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct

from runtime.adapters.netns_http import enter

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1


def loopback_up() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
    return bool(flags & IFF_UP)


def bindable(address: str) -> bool:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
            return True
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return False
            raise


def prepare(netns_path: str, addresses: list[str]) -> list[str]:
    """Returns the addresses that had to be added."""
    enter(netns_path)
    missing = [a for a in addresses if not bindable(a)]
    if not missing and loopback_up():
        return []
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        lo = ip.link_lookup(ifname="lo")[0]
        ip.link("set", index=lo, state="up")
        for address in missing:
            prefix = 32 if ipaddress.ip_address(address).version == 4 else 128
            ip.addr("add", index=lo, address=address, prefixlen=prefix)
    return missing

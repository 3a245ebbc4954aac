"""Network set-up of a container about to be restored, inside its network namespace: loopback up,
and the addresses its snapshot's sockets were bound to present (on loopback, /32 or /128), so that
CRIU can bind them again in a pod that got another IP. rewarm-runc does it before `runc restore`
where the spec names the namespace (Kubernetes: the pod sandbox's); rewarm-hook prestart does it
during the restore where runc makes a new one.

A thread of its own enters the namespace (setns moves only the calling thread), so the caller stays
where it is. It first checks with plain sockets, which costs nothing; pyroute2 (~130 ms to import)
is loaded only when something must change.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1


def enter(netns_path: str) -> None:
    """Move the calling thread into the network namespace at netns_path."""
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns_path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


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


def in_netns(netns_path: str, work: Callable[[], T]) -> T:
    """work() in a thread of its own that entered the namespace first; its result, or its error
    raised here. The calling thread stays in its own namespace."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            enter(netns_path)
            result.append(work())
        except BaseException as e:   # raised in the caller's thread below
            error.append(e)
    thread = threading.Thread(target=run, name="rewarm-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def prepare(netns_path: str, addresses: list[str]) -> list[str]:
    """Returns the addresses that had to be added."""
    return in_netns(netns_path, lambda: _prepare_here(addresses))


def _prepare_here(addresses: list[str]) -> list[str]:
    was_up = loopback_up()
    if was_up and all(bindable(a) for a in addresses):
        return []
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        lo = ip.link_lookup(ifname="lo")[0]
        ip.link("set", index=lo, state="up")
        # asked only now: with loopback down, bind() to any address succeeds (kernel 6.18)
        missing = [a for a in addresses if not bindable(a)]
        for address in missing:
            prefix = 32 if ipaddress.ip_address(address).version == 4 else 128
            ip.addr("add", index=lo, address=address, prefixlen=prefix)
    return missing

"""Network set-up of a container about to be restored, with pyroute2 inside its network namespace:
loopback up, and the addresses its snapshot's sockets were bound to present (on loopback, /32 or
/128), so that CRIU can bind them again in a pod that got another IP."""
from __future__ import annotations

import ipaddress

from pyroute2 import NetNS
from pyroute2.netlink.exceptions import NetlinkError

EEXIST = 17


def prepare(netns_path: str, addresses: list[str]) -> list[str]:
    """Returns the addresses that had to be added."""
    added = []
    with NetNS(netns_path) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        present = {a.get_attr("IFA_ADDRESS") for a in ns.get_addr()}
        for address in addresses:
            if address in present:
                continue
            ip = ipaddress.ip_address(address)
            try:
                ns.addr("add", index=lo, address=address, prefixlen=32 if ip.version == 4 else 128)
                added.append(address)
            except NetlinkError as e:
                if e.code != EEXIST:
                    raise
    return added

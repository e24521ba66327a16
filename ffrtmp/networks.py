"""Address ranges given on the command line (the agents' URL allow-list, the coordinator's
trusted proxies and webhook allow-list): one parser, one error message; and the address policy
for anything ffrtmp connects to on a job's behalf (URL inputs, webhooks): a destination whose
name resolves to a loopback, link-local (cloud metadata), private, shared (CGNAT), multicast,
reserved or unspecified address is refused unless an operator opened its range; every address
the name resolves to is checked, so numeric tricks (``0x7f.1``) are caught after resolution."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def parse_networks(values: list[str]) -> list[Network]:
    """CIDRs or single addresses, space-separated or repeated; a bad one is a ValueError naming it."""
    out: list[Network] = []
    for v in values:
        for part in v.split():
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"'{part}' is not a network (examples: 10.1.0.0/16, fd00::/8)") from None
    return out


class DestinationRefused(Exception):
    """The destination is inside and not opened (``unresolvable`` when the name has no address)."""

    def __init__(self, unresolvable: bool = False) -> None:
        super().__init__("the host name does not resolve" if unresolvable else "destination not allowed")
        self.unresolvable = unresolvable


def is_inside(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED)
    )


def allowed_addresses(host: str, port: int, nets: list[Network]) -> list[tuple[Any, ...]]:
    """The socket addresses ``host`` resolves to, if every one of them may be reached."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError, UnicodeError):
        raise DestinationRefused(unresolvable=True) from None
    if not infos:
        raise DestinationRefused(unresolvable=True)
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if is_inside(ip) and not any(ip in n for n in nets):
            raise DestinationRefused()
    return [info[4] for info in infos]

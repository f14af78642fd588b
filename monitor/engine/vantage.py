"""The vantage self-check: can this host reach IPv6 at all? Decided without sending a packet.

A UDP connect() to each target's IPv6 address asks the kernel for a route and a source address.
Global, ULA and documentation sources count; loopback only for loopback targets; link-local never.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class VantageCheck:
    ipv6: bool | None
    """True: a usable route to at least one target's IPv6 address; None: no address to test."""
    routes: dict[str, str | None] = field(default_factory=dict)
    """Target IPv6 address -> the source address the kernel would use (None: no route)."""

    def to_json(self) -> dict[str, object]:
        return {"ipv6": self.ipv6, "routes": dict(self.routes)}


def route_source(address: str, source: str | None = None) -> str | None:
    """The kernel's source address towards `address`, or None when it has no route."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            if source:
                sock.bind((source, 0))
            sock.connect((address, 9))  # UDP connect: a route lookup, no packet leaves
            return str(sock.getsockname()[0]).split("%")[0]
    except OSError:
        return None


def usable(target: str, source: str | None) -> bool:
    if source is None:
        return False
    src = ipaddress.IPv6Address(source)
    dst = ipaddress.IPv6Address(target)
    if src.is_link_local or src.is_unspecified:
        return False
    if src.is_loopback:
        return dst.is_loopback
    return True


def check_vantage(addresses: Iterable[str], source: str | None = None) -> VantageCheck:
    routes = {a: route_source(a, source) for a in dict.fromkeys(addresses)}
    if not routes:
        return VantageCheck(ipv6=None)
    return VantageCheck(ipv6=any(usable(a, s) for a, s in routes.items()), routes=routes)

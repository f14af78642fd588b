"""Bind several loopback sockets (TCP/UDP, ::1/127.0.0.1) to one kernel-chosen port number.
Only IP literals are accepted (no name resolution); sockets come back bound, not listening."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass

LOOPBACK_V6 = "::1"
LOOPBACK_V4 = "127.0.0.1"
LOOPBACKS: tuple[str, ...] = (LOOPBACK_V6, LOOPBACK_V4)


class PortAllocationError(OSError):
    """No port number was free for every requested socket within the allowed attempts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketSpec:
    """One socket to bind: an IP literal and TCP (SOCK_STREAM) or UDP (SOCK_DGRAM)."""

    host: str
    kind: socket.SocketKind

    @property
    def family(self) -> socket.AddressFamily:
        return family_of(self.host)


def family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 or AF_INET for an IP literal; refuses names so nothing is ever resolved."""
    for family in (socket.AF_INET6, socket.AF_INET):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    raise ValueError(f"not an IP literal: {host!r}")


def _new_socket(spec: SocketSpec) -> socket.socket:
    sock = socket.socket(spec.family, spec.kind)
    try:
        if spec.family == socket.AF_INET6:
            # ::1 never accepts v4-mapped traffic anyway; being explicit keeps the families apart
            # even if someone passes "::" here.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # No SO_REUSEADDR on purpose: with it Linux lets two UDP sockets share a port, and then a
        # clash with another process would go unnoticed instead of triggering a retry.
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_same_port(
    specs: Sequence[SocketSpec], *, port: int = 0, attempts: int = 50
) -> tuple[int, list[socket.socket]]:
    """Bind every spec to one port number; the first spec picks it (port 0 = kernel's choice).

    Returns the port and the sockets in spec order; the caller owns (and must close) them.
    With port 0 a clash on a later socket closes everything and retries with a fresh port.
    """
    if not specs:
        raise ValueError("no sockets requested")
    tries = attempts if port == 0 else 1
    last_error: OSError | None = None
    for _ in range(tries):
        bound: list[socket.socket] = []
        try:
            first = _new_socket(specs[0])
            bound.append(first)
            first.bind((specs[0].host, port))
            chosen = int(first.getsockname()[1])
            for spec in specs[1:]:
                sock = _new_socket(spec)
                bound.append(sock)
                sock.bind((spec.host, chosen))
        except OSError as exc:
            for sock in bound:
                sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            last_error = exc
            continue
        return chosen, bound
    raise PortAllocationError(
        errno.EADDRINUSE, f"no common free port after {tries} attempt(s): {last_error}"
    )

"""Network guard for the test suite: an audit hook that refuses any socket traffic or name lookup
outside loopback and the lab's documentation prefixes, and records it so the test fails loudly.

Installed in the pytest process by conftest.py and in every child Python process the tests start
(through sitecustomize.py in this folder, put on PYTHONPATH). Audit hooks see connect, sendto,
sendmsg and getaddrinfo before the system call, so a refused attempt sends no packet.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from typing import Any

LOOPBACK = ("127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104")
LAB_PREFIXES = (
    "2001:db8::/32",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "::ffff:198.51.100.0/120",
    "::ffff:203.0.113.0/120",
)


HOST_NETNS_ENV = "DUALSTACK_NETGUARD_HOST_NETNS"


def netns_id() -> str | None:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


def _in_own_namespace() -> bool:
    """True inside a network namespace the tests made: there the lab prefixes are ours. In the
    machine's own namespace (the pytest process's, passed down in HOST_NETNS_ENV) they would
    follow its default route out, so they are refused. Unknown means refused."""
    own, host = netns_id(), os.environ.get(HOST_NETNS_ENV)
    return own is not None and host is not None and own != host


ALLOWED = tuple(
    ipaddress.ip_network(n) for n in (*LOOPBACK, *(LAB_PREFIXES if _in_own_namespace() else ()))
)
ALLOWED_NAMES = frozenset({"localhost", "ip6-localhost", ""})
LOG_ENV = "DUALSTACK_NETGUARD_LOG"


class NetworkGuardError(PermissionError):
    """Raised inside the code under test when it reaches for a forbidden address."""


violations: list[str] = []
_lock = threading.Lock()
_installed = False
_log_path: str | None = None


def address_allowed(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return any(ip in net for net in ALLOWED if net.version == ip.version)


def _check_address(address: Any) -> str | None:
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return None  # AF_UNIX paths, netlink (pid, groups): not network traffic
    host = address[0]
    if host in ALLOWED_NAMES:
        return None
    if address_allowed(host):
        return None
    return f"connection to {address!r}"


def _check_name(host: Any) -> str | None:
    if host is None:
        return None
    text = host.decode() if isinstance(host, bytes) else str(host)
    if text in ALLOWED_NAMES or address_allowed(text):
        return None
    return f"name lookup of {text!r} through the system resolver"


def _record(what: str) -> None:
    with _lock:
        violations.append(what)
    if _log_path:
        with open(_log_path, "a", encoding="utf-8") as log:
            log.write(f"pid {os.getpid()}: {what}\n")
    raise NetworkGuardError(f"network guard: forbidden {what}")


_LOOKUPS = frozenset(
    {
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyname_ex",
        "socket.gethostbyaddr",
    }
)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    problem = None
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock = args[0]
        if isinstance(sock, socket.socket) and sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            return
        problem = _check_address(args[1])
    elif event in _LOOKUPS:
        problem = _check_name(args[0])
    if problem:
        _record(problem)


def install(*, log_to_file: bool = False) -> None:
    """Add the hook; a child process also appends what it refuses to the file in LOG_ENV."""
    global _installed, _log_path
    if log_to_file:
        _log_path = os.environ.get(LOG_ENV)
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


def take() -> list[str]:
    with _lock:
        out = list(violations)
        violations.clear()
    return out

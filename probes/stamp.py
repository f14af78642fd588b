"""Receive times from the kernel: SO_TIMESTAMPNS stamps each datagram as it arrives, so an
event loop that reads it late does not add its own delay to a measured round trip.

Linux stamps with CLOCK_REALTIME, so the send time is time.time_ns() taken just before sendto.
Where no stamp comes back (another OS, or the option refused) the time of the read stands in.
"""

from __future__ import annotations

import atexit
import contextlib
import socket
import struct
import time
from typing import Any

from probes.netutil import wait_readable

# Python 3.11 does not export the name; 35 on Linux (asm-generic/socket.h), SCM_TIMESTAMPNS
# is the same value.
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")  # struct timespec: tv_sec, tv_nsec, two native longs
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


_keeper: socket.socket | None = None


def stamp_arrivals(sock: socket.socket) -> None:
    """Ask the kernel to stamp every datagram this socket receives (best effort)."""
    global _keeper
    # not Linux: recv_stamped falls back to the time of the read
    with contextlib.suppress(OSError):
        if _keeper is None:
            # Linux stamps arrivals only while some socket wants stamps, and switches that on
            # from a work queue a moment after the first asks (net_enable_timestamp): until
            # then a datagram is stamped when read. One socket kept open for the process keeps
            # it on, so that only the very first queries can miss their stamp.
            _keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            _keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            atexit.register(_keeper.close)  # closed, not left to warn at exit
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def now_ns() -> int:
    """The send time, on the clock the kernel stamps arrivals with (CLOCK_REALTIME)."""
    return time.time_ns()


def recv_stamped(sock: socket.socket, size: int) -> tuple[bytes, Any, int]:
    """One datagram, its sender and its arrival time in ns; raises BlockingIOError when none
    waits, OSError (ConnectionRefusedError for a port unreachable) as recv would."""
    data, ancillary, _flags, address = sock.recvmsg(size, _ANCILLARY)
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(raw)
            return data, address, seconds * 1_000_000_000 + nanoseconds
    return data, address, time.time_ns()


async def arrival(sock: socket.socket, size: int) -> tuple[bytes, Any, int]:
    """recv_stamped() once a datagram is there (a non-blocking socket; any event loop)."""
    while True:
        try:
            return recv_stamped(sock, size)
        except (BlockingIOError, InterruptedError):
            pass
        await wait_readable(sock)


def elapsed(sent_ns: int, received_ns: int) -> float:
    """Seconds between a send and a kernel-stamped arrival; never negative (the realtime
    clock may be stepped between the two)."""
    return max(0, received_ns - sent_ns) / 1e9

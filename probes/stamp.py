"""Receive times from the kernel: SO_TIMESTAMPNS stamps each datagram (and each TCP segment)
as it arrives, so an event loop that reads it late does not add its own delay to a measured
round trip.

Linux stamps with CLOCK_REALTIME, so the send time is time.time_ns() taken just before sendto.
Where no stamp comes back (another OS, or the option refused) the time of the read stands in,
and `PeerTime` says it has no figure.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import struct
import time
from typing import Any

from probes.netutil import data_segments_sent, wait_readable

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


PEEK = 65536
"""Bytes a peek may copy: the stamp comes from the last segment copied."""


def queued_arrival(sock: socket.socket) -> int | None:
    """The kernel's arrival stamp (ns) of the last segment queued on a stamped TCP socket, read
    without taking any data; None when nothing is queued (or the peer closed) or no stamp came."""
    try:
        data, ancillary, _flags, _address = sock.recvmsg(
            PEEK, _ANCILLARY, socket.MSG_PEEK | socket.MSG_DONTWAIT
        )
    except OSError:  # BlockingIOError: nothing queued; a reset is the reader's to see
        return None
    for level, kind, raw in ancillary:
        if data and level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack_from(raw)
            return int(seconds * 1_000_000_000 + nanoseconds)
    return None


class PeerTime:
    """How long an exchange on a TCP socket that a library reads and writes itself (OpenSSL's
    handshake) waited on the peer, by the kernel's clock: from when this end's data last left
    to the arrival stamp of what came back, summed over the round trips. What this end takes
    in between, its event loop's delays included, is not in it. Call `waiting()` when the
    exchange waits for the peer and `arrived()` once the socket is readable; `seconds()` is
    None when the kernel gave no figure (another OS, no stamp) or a round trip was not seen:
    an answer that came while the library was still in the call that sent the question (this
    end slow, or descheduled) has no wait to stamp, or none that began after the question
    left. The caller then times by wall.

    It reads the socket through a duplicate of its descriptor: peeks, never takes data."""

    def __init__(self, sock: socket.socket) -> None:
        self._peek: socket.socket | None = None
        self._sent: int | None = None  # data segments sent when last asked
        self._since = 0  # ns: when the peer's turn began (our data left, or its last came)
        self._waited = 0
        self._rounds = 0  # waits that began with our data leaving
        self._timed = True
        try:
            self._peek = socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
            stamp_arrivals(self._peek)
        except OSError:
            self._timed = False

    def __enter__(self) -> PeerTime:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._peek is not None:
            self._peek.close()

    def waiting(self) -> None:
        """The exchange waits for the peer: if this end sent data since, the peer's turn
        starts now."""
        if self._peek is None:
            return
        sent = data_segments_sent(self._peek)
        if sent is None:
            self._timed = False
        elif sent != self._sent:
            self._sent, self._since = sent, now_ns()
            self._rounds += 1

    def arrived(self) -> None:
        """The socket is readable: the wait lasted until the last queued segment arrived."""
        if self._peek is None or not self._timed:
            return
        at = queued_arrival(self._peek) if self._sent is not None else None
        if at is None or at < self._since:
            # no stamp; or the answer came before the wait began, so when our data left
            # (somewhere in the library's call that sent it) is not known
            self._timed = False
            return
        self._waited += at - self._since
        self._since = at

    def seconds(self, rounds: int = 1) -> float | None:
        """The time waited, if every one of the exchange's `rounds` round trips was waited
        for; else None."""
        if not self._timed or self._peek is None or self._rounds < rounds:
            return None
        return self._waited / 1e9

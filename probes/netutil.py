"""Socket helpers shared by the TCP-based probes: pin the family by dialling the IP literal.

An optional per-family source address binds the socket to one uplink of a multi-homed host.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from probes.base import ProbeRequest


def local_addr(req: ProbeRequest) -> tuple[str, int] | None:
    source = req.env.source_addresses.get(req.family)
    return (source, 0) if source else None


async def connect_socket(
    req: ProbeRequest, *, mss: int | None = None, nodelay: bool = False
) -> socket.socket:
    """A non-blocking TCP socket connected to `req.address` (never the name), for a probe that
    does its own reading and writing. `mss` caps the segment size this end announces in its
    SYN, so the peer sends no larger segments; `nodelay`: TCP_NODELAY (measured latency must be
    the network's, never Nagle's)."""
    family = socket.AF_INET6 if req.family == "ipv6" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if mss is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        source = local_addr(req)
        if source is not None:
            sock.bind(source)
        await asyncio.get_running_loop().sock_connect(sock, (req.address, req.target.port))
    except BaseException:  # cancelled or failed: the socket is ours to close either way
        sock.close()
        raise
    return sock


# struct tcp_info (linux/tcp.h): tcpi_rtt, the smoothed RTT in microseconds, is the u32 at
# byte 68; right after the handshake it is the SYN/SYN-ACK round trip the kernel timed.
_U32 = struct.Struct("=I")
_TCPI_RTT_OFFSET = 68
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def connect_seconds(sock: socket.socket | None, wall: float) -> float:
    """The TCP handshake's round trip as the kernel timed it (Linux TCP_INFO), so a busy event
    loop that noticed the connection late does not inflate it; else (or without a socket) the
    wall-clock time."""
    if sock is None or _TCP_INFO is None:
        return wall
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    except (OSError, ValueError):  # ValueError: uvloop's socket of a connection already closed
        return wall
    if len(info) < _TCPI_RTT_OFFSET + 4:
        return wall
    (rtt_us,) = _U32.unpack_from(info, _TCPI_RTT_OFFSET)
    # 0: no sample (a retransmitted SYN gives none, Karn); never more than what we saw
    return rtt_us / 1e6 if 0 < rtt_us / 1e6 <= wall else wall


# tcpi_data_segs_out, the u32 at byte 156 (Linux 4.6): segments carrying data this end sent.
_TCPI_DATA_SEGS_OUT_OFFSET = 156


def data_segments_sent(sock: socket.socket) -> int | None:
    """How many segments carrying data this end of a TCP connection has sent (Linux TCP_INFO),
    so that a caller knows whether a library that writes the socket itself sent anything;
    None where the kernel does not say."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCPI_DATA_SEGS_OUT_OFFSET + 4)
    except (OSError, ValueError):
        return None
    if len(info) < _TCPI_DATA_SEGS_OUT_OFFSET + 4:
        return None
    return int(_U32.unpack_from(info, _TCPI_DATA_SEGS_OUT_OFFSET)[0])


# tcpi_advmss, the u32 at byte 84: the segment size this end announced in its SYN (which
# bounds the segments the peer sends, so the size of the packets coming back), less the 12
# bytes of the timestamp option once both ends use it (TCPI_OPT_TIMESTAMPS of tcpi_options).
_TCPI_ADVMSS_OFFSET = 84
_TCPI_OPTIONS_OFFSET = 5
_TCPI_OPT_TIMESTAMPS = 1
_TIMESTAMP_OPTION = 12


def announced_mss(sock: socket.socket | None) -> int | None:
    """The MSS this end announced (Linux TCP_INFO), else the connection's TCP_MAXSEG; None
    when neither can be read."""
    if sock is None:
        return None
    try:
        if _TCP_INFO is not None:
            info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
            if len(info) >= _TCPI_ADVMSS_OFFSET + 4:
                (advmss,) = _U32.unpack_from(info, _TCPI_ADVMSS_OFFSET)
                if advmss:
                    stamps = info[_TCPI_OPTIONS_OFFSET] & _TCPI_OPT_TIMESTAMPS
                    return int(advmss) + (_TIMESTAMP_OPTION if stamps else 0)
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
    except (OSError, ValueError):  # ValueError: uvloop's socket of a connection already closed
        return None


def route_source(address: str, source: str | None = None) -> str | None:
    """The kernel's source address toward `address` (from `source` when given), or None when
    it has no route: a UDP connect is a route lookup, no packet leaves."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            if source:
                sock.bind((source, 0))
            sock.connect((address, 9))
            return str(sock.getsockname()[0]).split("%")[0]
    except OSError:
        return None


CLOSE_GRACE = 1.0
"""Seconds a probe waits at most for an orderly close; the peer cannot hold it longer."""


async def wait_readable(sock: socket.socket) -> None:
    """Until `sock` is readable, on the running loop (loop.sock_recv and sock_recvfrom are not
    what every loop has: uvloop lacks the second, and neither leaves the reading to us)."""
    await _ready(sock, write=False)


async def wait_writable(sock: socket.socket) -> None:
    """Until `sock` can be written to, on the running loop."""
    await _ready(sock, write=True)


async def _ready(sock: socket.socket, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    if write:
        loop.add_writer(fd, _wake, ready)
    else:
        loop.add_reader(fd, _wake, ready)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

"""Socket helpers shared by the TCP-based probes: pin the family by dialling the IP literal.

An optional per-family source address binds the socket to one uplink of a multi-homed host.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct

from probes.base import ProbeRequest


def local_addr(req: ProbeRequest) -> tuple[str, int] | None:
    source = req.env.source_addresses.get(req.family)
    return (source, 0) if source else None


async def open_stream(
    req: ProbeRequest,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    mss: int | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to `req.address` (never the name), optionally with TLS and SNI. `mss` caps the
    segment size this end announces in its SYN, so the peer sends no larger segments."""
    if mss is None:
        reader, writer = await asyncio.open_connection(
            host=req.address,
            port=req.target.port,
            ssl=ssl_context,
            server_hostname=server_hostname if ssl_context else None,
            local_addr=local_addr(req),
            # The handshake is bounded by the probe timeout, not asyncio's 60 s default.
            ssl_handshake_timeout=req.timeout if ssl_context else None,
        )
    else:
        # TCP_MAXSEG must be set before the SYN leaves: asyncio cannot, so connect by hand.
        sock = await connect_socket(req, mss=mss)
        reader, writer = await asyncio.open_connection(
            sock=sock,
            ssl=ssl_context,
            server_hostname=server_hostname if ssl_context else None,
            ssl_handshake_timeout=req.timeout if ssl_context else None,
        )
    sock = writer.get_extra_info("socket")
    if sock is not None:  # measured latency must be the network's, never Nagle's
        # ValueError: uvloop's socket of a connection the peer has already closed
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def connect_socket(
    req: ProbeRequest, *, mss: int | None = None, nodelay: bool = False
) -> socket.socket:
    """A non-blocking TCP socket connected to `req.address`, for a probe that does its own
    reading and writing (no stream). `mss` as in open_stream; `nodelay`: TCP_NODELAY."""
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


def connect_seconds(writer: asyncio.StreamWriter, wall: float) -> float:
    """The TCP handshake's round trip as the kernel timed it (Linux TCP_INFO), so a busy event
    loop that noticed the connection late does not inflate it; else the wall-clock time."""
    return socket_connect_seconds(writer.get_extra_info("socket"), wall)


def socket_connect_seconds(sock: socket.socket | None, wall: float) -> float:
    """connect_seconds() of a connected socket (None: the wall-clock time)."""
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


# tcpi_advmss, the u32 at byte 84: the segment size this end announced in its SYN (which
# bounds the segments the peer sends, so the size of the packets coming back), less the 12
# bytes of the timestamp option once both ends use it (TCPI_OPT_TIMESTAMPS of tcpi_options).
_TCPI_ADVMSS_OFFSET = 84
_TCPI_OPTIONS_OFFSET = 5
_TCPI_OPT_TIMESTAMPS = 1
_TIMESTAMP_OPTION = 12


def announced_mss(writer: asyncio.StreamWriter) -> int | None:
    """The MSS this end announced (Linux TCP_INFO), else the connection's TCP_MAXSEG; None
    when neither can be read."""
    return socket_announced_mss(writer.get_extra_info("socket"))


def socket_announced_mss(sock: socket.socket | None) -> int | None:
    """announced_mss() of a socket (None: unknown)."""
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


CLOSE_GRACE = 1.0


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close and wait a little; a peer that resets or never acks the close changes nothing
    already measured, and must not hold the probe."""
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE)


def abort_stream(writer: asyncio.StreamWriter) -> None:
    """Drop a connection that already failed: after a failed start_tls, Python 3.11's
    wait_closed() can wait forever, so don't ask for a graceful close."""
    writer.transport.abort()


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

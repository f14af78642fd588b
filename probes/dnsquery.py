"""The one DNS query path: a dnspython message asked of one server over UDP (TCP when the
reply is truncated), timed from the send to the kernel's stamp on the reply.

The resolver (probes/resolve.py) and the dns probe's SOA query (probes/dns.py) both ask here;
the choice of server, retries and what an rcode means are theirs.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query

from probes import stamp

_HEADER = 12
_TC = 0x02  # in the third byte of the header


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    message: dns.message.Message
    """The server's response to the query (its id and question checked)."""
    seconds: float
    """From the send to the kernel's stamp on the UDP reply; over TCP, wall-clock time from
    the UDP send to the reply read (the retry's own round trips included)."""
    tcp: bool
    """Asked again over TCP because the UDP reply was truncated."""


async def exchange(
    query: dns.message.Message,
    server: str,
    port: int,
    *,
    timeout: float,
    source: str | None = None,
    strict: bool = False,
) -> Reply:
    """Ask `server` once, within `timeout` seconds. A UDP datagram that is not a response to
    the query is dropped (it may be spoofed) unless `strict`, when it raises
    dns.query.BadResponse or the parse error (a name-server target is judged by its reply).
    Raises TimeoutError, OSError (ConnectionRefusedError: the port is closed),
    dns.exception.DNSException."""
    deadline = time.monotonic() + timeout
    sent_ns, response, received_ns = await _udp(query, server, port, timeout, source, strict)
    if not response.flags & dns.flags.TC:
        return Reply(message=response, seconds=stamp.elapsed(sent_ns, received_ns), tcp=False)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("truncated, and no time left to ask over TCP")
    try:
        response = await dns.asyncquery.tcp(query, server, timeout=left, port=port, source=source)
    except dns.exception.Timeout:
        raise TimeoutError("no reply over TCP in time") from None
    return Reply(message=response, seconds=stamp.elapsed(sent_ns, stamp.now_ns()), tcp=True)


def _read(query: dns.message.Message, data: bytes, strict: bool) -> dns.message.Message | None:
    """The reply in `data`, or None to wait for another (when `strict`, raises instead)."""
    header = len(data) >= _HEADER
    if not strict and not (header and data[:2] == query.id.to_bytes(2, "big")):
        return None  # not ours: not worth parsing
    try:
        # Of a truncated reply only the question is read: the rest may be cut anywhere.
        response = dns.message.from_wire(data, question_only=header and bool(data[2] & _TC))
    except dns.exception.DNSException:
        if strict:
            raise
        return None
    if query.is_response(response):
        return response
    if strict:
        raise dns.query.BadResponse
    return None


async def _udp(
    query: dns.message.Message,
    server: str,
    port: int,
    timeout: float,
    source: str | None,
    strict: bool,
) -> tuple[int, dns.message.Message, int]:
    """(send time, the reply, its arrival time), from a fresh connected socket: a fresh source
    port per query, the kernel drops datagrams from anyone but the server, and reports its
    port unreachable as ConnectionRefusedError."""
    wire = query.to_wire()
    af = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        stamp.stamp_arrivals(sock)
        if source:
            sock.bind((source, 0))
        sock.connect((server, port))
        sent_ns = stamp.now_ns()
        sock.send(wire)
        async with asyncio.timeout(timeout):
            while True:
                data, _, received_ns = await stamp.arrival(sock, 65535)
                response = _read(query, data, strict)
                if response is not None:
                    return sent_ns, response, received_ns

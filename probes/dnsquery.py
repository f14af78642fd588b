"""The one DNS query path: a dnspython message asked of one server over UDP (TCP when the
reply is truncated), timed from the send to the kernel's stamp on the reply; or over TCP from
the start (`exchange_tcp`), for the questions that test TCP 53 itself.

The resolver (probes/resolve.py), the dns probe's SOA query (probes/dns.py) and the name
server's and resolvers' other questions (probes/dnstcp.py, probes/dnslarge.py,
probes/resolvers.py) all ask here; the choice of server, retries and what an rcode means are
theirs (`rcode_kind` says it for the questions that go through `ask`). The EDNS buffer and
the DO bit are the query's own (`use_edns`).
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
from probes.base import ErrorKind, ProbeError
from probes.errors import classify, error

_HEADER = 12
_RCODE_KINDS = {"REFUSED": ErrorKind.DNS_REFUSED, "NXDOMAIN": ErrorKind.DNS_NXDOMAIN}
_TC = 0x02  # in the third byte of the header


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    message: dns.message.Message
    """The server's response to the query (its id and question checked)."""
    seconds: float
    """From the send to the kernel's stamp on the UDP reply; over TCP, wall-clock time from
    the UDP send to the reply read (the retry's own round trips included), or from the
    connect to the reply read when asked over TCP only (`exchange_tcp`)."""
    tcp: bool
    """Asked again over TCP because the UDP reply was truncated (or asked over TCP only)."""
    size: int = 0
    """Bytes of the reply as it arrived (its DNS message, without TCP's length prefix)."""
    truncated: bool = False
    """The UDP reply had TC set and was kept as it is (`retry_tcp=False`)."""


async def exchange(
    query: dns.message.Message,
    server: str,
    port: int,
    *,
    timeout: float,
    source: str | None = None,
    strict: bool = False,
    retry_tcp: bool = True,
) -> Reply:
    """Ask `server` once, within `timeout` seconds. A UDP datagram that is not a response to
    the query is dropped (it may be spoofed) unless `strict`, when it raises
    dns.query.BadResponse or the parse error (a name-server target is judged by its reply).
    A truncated reply is asked again over TCP unless not `retry_tcp` (it is then the reply).
    Raises TimeoutError, OSError (ConnectionRefusedError: the port is closed),
    dns.exception.DNSException."""
    deadline = time.monotonic() + timeout
    sent_ns, response, received_ns, size = await _udp(query, server, port, timeout, source, strict)
    truncated = bool(response.flags & dns.flags.TC)
    if not truncated or not retry_tcp:
        seconds = stamp.elapsed(sent_ns, received_ns)
        return Reply(message=response, seconds=seconds, tcp=False, size=size, truncated=truncated)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("truncated, and no time left to ask over TCP")
    try:
        response = await dns.asyncquery.tcp(query, server, timeout=left, port=port, source=source)
    except dns.exception.Timeout:
        raise TimeoutError("no reply over TCP in time") from None
    return Reply(message=response, seconds=stamp.elapsed(sent_ns, stamp.now_ns()), tcp=True)


async def exchange_tcp(
    query: dns.message.Message,
    server: str,
    port: int,
    *,
    timeout: float,
    source: str | None = None,
) -> Reply:
    """Ask `server` over TCP only (RFC 7766), within `timeout` seconds: one fresh connection,
    one query, timed from the connect to the reply read (wall clock: TCP has no receive stamp
    per message). A reply that is not one to the query raises dns.query.BadResponse.
    Raises TimeoutError, OSError, EOFError (the server closed early), DNSException."""
    wire = query.to_wire()
    started = stamp.now_ns()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            server, port, local_addr=(source, 0) if source else None
        )
        try:
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
            length = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(length)
        finally:
            writer.close()
    received = stamp.now_ns()
    response = dns.message.from_wire(data)
    if not query.is_response(response):
        raise dns.query.BadResponse
    return Reply(message=response, seconds=stamp.elapsed(started, received), tcp=True, size=length)


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
) -> tuple[int, dns.message.Message, int, int]:
    """(send time, the reply, its arrival time, its size), from a fresh connected socket: a
    fresh source port per query, the kernel drops datagrams from anyone but the server, and
    reports its port unreachable as ConnectionRefusedError."""
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
                    return sent_ns, response, received_ns, len(data)


async def ask(
    query: dns.message.Message,
    server: str,
    port: int,
    *,
    timeout: float,
    source: str | None = None,
    tcp: bool = False,
) -> Reply | ProbeError:
    """One question of a name server's or a resolver's probe: over UDP (a truncated reply is
    the reply) or over TCP only, its reply judged strictly; what went wrong as an error."""
    what = "over TCP" if tcp else "over UDP"
    try:
        if tcp:
            return await exchange_tcp(query, server, port, timeout=timeout, source=source)
        return await exchange(
            query, server, port, timeout=timeout, source=source, strict=True, retry_tcp=False
        )
    except TimeoutError:
        return error(ErrorKind.TIMEOUT, f"no DNS answer {what} in {timeout:.3g} s")
    except (OSError, EOFError) as exc:
        return classify(exc)
    except dns.exception.DNSException as exc:
        return error(ErrorKind.DNS_BAD_RESPONSE, f"{what}: {exc}")


def rcode_kind(rcode: str) -> ErrorKind:
    """The error kind of an answer whose rcode is not NOERROR (SERVFAIL for the rest), as the
    dns probe judges a name server's SOA answer."""
    return _RCODE_KINDS.get(rcode, ErrorKind.DNS_SERVFAIL)

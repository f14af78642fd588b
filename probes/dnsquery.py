"""The one DNS query path: a question (probes/dnswire.py) asked of one server over UDP (TCP when
the reply is truncated, or when asked for), timed from the send to the kernel's stamp on the
reply.

The resolver (probes/resolve.py), the dns probe's SOA query (probes/dns.py) and the name
server's and resolvers' other questions (probes/dnstcp.py, probes/dnslarge.py,
probes/resolvers.py) all ask here; the choice of server, retries and what an rcode means are
theirs (`rcode_kind` says it for the questions that go through `ask`).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass

from probes import stamp
from probes.base import ErrorKind, ProbeError, ProbeRequest
from probes.dnswire import BadMessage, Message, Query, parse, rcode_text
from probes.errors import classify, error

_HEADER = 12
_RCODE_KINDS = {"REFUSED": ErrorKind.DNS_REFUSED, "NXDOMAIN": ErrorKind.DNS_NXDOMAIN}
_TC = 0x02  # in the third byte of the header
_LENGTH = struct.Struct("!H")  # the length before each message over TCP (RFC 1035 4.2.2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    message: Message
    """The server's response to the query (its id and question checked)."""
    seconds: float
    """From the send to the kernel's stamp on the UDP reply; over TCP, wall-clock time from
    the first send to the reply read (a UDP try before it included)."""
    tcp: bool
    """Asked over TCP: the UDP reply was truncated, or `tcp` was asked for."""
    size: int = 0
    """Octets of the reply as it arrived (its DNS message, without TCP's length prefix)."""

    @property
    def truncated(self) -> bool:
        """TC set: a UDP reply kept as it is (`retry_tcp=False`)."""
        return self.message.truncated


async def exchange(
    query: Query,
    server: str,
    port: int,
    *,
    timeout: float,
    source: str | None = None,
    strict: bool = False,
    tcp: bool = False,
    retry_tcp: bool = True,
) -> Reply:
    """Ask `server` once, within `timeout` seconds, over UDP (then TCP if the reply is
    truncated, unless not `retry_tcp`: it is then the reply), or over TCP only when `tcp`
    (RFC 7766: one fresh connection, one query, timed by the wall clock). A UDP datagram that
    is not a response to the query is dropped (it may be spoofed) unless `strict`, when it
    raises BadMessage (a name-server target is judged by its reply). Raises TimeoutError, OSError
    (ConnectionRefusedError: the port is closed), BadMessage."""
    deadline = time.monotonic() + timeout
    if tcp:
        sent_ns = stamp.now_ns()
        response = await _tcp(query, server, port, timeout, source)
        seconds = stamp.elapsed(sent_ns, stamp.now_ns())
        return Reply(message=response, seconds=seconds, tcp=True, size=response.size)
    sent_ns, response, received_ns = await _udp(query, server, port, timeout, source, strict)
    if not response.truncated or not retry_tcp:
        seconds = stamp.elapsed(sent_ns, received_ns)
        return Reply(message=response, seconds=seconds, tcp=False, size=response.size)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("truncated, and no time left to ask over TCP")
    response = await _tcp(query, server, port, left, source)
    seconds = stamp.elapsed(sent_ns, stamp.now_ns())
    return Reply(message=response, seconds=seconds, tcp=True, size=response.size)


def _read(query: Query, data: bytes, strict: bool) -> Message | None:
    """The reply in `data`, or None to wait for another (when `strict`, raises instead)."""
    header = len(data) >= _HEADER
    if not strict and not (header and data[:2] == query.id.to_bytes(2, "big")):
        return None  # not ours: not worth parsing
    try:
        # Of a truncated reply only the question is read: the rest may be cut anywhere.
        response = parse(data, question_only=header and bool(data[2] & _TC))
    except BadMessage:
        if strict:
            raise
        return None
    if response.answers_to(query):
        return response
    if strict:
        raise BadMessage("a reply that does not answer the question asked")
    return None


async def _udp(
    query: Query,
    server: str,
    port: int,
    timeout: float,
    source: str | None,
    strict: bool,
) -> tuple[int, Message, int]:
    """(send time, the reply, its arrival time), from a fresh connected socket: a fresh source
    port per query, the kernel drops datagrams from anyone but the server, and reports its
    port unreachable as ConnectionRefusedError."""
    af = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        stamp.stamp_arrivals(sock)
        if source:
            sock.bind((source, 0))
        sock.connect((server, port))
        sent_ns = stamp.now_ns()
        sock.send(query.wire)
        async with asyncio.timeout(timeout):
            while True:
                data, _, received_ns = await stamp.arrival(sock, 65535)
                response = _read(query, data, strict)
                if response is not None:
                    return sent_ns, response, received_ns


async def _tcp(query: Query, server: str, port: int, timeout: float, source: str | None) -> Message:
    """The query over a new TCP connection (closed after the reply); a reply that is not to
    the query is BadMessage (the connection is the server's alone)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                server, port, local_addr=(source, 0) if source else None
            )
            try:
                writer.write(_LENGTH.pack(len(query.wire)) + query.wire)
                (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                response = parse(await reader.readexactly(size))
            finally:
                writer.close()
    except asyncio.IncompleteReadError:
        raise BadMessage("the server closed the TCP connection before its whole reply") from None
    if not response.answers_to(query):
        raise BadMessage("a reply over TCP that does not answer the question asked")
    return response


async def ask(
    query: Query,
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
        return await exchange(
            query,
            server,
            port,
            timeout=timeout,
            source=source,
            strict=True,
            tcp=tcp,
            retry_tcp=False,
        )
    except TimeoutError:
        return error(ErrorKind.TIMEOUT, f"no DNS answer {what} in {timeout:.3g} s")
    except OSError as exc:
        return classify(exc)
    except BadMessage as exc:
        return error(ErrorKind.DNS_BAD_RESPONSE, f"{what}: {exc}")


async def ask_target(
    req: ProbeRequest, query: Query, *, timeout: float, tcp: bool = False
) -> Reply | ProbeError:
    """`ask` the address being probed, at the target's port, from this vantage's source
    address for the family."""
    source = req.env.source_addresses.get(req.family)
    return await ask(query, req.address, req.target.port, timeout=timeout, source=source, tcp=tcp)


def rcode_kind(rcode: int) -> ErrorKind:
    """The error kind of an answer whose rcode is not NOERROR (SERVFAIL for the rest), as the
    dns probe judges a name server's SOA answer."""
    return _RCODE_KINDS.get(rcode_text(rcode), ErrorKind.DNS_SERVFAIL)

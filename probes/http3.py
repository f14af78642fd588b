"""HTTP/3 over QUIC (aioquic) to the IP literal, with the host as QUIC server_name and :authority.

Reports handshake time, TTFB and status. Uses a socket of the probed family (not aioquic's
dual-stack `::` socket) so an IPv4-only host works and a per-family source address can be bound.
A hostile server cannot make it hold much: the QPACK dynamic table has capacity 0, server push
is off, receive windows never grow past their first size, and a response header section over
the caps of probes/httpbase.py is refused as soon as its frame header says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)
from aioquic.tls import AlertDescription

from probes.adapters.aioquic import BoundedH3, BoundedQuic, peer_certificates
from probes.base import Clock, ErrorKind, Outcome, ProbeError, ProbeRequest, passed
from probes.details import QuicExchange
from probes.errors import classify, error
from probes.httpbase import (
    HTTP_METRICS,
    MAX_BODY,
    MAX_HEADER_LIST_SIZE,
    USER_AGENT,
    ResponseRefused,
    authority,
    check_headers,
    parse_status,
    status_class,
    status_error,
)
from probes.kinds import NORMAL, NOT, SIG, Compared, Cost, Kind, register
from probes.trust import verify_peer, x509_store

STREAM_WINDOW = MAX_BODY + 4 * MAX_HEADER_LIST_SIZE
"""Bytes the server may send on the request stream, in all: the body bound plus room for the
header section and framing. It never grows (see BoundedQuic)."""
CONNECTION_WINDOW = STREAM_WINDOW + 256 * 1024
"""Bytes the server may send on all streams together (control and QPACK streams included)."""
_HEADERS_FRAME = 0x1
_PUSH_PROMISE_FRAME = 0x5


def _varint(data: bytes) -> tuple[int, int] | None:
    """A QUIC variable-length integer at the start of `data`: (value, length), or None when
    `data` does not hold all of it yet (RFC 9000, 16)."""
    if not data:
        return None
    length = 1 << (data[0] >> 6)
    if len(data) < length:
        return None
    value = data[0] & 0x3F
    for byte in data[1:length]:
        value = (value << 8) | byte
    return value, length


class _FrameGuard:
    """Follows the HTTP/3 frames of the response stream as bytes arrive, ahead of aioquic,
    which buffers a HEADERS frame whole before decoding it: a frame announcing more than the
    header cap is refused at its first bytes."""

    def __init__(self) -> None:
        self.head = b""
        self.payload_left = 0

    def feed(self, data: bytes) -> None:
        while data:
            if self.payload_left:
                taken = min(self.payload_left, len(data))
                self.payload_left -= taken
                data = data[taken:]
                continue
            self.head += data
            data = b""
            kind = _varint(self.head)
            size = _varint(self.head[kind[1] :]) if kind else None
            if kind is None or size is None:
                return  # the frame header is still incomplete
            if kind[0] in (_HEADERS_FRAME, _PUSH_PROMISE_FRAME) and size[0] > MAX_HEADER_LIST_SIZE:
                raise ResponseRefused(
                    f"response header block of {size[0]} bytes (at most {MAX_HEADER_LIST_SIZE})"
                )
            data = self.head[kind[1] + size[1] :]
            self.head = b""
            self.payload_left = size[0]


class _ConnectedTransport(asyncio.DatagramTransport):
    """The transport of our connected UDP socket, sending without an address: aioquic always
    passes the peer's, which asyncio's loop ignores on a connected socket but uvloop's hands
    to sendto(2), which fails (EISCONN)."""

    def __init__(self, inner: asyncio.DatagramTransport) -> None:
        super().__init__()
        self.inner = inner

    def sendto(self, data: bytes | bytearray | memoryview, addr: object = None) -> None:
        self.inner.sendto(data)

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.inner.get_extra_info(name, default)


class _H3Client(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, clock: Clock) -> None:
        super().__init__(quic)
        self.quic = quic  # aioquic's own reference to it is private
        self.http: H3Connection | None = None
        self.clock = clock
        self.socket_error: OSError | None = None
        self.refused: ResponseRefused | None = None
        self.terminated: ConnectionTerminated | None = None
        self.stream_id: int | None = None
        self.guard = _FrameGuard()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body_bytes = 0
        self.t_headers: float | None = None
        # Our own futures, not aioquic's wait_connected(): its shielded waiter, once the probe
        # times out, is failed later with no one to retrieve the error (logged at exit).
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_ConnectedTransport(cast(asyncio.DatagramTransport, transport)))

    def error_received(self, exc: Exception) -> None:
        # An ICMP port unreachable arrives here: fail now instead of waiting for the timeout.
        if isinstance(exc, OSError) and self.socket_error is None:
            self.socket_error = exc
            self.quic.close(error_code=0, reason_phrase="socket error")
            self.transmit()
            self.fail(exc)

    def fail(self, exc: Exception) -> None:
        for fut in (self.handshake, self.done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def settle(self) -> None:
        """The probe is over: mark failures as seen and cancel what is still pending, so no
        late event (a close timer firing after the probe) leaves an unretrieved error."""
        for fut in (self.handshake, self.done):
            if fut is None:
                continue
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()

    def refuse(self, exc: ResponseRefused) -> None:
        """The response broke a cap: stop reading it, close the connection, fail the request."""
        if self.refused is not None:
            return
        self.refused = exc
        self.quic.close(error_code=ErrorCode.H3_EXCESSIVE_LOAD, reason_phrase="response refused")
        self.transmit()
        self.fail(exc)

    def request(self, path: str, authority_: str) -> asyncio.Future[None]:
        self.done = asyncio.get_running_loop().create_future()
        self.http = BoundedH3(self.quic, max_field_section_size=MAX_HEADER_LIST_SIZE)
        stream_id = self.quic.get_next_available_stream_id()
        self.stream_id = stream_id
        self.http.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority_.encode()),
                (b":path", path.encode()),
                (b"user-agent", USER_AGENT.encode()),
            ],
            end_stream=True,
        )
        self.transmit()
        return self.done

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted) and not self.handshake.done():
            self.handshake.set_result(None)
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            self.fail(ConnectionError(event.reason_phrase or "closed"))
        if self.http is None or self.refused is not None:
            return
        try:
            if isinstance(event, StreamDataReceived) and event.stream_id == self.stream_id:
                self.guard.feed(event.data)
            for h3 in self.http.handle_event(event):
                self.h3_event(h3)
        except ResponseRefused as exc:
            self.refuse(exc)

    def h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            if self.t_headers is None:
                self.t_headers = self.clock()
                passed("ttfb")
            check_headers(event.headers)
            for name, value in event.headers:
                self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
            self.status = parse_status(self.headers.get(":status"))
        elif isinstance(event, DataReceived):
            self.body_bytes += len(event.data)
        ended = getattr(event, "stream_ended", False)
        if (ended or self.body_bytes > MAX_BODY) and self.done and not self.done.done():
            self.done.set_result(None)


# QUIC carries a TLS alert as CRYPTO_ERROR 0x100 + alert (RFC 9001, 4.8).
_CRYPTO_ERROR = 0x100
_ALERT_KINDS = {
    AlertDescription.certificate_expired: ErrorKind.TLS_CERT_EXPIRED,
    AlertDescription.bad_certificate: ErrorKind.TLS_UNTRUSTED,
    AlertDescription.unknown_ca: ErrorKind.TLS_UNTRUSTED,
    AlertDescription.certificate_unknown: ErrorKind.TLS_UNTRUSTED,
}


def _handshake_error(client: _H3Client) -> ProbeError:
    if client.socket_error is not None:
        return classify(client.socket_error)
    term = client.terminated
    if term is None:
        return error(ErrorKind.PROTOCOL_ERROR, "QUIC: handshake failed")
    reason = term.reason_phrase or f"error code {term.error_code:#x}"
    try:
        alert = AlertDescription(term.error_code - _CRYPTO_ERROR)
    except ValueError:
        return error(ErrorKind.PROTOCOL_ERROR, f"QUIC: {reason}")
    kind = _ALERT_KINDS.get(alert, ErrorKind.TLS_HANDSHAKE_FAILED)
    # aioquic reports a name mismatch as bad_certificate; its own message says which.
    if kind is ErrorKind.TLS_UNTRUSTED and "doesn't match" in reason:
        kind = ErrorKind.TLS_HOSTNAME_MISMATCH
    return error(kind, f"QUIC TLS: {reason}")


async def probe(req: ProbeRequest) -> Outcome:
    clock = req.env.clock
    loop = asyncio.get_running_loop()
    # aioquic would build a trust store on every handshake (23 ms of CPU on this loop, each
    # time), from certifi's bundle unless told otherwise: it is told not to verify, and the
    # probe verifies the chain itself against probes/trust.py's store, built once, before it
    # sends a request.
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=list(H3_ALPN),
        server_name=req.target.sni,
        verify_mode=ssl.CERT_NONE,
        max_stream_data=STREAM_WINDOW,
        max_data=CONNECTION_WINDOW,
    )
    try:
        store = x509_store(req.env.ssl_cafile)
        if req.target.tls.client_cert:
            config.load_cert_chain(req.target.tls.client_cert, req.target.tls.client_key)
    except (OSError, ValueError) as exc:  # unreadable or malformed CA, client cert or key
        return Outcome(
            success=False, error=error(ErrorKind.CLIENT_CONFIG, f"QUIC TLS client setup: {exc}")
        )
    af = socket.AF_INET6 if req.family == "ipv6" else socket.AF_INET
    sock = socket.socket(af, socket.SOCK_DGRAM)
    # Datagrams arrive from 4-tuples on AF_INET6; aioquic matches paths by equality.
    peer = (
        (req.address, req.target.port, 0, 0)
        if req.family == "ipv6"
        else (req.address, req.target.port)
    )
    try:
        sock.bind((req.env.source_addresses.get(req.family, ""), 0))
        # Connected, so the kernel reports ICMP port unreachable to us (error_received).
        sock.connect(peer)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _H3Client(BoundedQuic(configuration=config), clock), sock=sock
        )
    except OSError as exc:
        sock.close()
        return Outcome(success=False, error=classify(exc))
    client = protocol
    phases: dict[str, float] = {}
    alpn: str | None = None
    err: ProbeError | None = None
    t0 = clock()
    try:
        client.connect(peer)
        try:
            await client.handshake
        except OSError:  # ConnectionError (the peer closed) or the socket's own error
            return Outcome(success=False, error=_handshake_error(client), phases=phases)
        handshake = clock() - t0
        tls = client.quic.tls
        leaf, chain = peer_certificates(tls)
        bad = verify_peer(leaf, chain, req.target.sni, store)
        if bad is not None:
            return Outcome(success=False, error=bad, phases=phases)
        phases["handshake"] = handshake
        passed("handshake")
        alpn = tls.alpn_negotiated
        t1 = clock()
        response = client.request(req.target.http.path, authority(req))
        try:
            await response
        except ResponseRefused as exc:
            err = error(ErrorKind.PROTOCOL_ERROR, f"HTTP/3: {exc}")
        except OSError as exc:
            if client.socket_error is not None:
                err = classify(client.socket_error)
            elif client.refused is not None:
                err = error(ErrorKind.PROTOCOL_ERROR, f"HTTP/3: {client.refused}")
            else:
                err = error(ErrorKind.PROTOCOL_ERROR, f"HTTP/3: {exc}")
        if client.t_headers is not None:
            phases["ttfb"] = client.t_headers - t1
            phases["transfer"] = max(0.0, clock() - client.t_headers)
    finally:
        try:
            client.close()
            # A peer that never acks our close must not hold the probe: the socket closes anyway.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.wait_closed(), 1.0)
        finally:
            transport.close()
            client.settle()
    details = QuicExchange(
        http_version="3",
        status=client.status,
        alpn=alpn,
        alt_svc=client.headers.get("alt-svc"),
        server=client.headers.get("server"),
        body_bytes=client.body_bytes,
    )
    if err is None:
        err = status_error(req, client.status, "HTTP/3")
    return Outcome(success=err is None, error=err, phases=phases, details=details)


KIND = register(
    Kind(
        name="http3",
        probe=probe,
        summary="HTTP/3 request over QUIC: status and ALPN",
        details=(QuicExchange,),
        compared={
            QuicExchange: (
                Compared[QuicExchange](
                    "status_class", lambda d: status_class(d.status), SIG, ("status",)
                ),
                Compared[QuicExchange]("alpn", lambda d: d.alpn, SIG),
                Compared[QuicExchange]("status", lambda d: d.status, NORMAL),
                Compared[QuicExchange]("server", lambda d: d.server, NORMAL),
                Compared[QuicExchange]("http_version", lambda d: d.http_version, NOT),  # always 3
                Compared[QuicExchange]("alt_svc", lambda d: d.alt_svc, NOT),
                Compared[QuicExchange]("body_bytes", lambda d: d.body_bytes, NOT),
            ),
        },
        phases=("handshake", "ttfb", "transfer"),
        cost=Cost.HEAVY,
        metrics=HTTP_METRICS,
    )
)

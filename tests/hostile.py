"""Hostile peers for tests: real servers on ::1 and 127.0.0.1 (one kernel-chosen port for both)
that misbehave on purpose, so the probes meet the attacks of issue 13 over real sockets.

- HostileH3: QUIC + HTTP/3 (aioquic's server API); per family, a behaviour chosen by the test:
  a normal 200, a CONNECTION_CLOSE with a reason phrase the test picks, a QPACK dynamic-table
  bomb, a static-table header flood, a header list of many small fields.
- HostileTls: TLS + HTTP/2 (h2 with outbound validation off): a non-numeric `:status`, headers
  the test picks, or any leaf certificate (a malformed subjectAltName, say).

Each runs in a thread with its own event loop, so in-process probes and child processes alike
can reach it. None of this is the product's lab: these peers exist only in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trustme
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, QuicEvent
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from monitor.lab.ports import LOOPBACK_V4, LOOPBACK_V6, SocketSpec, bind_same_port

FAMILY_HOSTS = {"ipv4": LOOPBACK_V4, "ipv6": LOOPBACK_V6}


# -- PKI -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    ca_file: Path
    cert_file: Path
    key_file: Path


def issue(tmp: Path, *names: str) -> Pem:
    """A throw-away CA (written as ca.pem) and a leaf for `names`."""
    ca = trustme.CA()
    leaf = ca.issue_cert(*names)
    pem = Pem(ca_file=tmp / "hostile-ca.pem", cert_file=tmp / "leaf.pem", key_file=tmp / "leaf.key")
    ca.cert_pem.write_to_path(str(pem.ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(pem.cert_file))
    leaf.private_key_pem.write_to_path(str(pem.key_file))
    return pem


BAD_DNS_SAN = b"\x30\x03\x82\x01\xff"
"""GeneralNames holding one dNSName that is not IA5 text (byte 0xff): OpenSSL loads and serves
it, and fails only the name check; a strict parser (cryptography) refuses the extension."""


def raw_san_cert(
    tmp: Path, san_der: bytes = BAD_DNS_SAN, subject_cn: str = "hostile.example"
) -> Pem:
    """A self-signed leaf whose subjectAltName extension value is `san_der`, verbatim."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san_der),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = Pem(ca_file=tmp / "bad-ca.pem", cert_file=tmp / "bad.pem", key_file=tmp / "bad.key")
    pem.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


# -- a server in its own thread ----------------------------------------------------------------


class ServerThread:
    """Runs `start()` (returns an async stop function) on a private loop in a thread."""

    def __init__(self, start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]]) -> None:
        self._start = start
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hostile", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # raised again in the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        stop = await self._start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await stop()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError("hostile server did not start") from self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


# -- HTTP/3 ---------------------------------------------------------------------------------

H3Behaviour = Callable[["_H3Peer", int], None]
"""What the server does with a request: (the connection, the request's stream id)."""


class _H3Peer(QuicConnectionProtocol):
    def __init__(self, *args: Any, behaviour: H3Behaviour, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.behaviour = behaviour
        self.h3: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.h3 = H3Connection(self._quic)
        if self.h3 is None:
            return
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.behaviour(self, h3_event.stream_id)
                self.transmit()


def h3_ok(peer: _H3Peer, stream_id: int) -> None:
    assert peer.h3 is not None
    peer.h3.send_headers(stream_id, [(b":status", b"200"), (b"server", b"hostile")])
    peer.h3.send_data(stream_id, b"ok\n", end_stream=True)


def h3_close(reason: str) -> H3Behaviour:
    """Answer the request by closing the connection with this reason phrase."""

    def behaviour(peer: _H3Peer, stream_id: int) -> None:
        peer._quic.close(error_code=0x100, reason_phrase=reason)

    return behaviour


def _qpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An RFC 7541 section 5.1 integer (QPACK uses it too) with `first`'s high bits set."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


STATUS_200 = b"\xd9"  # indexed field line, static table entry 25 (:status 200)
# Static entry 58, the longest of the one-byte ones (69 bytes decoded):
# strict-transport-security: max-age=31536000; includesubdomains; preload
STATIC_58 = b"\xfa"


def h3_dynamic_bomb(block_bytes: int = 200_000, entry_bytes: int = 3000) -> H3Behaviour:
    """One 3 kB entry in the QPACK dynamic table, then a header block of one-byte references
    to it: 200 kB on the wire, some 600 MB once decoded. Sent whatever table capacity the
    client allowed (a hostile encoder does not ask)."""

    def behaviour(peer: _H3Peer, stream_id: int) -> None:
        h3 = peer.h3
        assert h3 is not None
        capacity = 4096
        encoder = _qpack_int(capacity, 5, 0x20)  # Set Dynamic Table Capacity
        encoder += _qpack_int(1, 5, 0x40) + b"x"  # Insert With Literal Name, name "x"
        encoder += _qpack_int(entry_bytes, 7, 0x00) + b"a" * entry_bytes
        encoder_stream = h3._local_encoder_stream_id
        assert encoder_stream is not None
        peer._quic.send_stream_data(encoder_stream, encoder)
        max_entries = capacity // 32
        prefix = _qpack_int(1 % (2 * max_entries) + 1, 8, 0x00) + b"\x00"  # RIC 1, base 1
        block = prefix + STATUS_200 + b"\x80" * block_bytes  # relative index 0: entry 0
        _send_headers_frame(peer, stream_id, block)

    return behaviour


def h3_static_flood(block_bytes: int = 200_000) -> H3Behaviour:
    """A header block of one-byte references to the longest static entry: no dynamic table
    needed, 200 kB on the wire, 200,000 fields and 14 MB once decoded."""

    def behaviour(peer: _H3Peer, stream_id: int) -> None:
        block = b"\x00\x00" + STATUS_200 + STATIC_58 * block_bytes
        _send_headers_frame(peer, stream_id, block)

    return behaviour


def h3_many_headers(count: int) -> H3Behaviour:
    """A small header block (under any size cap) with `count` fields."""

    def behaviour(peer: _H3Peer, stream_id: int) -> None:
        x_content_type_nosniff = b"\xfd"  # static 61, x-content-type-options: nosniff
        block = b"\x00\x00" + STATUS_200 + x_content_type_nosniff * count
        _send_headers_frame(peer, stream_id, block)

    return behaviour


def _send_headers_frame(peer: _H3Peer, stream_id: int, block: bytes) -> None:
    frame = encode_uint_var(FrameType.HEADERS) + encode_uint_var(len(block)) + block
    peer._quic.send_stream_data(stream_id, frame, end_stream=True)


class HostileH3:
    """HTTP/3 on ::1 and 127.0.0.1, one port; `behaviours` maps family to H3Behaviour."""

    def __init__(self, pem: Pem, behaviours: dict[str, H3Behaviour]) -> None:
        self.pem = pem
        self.behaviours = behaviours
        self.port = 0
        self._thread = ServerThread(self._start)

    async def _start(self) -> Callable[[], Awaitable[None]]:
        loop = asyncio.get_running_loop()
        specs = [SocketSpec(host=h, kind=socket.SOCK_DGRAM) for h in FAMILY_HOSTS.values()]
        self.port, socks = bind_same_port(specs)
        transports = []
        for family, sock in zip(FAMILY_HOSTS, socks, strict=True):
            config = QuicConfiguration(is_client=False, alpn_protocols=list(H3_ALPN))
            config.load_cert_chain(self.pem.cert_file, self.pem.key_file)
            behaviour = self.behaviours.get(family, h3_ok)

            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(
                    QuicServer,
                    configuration=config,
                    create_protocol=functools.partial(_H3Peer, behaviour=behaviour),
                ),
                sock=sock,
            )
            transports.append(transport)

        async def stop() -> None:
            for transport in transports:
                transport.close()
            await asyncio.sleep(0)

        return stop

    def __enter__(self) -> HostileH3:
        self._thread.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._thread.__exit__(None, None, None)


# -- TLS + HTTP/2 -----------------------------------------------------------------------------


class HostileTls:
    """TLS on ::1 and 127.0.0.1, one port, answering every HTTP/2 request with `headers` (not
    validated: a `:status` may be anything); with `http11_response`, ALPN http/1.1 and those
    bytes sent verbatim after the request. Counts open connections."""

    def __init__(
        self,
        pem: Pem,
        headers: list[tuple[str, str]],
        *,
        http11_response: bytes | None = None,
    ) -> None:
        self.pem = pem
        self.headers = headers
        self.http11_response = http11_response
        self.port = 0
        self.open = 0
        self.accepted = 0
        self._thread = ServerThread(self._start)

    async def _start(self) -> Callable[[], Awaitable[None]]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pem.cert_file, self.pem.key_file)
        ctx.set_alpn_protocols(["h2"] if self.http11_response is None else ["http/1.1"])
        specs = [SocketSpec(host=h, kind=socket.SOCK_STREAM) for h in FAMILY_HOSTS.values()]
        self.port, socks = bind_same_port(specs)
        servers = [
            await asyncio.start_server(self._handle, sock=sock, ssl=ctx, ssl_handshake_timeout=5)
            for sock in socks
        ]

        async def stop() -> None:
            for server in servers:
                server.close()
            for server in servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 5)

        return stop

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        try:
            if self.http11_response is not None:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                writer.write(self.http11_response)
                await writer.drain()
                return
            config = h2.config.H2Configuration(
                client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False
            )
            conn = h2.connection.H2Connection(config)
            conn.initiate_connection()
            writer.write(conn.data_to_send())
            while data := await asyncio.wait_for(reader.read(65536), 10):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        conn.send_headers(event.stream_id, self.headers, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (OSError, TimeoutError, EOFError, h2.exceptions.H2Error):
            pass
        finally:
            self.open -= 1
            writer.close()

    def __enter__(self) -> HostileTls:
        self._thread.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._thread.__exit__(None, None, None)


@contextlib.contextmanager
def running(server: HostileH3 | HostileTls) -> Iterator[int]:
    with server:
        yield server.port

"""One test per error kind that a peer (or a bad local setting, or a probe bug) can cause, each
produced for real: the probes run through the shared handler against tiny servers on loopback
whose misbehaviour the test chooses. No name is ever resolved; ports come from the kernel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import pytest
from toykind import registered

from monitor.lab.pki import IssuedCert, LabPki
from monitor.lab.ports import SocketSpec, bind_same_port
from monitor.lab.web import WebServer
from probes import handler
from probes.base import (
    ErrorKind,
    Family,
    Outcome,
    ProbeEnv,
    ProbeKind,
    ProbeRequest,
    ProbeResult,
    Resolution,
    Target,
    TlsSpec,
)
from probes.details import HttpExchange, SoaAnswer, TlsHandshake
from probes.kinds import Kind
from probes.resolve import Resolver

LOOPBACK: dict[Family, str] = {"ipv4": "127.0.0.1", "ipv6": "::1"}
HOST = "lab.example.com"
"""The name the probes present (SNI, Host); never resolved: the address is a loopback literal."""
OTHER_HOST = "other.lab.invalid"
ZONE = "example.com"
UNUSED_PORT = 9
"""For probes that must fail before they dial: nothing listens there, and nothing may connect."""


def make_target(
    kind: ProbeKind, port: int, *, zone: str | None = None, tls: TlsSpec | None = None
) -> Target:
    return Target(
        name="unit",
        service="unit",
        region="",
        host=HOST,
        port=port,
        probes=(kind,),
        timeout=5.0,
        zone=zone,
        tls=tls or TlsSpec(),
    )


async def run(
    kind: ProbeKind, target: Target, family: Family = "ipv4", env: ProbeEnv | None = None
) -> ProbeResult:
    """The probe as `run` and `serve` run it: the handler, pinned to the loopback address."""
    resolution = Resolution(family=family, addresses=(LOOPBACK[family],))
    return await handler.run_probe(kind, target, family, resolution, env or ProbeEnv())


def kind_of(result: ProbeResult) -> ErrorKind | None:
    return result.error.kind if result.error else None


# --- a PKI with a leaf for the right name, one for another name, one from a foreign CA -------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return LabPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def good_cert(pki: LabPki) -> IssuedCert:
    return pki.issue("good", [HOST])


@pytest.fixture(scope="module")
def other_name_cert(pki: LabPki) -> IssuedCert:
    return pki.issue("other-name", [OTHER_HOST])


@pytest.fixture(scope="module")
def foreign_cert(tmp_path_factory: pytest.TempPathFactory) -> IssuedCert:
    """The right name, signed by a CA that is not in the probes' trust store."""
    return LabPki(tmp_path_factory.mktemp("foreign-pki")).issue("foreign", [HOST])


@pytest.fixture
def env(pki: LabPki) -> ProbeEnv:
    return ProbeEnv(ssl_cafile=str(pki.ca_file))


# --- TLS: the lab's real web server (hypercorn: TLS h2/http1.1 and QUIC h3) ------------------

TLS_CASES = [
    pytest.param("tls", "ipv4", id="tls-ipv4"),
    pytest.param("http2", "ipv6", id="http2-ipv6"),
    pytest.param("http3", "ipv4", id="http3-ipv4"),
]


async def probe_web_server(
    kind: ProbeKind, family: Family, cert: IssuedCert, env: ProbeEnv
) -> ProbeResult:
    async with WebServer.bind(LOOPBACK[family], cert, h3=kind == "http3") as server:
        return await run(kind, make_target(kind, server.port), family, env)


@pytest.mark.parametrize(("kind", "family"), TLS_CASES)
async def test_control_the_right_certificate_verifies(
    kind: ProbeKind, family: Family, good_cert: IssuedCert, env: ProbeEnv
) -> None:
    """The same server and trust store with the right leaf succeed: the failures below come
    from the certificate alone."""
    result = await probe_web_server(kind, family, good_cert, env)
    assert result.success, result.error
    assert result.error is None


@pytest.mark.parametrize(("kind", "family"), TLS_CASES)
async def test_tls_hostname_mismatch(
    kind: ProbeKind, family: Family, other_name_cert: IssuedCert, env: ProbeEnv
) -> None:
    result = await probe_web_server(kind, family, other_name_cert, env)
    assert kind_of(result) is ErrorKind.TLS_HOSTNAME_MISMATCH, result.error
    assert not result.success
    if kind != "http3":  # over TCP a second, unverified handshake shows what was presented
        assert isinstance(result.details, TlsHandshake)
        assert result.details.verified is False
        assert result.details.certificate is not None
        assert result.details.certificate.sans == (OTHER_HOST,)


@pytest.mark.parametrize(("kind", "family"), TLS_CASES)
async def test_tls_untrusted(
    kind: ProbeKind, family: Family, foreign_cert: IssuedCert, env: ProbeEnv
) -> None:
    result = await probe_web_server(kind, family, foreign_cert, env)
    assert kind_of(result) is ErrorKind.TLS_UNTRUSTED, result.error
    assert not result.success
    if kind != "http3":
        assert isinstance(result.details, TlsHandshake)
        assert result.details.verified is False
        assert result.details.certificate is not None
        assert result.details.certificate.fingerprint_sha256 == foreign_cert.sha256


# --- protocol_error: a TLS peer that negotiates HTTP, then does not speak it -----------------

Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def send_http1_status_line(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()


async def send_http1_status_line_and_wait(writer: asyncio.StreamWriter) -> None:
    """An HTTP/1.1 answer to an h2 client, on a connection the peer keeps open."""
    await send_http1_status_line(writer)
    await asyncio.sleep(2)  # without the check the probe waits, then reads "closed early"


async def send_data_frame_on_stream_0(writer: asyncio.StreamWriter) -> None:
    """A complete, empty HTTP/2 DATA frame on the connection's stream 0, which RFC 9113 forbids."""
    writer.write(b"\x00\x00\x00" + b"\x00" + b"\x00" + b"\x00\x00\x00\x00")
    await writer.drain()


async def send_garbage(writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00\x01 not an HTTP response \xff\r\n\r\n")
    await writer.drain()


async def hang_up(writer: asyncio.StreamWriter) -> None:
    return  # the handler closes the connection (with close_notify) without a word


@contextlib.asynccontextmanager
async def rogue_tls_peer(
    host: str, cert: IssuedCert, alpn: str, behave: Behaviour
) -> AsyncIterator[int]:
    """TLS with the given ALPN, then `behave` once the client's request has arrived."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    ctx.set_alpn_protocols([alpn])
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            # Answer only after the request: a peer closing on unread bytes would send RST.
            await reader.read(65536)
            await behave(writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, 0, ssl=ctx)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)


EARLY_CLOSE = "peer closed the connection early"


@pytest.mark.parametrize(
    ("alpn", "behave", "family", "message"),
    [
        pytest.param("h2", send_data_frame_on_stream_0, "ipv4", "HTTP/2: ", id="h2-bad-frame"),
        # "HTTP/1.1 ..." read as a frame header announces 4.7 MB: refused at once, not awaited
        pytest.param("h2", send_http1_status_line, "ipv4", "HTTP/2: ", id="h2-peer-speaks-http1"),
        pytest.param(
            "h2",
            send_http1_status_line_and_wait,
            "ipv4",
            "HTTP/2: first frame announces",
            id="h2-peer-speaks-http1-and-waits",
        ),
        pytest.param("h2", hang_up, "ipv6", EARLY_CLOSE, id="h2-peer-closes-before-responding"),
        pytest.param("http/1.1", send_garbage, "ipv4", "HTTP/1.1: ", id="http1-peer-sends-garbage"),
        pytest.param("http/1.1", hang_up, "ipv4", "HTTP/1.1: ", id="http1-peer-closes-early"),
    ],
)
async def test_protocol_error(
    alpn: str,
    behave: Behaviour,
    family: Family,
    message: str,
    good_cert: IssuedCert,
    env: ProbeEnv,
) -> None:
    async with rogue_tls_peer(LOOPBACK[family], good_cert, alpn, behave) as port:
        result = await run("http2", make_target("http2", port), family, env)
    assert kind_of(result) is ErrorKind.PROTOCOL_ERROR, result.error
    assert result.error is not None
    assert result.error.message.startswith(message)
    assert not result.success
    assert isinstance(result.details, HttpExchange)
    assert result.details.http_version == ("2" if alpn == "h2" else "1.1")
    assert result.details.status is None
    assert result.details.tls_version is not None  # the handshake itself was fine
    assert {"connect", "handshake"} <= set(result.phases)


# --- client_config: a local setting the TLS client cannot load, found before dialling -------


@pytest.mark.parametrize("kind", ["tls", "http2", "http3"])
@pytest.mark.parametrize("setting", ["missing-client-cert", "garbage-client-cert", "missing-ca"])
async def test_client_config(kind: ProbeKind, setting: str, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    missing = str(tmp_path / "missing.pem")
    tls, cafile = TlsSpec(), None
    if setting == "missing-client-cert":
        tls = TlsSpec(client_cert=missing, client_key=missing)
    elif setting == "garbage-client-cert":
        tls = TlsSpec(client_cert=str(garbage))
    else:
        cafile = missing
    result = await run(
        kind, make_target(kind, UNUSED_PORT, tls=tls), "ipv4", ProbeEnv(ssl_cafile=cafile)
    )
    assert kind_of(result) is ErrorKind.CLIENT_CONFIG, result.error
    assert not result.success
    assert "connect" not in result.phases  # refused before any packet was sent


# --- DNS: a scripted name server on loopback (UDP and TCP, one port) -------------------------

Answer = Callable[[dns.message.Message], bytes]


def rcode_answer(rcode: dns.rcode.Rcode) -> Answer:
    def answer(query: dns.message.Message) -> bytes:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return response.to_wire()

    return answer


def truncated(query: dns.message.Message) -> bytes:
    """An empty answer with TC set: the client must ask again over TCP."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC
    return response.to_wire()


def wrong_id(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.id = (query.id + 1) & 0xFFFF
    return response.to_wire()


def malformed(query: dns.message.Message) -> bytes:
    """The query's id and a response header announcing a question and an answer, then nothing."""
    return struct.pack("!HHHHHH", query.id, 0x8180, 1, 1, 0, 0)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, peer: DnsPeer) -> None:
        self._peer = peer
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast: on 3.11 the selector datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.message.from_wire(data)
        self._peer.queries.append(("udp", query))
        assert self._transport is not None
        self._transport.sendto(self._peer.udp(query), addr)


class DnsPeer:
    """Answers every query with what `udp` (or `tcp`, over TCP) makes of it, on one loopback
    address and one kernel-chosen port for both transports."""

    def __init__(self, host: str, udp: Answer, tcp: Answer | None = None) -> None:
        self.host = host
        self.udp = udp
        self.tcp = tcp or udp
        self.port = 0
        self.queries: list[tuple[str, dns.message.Message]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def __aenter__(self) -> DnsPeer:
        self.port, (usock, tsock) = bind_same_port(
            [
                SocketSpec(host=self.host, kind=socket.SOCK_DGRAM),
                SocketSpec(host=self.host, kind=socket.SOCK_STREAM),
            ]
        )
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=usock)
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tsock)
        return self

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            query = dns.message.from_wire(await reader.readexactly(size))
            self.queries.append(("tcp", query))
            wire = self.tcp(query)
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client gave up: nothing to answer
        finally:
            writer.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        if self._udp is not None:
            self._udp.close()
        await asyncio.sleep(0)  # one loop turn: the transports finish closing their sockets


def resolver_for(peer: DnsPeer, timeout: float = 5.0) -> Resolver:
    return Resolver([peer.host], peer.port, timeout=timeout, clock=time.perf_counter)


def soa_target(port: int) -> Target:
    """A name-server target: its dns probe asks the server itself for the zone's SOA."""
    return make_target("dns", port, zone=ZONE)


RCODES = [
    pytest.param(dns.rcode.SERVFAIL, ErrorKind.DNS_SERVFAIL, id="dns_servfail"),
    pytest.param(dns.rcode.REFUSED, ErrorKind.DNS_REFUSED, id="dns_refused"),
]


@pytest.mark.parametrize(("rcode", "kind"), RCODES)
async def test_rcode_through_the_resolver(rcode: dns.rcode.Rcode, kind: ErrorKind) -> None:
    async with DnsPeer("127.0.0.1", rcode_answer(rcode)) as peer:
        resolution = await resolver_for(peer).resolve(HOST, "ipv4")
        result = await handler.run_probe(
            "dns", make_target("dns", 443), "ipv4", resolution, ProbeEnv()
        )
    assert resolution.rcode == dns.rcode.to_text(rcode)
    assert resolution.addresses == ()
    assert kind_of(result) is kind, result.error
    assert not result.success
    assert result.address is None
    assert [q.question[0].name.to_text() for _, q in peer.queries] == [HOST + "."]


@pytest.mark.parametrize(("rcode", "kind"), RCODES)
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_rcode_from_a_name_server_target(
    rcode: dns.rcode.Rcode, kind: ErrorKind, family: Family
) -> None:
    async with DnsPeer(LOOPBACK[family], rcode_answer(rcode)) as peer:
        result = await run("dns", soa_target(peer.port), family)
    assert kind_of(result) is kind, result.error
    assert not result.success
    assert isinstance(result.details, SoaAnswer)
    assert result.details.rcode == dns.rcode.to_text(rcode)
    assert result.details.serial is None
    (transport, query), *_ = peer.queries
    assert transport == "udp"
    assert query.question[0].name.to_text() == ZONE + "."
    assert not query.flags & dns.flags.RD  # the authority itself is asked, not its recursion


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_connect_refused_from_a_closed_name_server_port(family: Family) -> None:
    """The kernel's ICMP port unreachable is connect_refused at once, not a timeout."""
    af = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK[family], 0))
        port = int(sock.getsockname()[1])
    result = await run("dns", soa_target(port), family)
    assert kind_of(result) is ErrorKind.CONNECT_REFUSED, result.error
    assert result.duration_seconds < 1.0


@pytest.mark.parametrize("answer", [malformed, wrong_id], ids=["malformed", "wrong-id"])
async def test_dns_bad_response_from_a_name_server_target(answer: Answer) -> None:
    async with DnsPeer("127.0.0.1", answer) as peer:
        result = await run("dns", soa_target(peer.port))
    assert kind_of(result) is ErrorKind.DNS_BAD_RESPONSE, result.error
    assert not result.success


@pytest.mark.parametrize("answer", [malformed, wrong_id], ids=["malformed", "wrong-id"])
async def test_dns_bad_response_through_the_resolver_over_tcp(answer: Answer) -> None:
    """Over TCP a bad answer cannot be a stray datagram, so the resolver gives up on it."""
    async with DnsPeer("127.0.0.1", truncated, tcp=answer) as peer:
        resolution = await resolver_for(peer).resolve(HOST, "ipv4")
        result = await handler.run_probe(
            "dns", make_target("dns", 443), "ipv4", resolution, ProbeEnv()
        )
    assert [transport for transport, _ in peer.queries] == ["udp", "tcp"]
    assert kind_of(result) is ErrorKind.DNS_BAD_RESPONSE, result.error
    assert not result.success


async def test_bad_udp_answers_to_the_resolver_are_ignored_until_the_deadline() -> None:
    """Over UDP the resolver drops a malformed or foreign-id datagram (it may be spoofed) and
    keeps waiting: the outcome is a timeout, not dns_bad_response."""
    async with DnsPeer("127.0.0.1", wrong_id) as peer:
        resolution = await resolver_for(peer, timeout=0.2).resolve(HOST, "ipv4")
    assert resolution.error is not None
    assert resolution.error.kind is ErrorKind.TIMEOUT
    assert peer.queries  # it was asked, and answered (badly)


# --- internal_error and timeout: the handler's crash boundary and deadline -------------------


async def test_internal_error_a_crashing_probe_is_a_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def crashing(req: ProbeRequest) -> Outcome:
        raise RuntimeError(f"bug while probing {req.address}")

    with (
        registered(Kind(name="crashing", probe=crashing, summary="raises")),
        caplog.at_level(logging.ERROR, logger="probes.handler"),
    ):
        result = await run("crashing", make_target("crashing", UNUSED_PORT))
    assert kind_of(result) is ErrorKind.INTERNAL_ERROR
    assert result.error is not None
    assert result.error.message == "RuntimeError: bug while probing 127.0.0.1"
    assert not result.success
    assert (result.target, result.probe, result.family) == ("unit", "crashing", "ipv4")
    assert result.address == "127.0.0.1"
    assert "probe crashing crashed on unit (ipv4)" in caplog.text


async def test_timeout_a_hung_probe_is_cut_at_the_target_deadline() -> None:
    async def hung(req: ProbeRequest) -> Outcome:
        await asyncio.Event().wait()  # never set
        raise AssertionError("unreachable")

    target = Target(name="unit", service="unit", region="", host=HOST, timeout=0.05)
    with registered(Kind(name="hung", probe=hung, summary="never answers")):
        result = await run("hung", target)
    assert kind_of(result) is ErrorKind.TIMEOUT
    assert not result.success
    # A failure keeps its wall time (the loop may fire a timer a clock tick early).
    assert 0.045 <= result.duration_seconds < 5.0

"""The lab (monitor.lab) checked with real clients: DNS, TLS/h2, h3 and the fault servers.

Loopback only: every connect goes to ::1 or 127.0.0.1, names are answered by the lab DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import h2.config
import h2.connection
import h2.events
import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from monitor.lab.dnsserver import DnsRecord, DnsServer, ZoneData, handle_wire
from monitor.lab.loopback import (
    ALIAS_HOST,
    FAULTS,
    MISSING_HOST,
    NAT64_ADDRESS,
    Lab,
    LabEndpoint,
    lab_records,
)
from monitor.lab.pki import CA1_NAME, CA2_NAME

V6, V4 = "::1", "127.0.0.1"
LOOPBACK = (V6, V4)
TIMEOUT = 3.0


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with Lab(tmp_path / "lab") as running:
        yield running


@pytest.fixture
def lab_records_zone() -> ZoneData:
    return ZoneData(lab_records(), Lab.zones)


# -- helpers ---------------------------------------------------------------------------------


async def dns_query(
    lab: Lab, name: str, rdtype: str, *, where: str = V6, tcp: bool = False
) -> dns.message.Message:
    assert where in LOOPBACK
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, where, port=lab.dns_port, timeout=TIMEOUT)
    return await dns.asyncquery.udp(query, where, port=lab.dns_port, timeout=TIMEOUT)


def answer_values(response: dns.message.Message, rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(
        rd.to_text() for rrset in response.answer if rrset.rdtype == wanted for rd in rrset
    )


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close a client stream; an h2 server's SETTINGS may still arrive after our close_notify,
    which OpenSSL reports as an error during the TLS shutdown: harmless here."""
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()


def tls_context(lab: Lab, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(lab.ca_file))
    context.set_alpn_protocols(alpn)
    return context


async def tls_handshake(
    lab: Lab, ip: str, endpoint: LabEndpoint, alpn: list[str] | None = None
) -> tuple[str | None, x509.Certificate]:
    """ALPN result and server certificate of one verified TLS handshake to ip:port."""
    assert ip in LOOPBACK
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(
            ip, endpoint.port, ssl=tls_context(lab, alpn or ["h2"]), server_hostname=endpoint.host
        ),
        TIMEOUT,
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        return tls.selected_alpn_protocol(), x509.load_der_x509_certificate(der)
    finally:
        await close_quietly(writer)


async def h2_get(lab: Lab, ip: str, endpoint: LabEndpoint, path: str) -> tuple[int, dict[str, str]]:
    """One HTTP/2 GET over verified TLS; status and response headers."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            ip, endpoint.port, ssl=tls_context(lab, ["h2"]), server_hostname=endpoint.host
        ),
        TIMEOUT,
    )
    try:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", endpoint.host),
                (":path", path),
            ],
            end_stream=True,
        )
        writer.write(conn.data_to_send())
        headers: dict[str, str] = {}
        async with asyncio.timeout(TIMEOUT):
            while True:
                data = await reader.read(65536)
                assert data, "server closed before the response ended"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        headers = {
                            (k.decode() if isinstance(k, bytes) else k): (
                                v.decode() if isinstance(v, bytes) else v
                            )
                            for k, v in event.headers
                        }
                    elif isinstance(event, h2.events.StreamEnded):
                        return int(headers[":status"]), headers
                writer.write(conn.data_to_send())
    finally:
        await close_quietly(writer)


def cert_ou(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value)


def cert_sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(ext.value.get_values_for_type(x509.DNSName))


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


class H3Client(QuicConnectionProtocol):
    """Minimal HTTP/3 client: one GET, collects headers and body."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.headers.extend(h3_event.headers)
            elif isinstance(h3_event, DataReceived):
                self.body += h3_event.data
            if getattr(h3_event, "stream_ended", False) and not self.done.done():
                self.done.set_result(None)

    async def get(self, authority: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
        stream_id = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        self.transmit()
        await asyncio.wait_for(self.done, TIMEOUT)
        headers = dict(self.headers)
        return int(headers[b":status"]), headers, self.body


async def udp_exchange(ip: str, port: int, payload: bytes, wait: float) -> bytes | None:
    """Send one datagram; the first reply, or None if nothing came within `wait` seconds."""
    assert ip in LOOPBACK
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not got.done():
                got.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not got.done():
                got.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(ip, port))
    try:
        transport.sendto(payload)
        try:
            return await asyncio.wait_for(got, wait)
        except TimeoutError:
            return None
    finally:
        transport.close()


# -- the lab as a whole ----------------------------------------------------------------------


async def test_lab_exposes_endpoints_and_bundle(lab: Lab) -> None:
    assert tuple(e.name for e in lab.endpoints) == FAULTS
    assert all(e.fault == e.name for e in lab.endpoints)
    assert len({e.port for e in lab.endpoints} | {lab.dns_port}) == len(lab.endpoints) + 1
    assert all(e.host.endswith(".elb.amazonaws.com") and e.description for e in lab.endpoints)
    assert lab.zone == "example.com"
    assert lab.nameservers == ("ns-1.awsdns-01.org", "ns-2.awsdns-02.net")
    bundle = x509.load_pem_x509_certificates(lab.ca_file.read_bytes())
    assert sorted(cert_ou(c.subject) for c in bundle) == [CA1_NAME, CA2_NAME]


async def test_lab_shutdown_frees_everything(tmp_path: Path) -> None:
    async with Lab(tmp_path) as lab:
        port = lab.endpoint("healthy").port
        dns_port = lab.dns_port
    for ip in LOOPBACK:
        for closed_port in (port, dns_port):
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(ip, closed_port)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_lab_exit_closes_open_client_connections(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with Lab(tmp_path) as lab:
        endpoint = lab.endpoint("healthy")
        tls_reader, tls_writer = await asyncio.open_connection(
            V6, endpoint.port, ssl=tls_context(lab, ["h2"]), server_hostname=endpoint.host
        )
        dns_reader, dns_writer = await asyncio.open_connection(V4, lab.dns_port)
        # Connected but never starting TLS: must not outlive the lab either.
        raw_reader, raw_writer = await asyncio.open_connection(V4, endpoint.port)
        await asyncio.sleep(0.05)
        started = loop.time()
    assert loop.time() - started < 1.0  # idle connections do not hold up the shutdown
    for reader in (tls_reader, dns_reader, raw_reader):
        async with asyncio.timeout(TIMEOUT):
            while await reader.read(65536):
                pass  # h2 SETTINGS/GOAWAY, then EOF
    for writer in (tls_writer, dns_writer, raw_writer):
        await close_quietly(writer)


# -- DNS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("where", LOOPBACK)
async def test_dns_a_and_aaaa(lab: Lab, where: str, tcp: bool) -> None:
    host = lab.endpoint("healthy").host
    a = await dns_query(lab, host, "A", where=where, tcp=tcp)
    aaaa = await dns_query(lab, host, "AAAA", where=where, tcp=tcp)
    for response in (a, aaaa):
        assert response.rcode() == dns.rcode.NOERROR
        assert response.flags & dns.flags.AA
    assert answer_values(a, "A") == ["127.0.0.1"]
    assert answer_values(aaaa, "AAAA") == ["::1"]
    assert a.answer[0].ttl == 60


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_dns_nodata_for_aaaa_of_no_aaaa(lab: Lab, tcp: bool) -> None:
    response = await dns_query(lab, lab.endpoint("no_aaaa").host, "AAAA", where=V4, tcp=tcp)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert response.answer == []
    assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]
    assert response.authority[0].name == dns.name.from_text("amazonaws.com")


async def test_dns_nxdomain_and_refused(lab: Lab) -> None:
    missing = await dns_query(lab, MISSING_HOST, "A")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.flags & dns.flags.AA
    assert missing.authority[0].rdtype == dns.rdatatype.SOA
    # No NAT64 in the lab: the DNS64 discovery name is not served at all.
    refused = await dns_query(lab, "ipv4only.arpa", "AAAA", where=V4)
    assert refused.rcode() == dns.rcode.REFUSED
    assert not refused.flags & dns.flags.AA
    # An empty non-terminal exists: NODATA, not NXDOMAIN.
    ent = await dns_query(lab, "us-east-1.elb.amazonaws.com", "A")
    assert ent.rcode() == dns.rcode.NOERROR
    assert ent.answer == []


@pytest.mark.parametrize("rdtype, value", [("A", "127.0.0.1"), ("AAAA", "::1")])
async def test_dns_cname_chain(lab: Lab, rdtype: str, value: str) -> None:
    response = await dns_query(lab, ALIAS_HOST, rdtype, tcp=True)
    assert response.rcode() == dns.rcode.NOERROR
    healthy = lab.endpoint("healthy").host
    assert answer_values(response, "CNAME") == [f"{healthy}."]
    assert answer_values(response, rdtype) == [value]
    assert response.answer[0].rdtype == dns.rdatatype.CNAME  # chain order: alias first


async def test_dns_nat64_aaaa(lab: Lab) -> None:
    response = await dns_query(lab, lab.endpoint("nat64").host, "AAAA")
    # Only looked at, never connected to: it is not a local address.
    assert answer_values(response, "AAAA") == [NAT64_ADDRESS]


async def test_dns_soa_via_nameservers(lab: Lab) -> None:
    ns = await dns_query(lab, lab.zone, "NS")
    ns_names = answer_values(ns, "NS")
    assert ns_names == [f"{name}." for name in lab.nameservers]
    addresses: set[str] = set()
    for name in ns_names:
        for rdtype in ("A", "AAAA"):
            addresses.update(answer_values(await dns_query(lab, name, rdtype), rdtype))
    assert addresses == set(LOOPBACK)  # the lab DNS itself; never anything else
    for address in sorted(addresses):
        soa = await dns_query(lab, lab.zone, "SOA", where=address)
        assert soa.flags & dns.flags.AA
        assert answer_values(soa, "SOA")[0].startswith("ns-1.awsdns-01.org. ")


async def test_dns_survives_garbage(lab: Lab) -> None:
    port = lab.dns_port
    # Shorter than a header: dropped silently.
    assert await udp_exchange(V6, port, b"\x00", wait=0.3) is None
    # A header (id 0x1234, a query) followed by junk: FORMERR echoing the id.
    reply = await udp_exchange(V4, port, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", 2)
    assert reply is not None
    assert reply[:2] == b"\x12\x34"
    assert reply[3] & 0x0F == dns.rcode.FORMERR
    # TCP: framed junk gets a framed FORMERR; a truncated frame just closes.
    reader, writer = await asyncio.open_connection(V6, port)
    junk = b"\xab\xcd\x00\x00\x00\x05" + bytes(6)  # claims 5 questions, has none
    writer.write(len(junk).to_bytes(2, "big") + junk)
    length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TIMEOUT), "big")
    framed = await reader.readexactly(length)
    assert framed[:2] == b"\xab\xcd"
    assert framed[3] & 0x0F == dns.rcode.FORMERR
    writer.write(b"\x00\x30\x01")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
    await writer.wait_closed()
    # Still serving.
    response = await dns_query(lab, lab.endpoint("healthy").host, "A")
    assert answer_values(response, "A") == ["127.0.0.1"]


def test_dns_mangled_queries_never_raise(lab_records_zone: ZoneData) -> None:
    # Deterministic mini-fuzz of the parse/answer path the UDP and TCP servers share.
    rng = random.Random(6)
    base = dns.message.make_query(ALIAS_HOST, "AAAA", use_edns=0).to_wire()
    for _ in range(2000):
        wire = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            wire[rng.randrange(len(wire))] = rng.randrange(256)
        cut = rng.randint(0, len(wire) + 4)
        mangled = bytes(wire[:cut]) + bytes(rng.randrange(256) for _ in range(cut - len(wire)))
        for udp in (True, False):
            reply = handle_wire(lab_records_zone, mangled, udp=udp)
            assert reply is None or reply[:2] == mangled[:2]


async def test_dns_server_standalone() -> None:
    records = {
        "www.test.lab": [DnsRecord(rtype="A", value="127.0.0.1", ttl=5)],
        "alias.test.lab": [DnsRecord(rtype="CNAME", value="www.test.lab.")],
        "out.test.lab": [DnsRecord(rtype="CNAME", value="elsewhere.invalid.")],
    }
    async with DnsServer(records, ["test.lab"]) as server:
        query = dns.message.make_query("alias.test.lab", "A")
        response = await dns.asyncquery.udp(query, V6, port=server.port, timeout=TIMEOUT)
        assert answer_values(response, "A") == ["127.0.0.1"]
        assert response.answer[-1].ttl == 5
    # A chain leaving the served data ends with the CNAME (resolver continues elsewhere).
    zone = ZoneData(records, ["test.lab"])
    out = zone.respond(dns.message.make_query("out.test.lab", "A"))
    assert out.rcode() == dns.rcode.NOERROR
    assert answer_values(out, "CNAME") == ["elsewhere.invalid."]
    with pytest.raises(ValueError, match="outside"):
        ZoneData({"x.other.lab": [DnsRecord(rtype="A", value="127.0.0.1")]}, ["test.lab"])


# -- TLS, HTTP/2, HTTP/3 ---------------------------------------------------------------------


@pytest.mark.parametrize("ip", LOOPBACK)
async def test_healthy_tls_h2_both_families(lab: Lab, ip: str) -> None:
    endpoint = lab.endpoint("healthy")
    alpn, cert = await tls_handshake(lab, ip, endpoint)
    assert alpn == "h2"
    assert cert_sans(cert) == {endpoint.host}
    assert cert_ou(cert.issuer) == CA1_NAME
    status, headers = await h2_get(lab, ip, endpoint, "/")
    assert status == 200
    assert headers["server"] == "dualstack-lab"
    assert headers["alt-svc"] == f'h3=":{endpoint.port}"'
    status, _ = await h2_get(lab, ip, endpoint, "/status/503")
    assert status == 503


async def test_http11_still_offered(lab: Lab) -> None:
    endpoint = lab.endpoint("healthy")
    reader, writer = await asyncio.open_connection(
        V4, endpoint.port, ssl=tls_context(lab, ["http/1.1"]), server_hostname=endpoint.host
    )
    writer.write(f"GET /status/404 HTTP/1.1\r\nHost: {endpoint.host}\r\n\r\n".encode())
    status_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    assert status_line.startswith(b"HTTP/1.1 404")
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("ip", LOOPBACK)
async def test_healthy_h3_get(lab: Lab, ip: str) -> None:
    endpoint = lab.endpoint("healthy")
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=endpoint.host,
        cafile=str(lab.ca_file),
    )
    async with (
        asyncio.timeout(TIMEOUT * 2),
        quic_connect(
            ip, endpoint.port, configuration=configuration, create_protocol=H3Client
        ) as client,
    ):
        assert isinstance(client, H3Client)
        status, headers, body = await client.get(endpoint.host, "/")
    assert status == 200
    assert headers[b"server"] == b"dualstack-lab"
    assert body.startswith(b"dualstack-lab healthy")


async def test_cert_differs_v6(lab: Lab) -> None:
    endpoint = lab.endpoint("cert_differs_v6")
    _, v4 = await tls_handshake(lab, V4, endpoint)
    _, v6 = await tls_handshake(lab, V6, endpoint)  # still verifies: CA 2 is in the bundle
    assert cert_ou(v4.issuer) == CA1_NAME
    assert cert_ou(v6.issuer) == CA2_NAME
    assert cert_sans(v4) == {endpoint.host}
    assert cert_sans(v6) == {endpoint.host, "other.lab.invalid"}


async def test_rotated_v6(lab: Lab) -> None:
    endpoint = lab.endpoint("rotated_v6")
    _, v4 = await tls_handshake(lab, V4, endpoint)
    _, v6 = await tls_handshake(lab, V6, endpoint)
    assert v4.issuer == v6.issuer
    assert v4.subject == v6.subject
    assert cert_sans(v4) == cert_sans(v6) == {endpoint.host}
    assert spki(v4) != spki(v6)
    assert lab.cert_for("rotated_v6", socket.AF_INET6).spki_sha256 != (
        lab.cert_for("rotated_v6", socket.AF_INET).spki_sha256
    )


async def test_expired_v6(lab: Lab) -> None:
    endpoint = lab.endpoint("expired_v6")
    alpn, _ = await tls_handshake(lab, V4, endpoint)
    assert alpn == "h2"
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        await tls_handshake(lab, V6, endpoint)
    assert "expired" in str(failure.value)
    assert lab.cert_for("expired_v6", socket.AF_INET6).expired


# -- faults without TLS ----------------------------------------------------------------------


async def test_v6_reset(lab: Lab) -> None:
    endpoint = lab.endpoint("v6_reset")
    # The RST can beat the client's connect() completion or its ClientHello: both are resets.
    with pytest.raises(ConnectionResetError):
        await tls_handshake(lab, V6, endpoint)
    alpn, _ = await tls_handshake(lab, V4, endpoint)
    assert alpn == "h2"


async def test_v6_timeout_blackhole(lab: Lab) -> None:
    endpoint = lab.endpoint("v6_timeout")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.open_connection(V6, endpoint.port), 1.0)
    assert loop.time() - started >= 0.9  # a real timeout, not a quick refusal
    # UDP is swallowed: no answer and no ICMP error either.
    assert await udp_exchange(V6, endpoint.port, b"\xc0" + b"\x00" * 1199, wait=0.3) is None
    alpn, _ = await tls_handshake(lab, V4, endpoint)
    assert alpn == "h2"


async def test_v4_only_refused_on_v6(lab: Lab) -> None:
    endpoint = lab.endpoint("v4_only")
    aaaa = await dns_query(lab, endpoint.host, "AAAA")
    assert answer_values(aaaa, "AAAA") == ["::1"]  # advertised, yet nothing serves there
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(V6, endpoint.port)
    with pytest.raises(ConnectionRefusedError):
        await udp_exchange(V6, endpoint.port, b"ping", wait=TIMEOUT)
    alpn, _ = await tls_handshake(lab, V4, endpoint)
    assert alpn == "h2"

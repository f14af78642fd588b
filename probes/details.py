"""What the built-in probe kinds report beyond success and timings: frozen dataclasses.

These are the typed contract every reader (parity, exporter, JSON report, status page) relies on;
`mypy --strict` checks each access. The JSON keys of `details` are the field names below.
Values quoted from a peer (server header, certificate names, DNS names) are made safe where
they are created (probes/text.py: control characters escaped, 512 characters at most), so
every reader may show them as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from probes.ipranges import Attribution
from probes.text import peer_text, peer_text_or_none


def _clean(obj: object, *names: str) -> None:
    """Escape and bound the peer-supplied string fields `names` of a frozen dataclass."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, tuple):
            object.__setattr__(obj, name, tuple(peer_text(v) for v in value))
        else:
            object.__setattr__(obj, name, peer_text_or_none(value))


class Details:
    """The base of every kind's details type (frozen dataclasses): `ProbeResult.details` is one.
    Which kind reports which type, and what parity compares in it, is the kind's declaration
    (probes/kinds.py)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsAnswer(Details):
    """The dns probe of a host target: the A (ipv4) or AAAA (ipv6) answer via the resolver."""

    rcode: str
    """DNS response code (NOERROR, NXDOMAIN, ...); "" when no server answered."""
    records: tuple[str, ...] = ()
    """The addresses of the answer, sorted."""
    ttl: int | None = None
    """TTL of the address records; None without an answer."""
    cname_chain: tuple[str, ...] = ()
    """The aliases followed to reach the records, in order."""
    nameserver: str = ""
    """The resolver that answered."""
    nat64_synthesized: bool = False
    """Every AAAA lies in a NAT64 prefix: DNS64 made it up, it is not native IPv6."""
    not_native: tuple[str, ...] = ()
    """AAAA values that cannot carry IPv6 to the host (IPv4-mapped, IPv4-compatible, ::,
    link-local, multicast): not in `records`, never dialled."""

    def __post_init__(self) -> None:
        _clean(self, "rcode", "records", "cname_chain", "nameserver")


@dataclass(frozen=True, slots=True, kw_only=True)
class SoaAnswer(Details):
    """The dns probe of a name-server target: the zone's SOA asked of the server itself."""

    rcode: str
    """DNS response code of the server's answer."""
    zone: str
    """The zone asked for."""
    authoritative: bool
    """The AA flag: the server answers with authority for the zone."""
    serial: int | None
    """The SOA serial; None when the answer held no SOA."""
    transport: str = "udp"
    """The DNS transport used."""
    size_bytes: int | None = None
    """Bytes of the reply (without TCP's length prefix)."""

    def __post_init__(self) -> None:
        _clean(self, "rcode", "zone")


@dataclass(frozen=True, slots=True, kw_only=True)
class LargeAnswer(Details):
    """The dns_large probe: a large answer over UDP with EDNS, as a resolver asks for it."""

    rcode: str
    """DNS response code of the server's answer."""
    name: str
    """The name asked (the zone, unless `dns.large.name`)."""
    rdtype: str
    """The type asked (DNSKEY, unless `dns.large.type`)."""
    records: int
    """Records in the answer section."""
    size_bytes: int
    """Bytes of the reply as it arrived."""
    truncated: bool
    """TC was set: the answer did not fit the EDNS buffer (a resolver would ask over TCP)."""
    edns_buffer: int
    """The EDNS UDP payload size the query announced."""
    transport: str = "udp"
    """udp; tcp when the UDP answer never came and these are the TCP answer's figures."""

    def __post_init__(self) -> None:
        _clean(self, "rcode", "name", "rdtype")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolverAnswer(Details):
    """The resolver probe: one name's A and AAAA asked of a resolver over UDP and over TCP."""

    name: str
    """The name asked (the target's host)."""
    rcode: str
    """DNS response code of the A question over UDP; "" without an answer."""
    a_records: tuple[str, ...] = ()
    """The A answer over UDP, sorted."""
    aaaa_records: tuple[str, ...] = ()
    """The AAAA answer over UDP, sorted."""
    recursion_available: bool = False
    """The RA flag of the answers: the server offers recursion."""
    failed: tuple[str, ...] = ()
    """The questions that failed, each `TYPE over transport: error kind`."""

    def __post_init__(self) -> None:
        _clean(self, "name", "rcode", "a_records", "aaaa_records")


@dataclass(frozen=True, slots=True, kw_only=True)
class IcmpEcho(Details):
    """The icmp probe: echo requests sent and replies received."""

    sent: int
    """Echo requests sent."""
    received: int
    """Echo replies received."""
    loss_ratio: float
    """Share of requests without a reply, 0 to 1."""
    rtt_min_seconds: float
    """Fastest round trip."""
    rtt_avg_seconds: float
    """Mean round trip (the latency compared across families)."""
    rtt_max_seconds: float
    """Slowest round trip."""
    path_mtu_bytes: int | None = None
    """The largest of the target's `icmp.sizes` answered with fragmentation forbidden (whole
    IP packets); None when no size was asked or none was answered."""
    sizes_answered: tuple[int, ...] = ()
    """The sizes echoed back, ascending."""
    sizes_unanswered: tuple[int, ...] = ()
    """The sizes lost (or too large to leave this host unfragmented), ascending."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpConnect(Details):
    """The tcp probe: a completed three-way handshake."""

    source_address: str | None
    """The local address the kernel (or `source`) chose for the connection."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """The leaf certificate a TLS server presented."""

    subject: str
    """Subject DN (RFC 4514)."""
    issuer: str
    """Issuer DN (RFC 4514)."""
    sans: tuple[str, ...]
    """DNS names and IP addresses of the subjectAltName, sorted."""
    not_after: str
    """Expiry, ISO 8601 UTC."""
    not_after_timestamp: float
    """Expiry, Unix seconds."""
    fingerprint_sha256: str
    """SHA-256 of the DER certificate, hex: differs across a fleet's rotated leaves."""
    serial: str
    """Serial number, hex."""
    issuer_organization: str | None = None
    """The issuer's organisation (O=): who runs the CA, whichever intermediate signed."""
    intermediates: tuple[str, ...] = ()
    """Subjects of the intermediates of the verified chain, leaf side first (empty when not
    verified): AWS Certificate Manager rotates among several under one root."""
    trust_anchor: str | None = None
    """Subject of the root the chain verified to; None when it did not verify."""

    def __post_init__(self) -> None:
        _clean(self, "subject", "issuer", "sans")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsHandshake(Details):
    """The tls probe (and http2 when its handshake failed): what the TLS server presented.

    When verification failed, a second, unverified handshake fills in what was presented."""

    verified: bool
    """The chain verified to a trust anchor and matched the name."""
    tls_version: str | None = None
    """Negotiated protocol version, e.g. TLSv1.3 (the same key in every probe)."""
    cipher: str | None = None
    """Negotiated cipher suite."""
    alpn: str | None = None
    """Application protocol the server selected, if any."""
    certificate: Certificate | None = None
    """The leaf presented; None when no handshake got that far."""

    def __post_init__(self) -> None:
        _clean(self, "tls_version", "cipher", "alpn")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpExchange(Details):
    """The http2 probe: one GET over TLS with ALPN h2 (HTTP/1.1 when the server declines h2)."""

    http_version: str
    """"2" or "1.1", from ALPN."""
    status: int | None
    """Response status; None when no response arrived."""
    tls_version: str | None
    """TLS version of the connection."""
    alpn: str | None
    """ALPN the server selected."""
    alt_svc: str | None
    """The Alt-Svc header (advertises HTTP/3)."""
    server: str | None
    """The Server header."""
    body_bytes: int
    """Body bytes read (bounded)."""

    def __post_init__(self) -> None:
        _clean(self, "tls_version", "alpn", "alt_svc", "server")


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicExchange(Details):
    """The http3 probe: a QUIC handshake and one GET over HTTP/3."""

    http_version: str
    """Always "3"."""
    status: int | None
    """Response status; None when no response arrived."""
    alpn: str | None
    """ALPN negotiated in the QUIC handshake (h3)."""
    alt_svc: str | None
    """The Alt-Svc header."""
    server: str | None
    """The Server header."""
    body_bytes: int
    """Body bytes read (bounded)."""

    def __post_init__(self) -> None:
        _clean(self, "alpn", "alt_svc", "server")


@dataclass(frozen=True, slots=True, kw_only=True)
class Hop:
    """One hop of a trace: who answered the probes sent with this hop limit, and how fast."""

    hop: int
    """The hop limit (TTL) the probes left with: 1 is the first router."""
    address: str | None
    """The address that answered (the first, if several did); None: no answer to any try."""
    rtts: tuple[float | None, ...]
    """Each try's round trip in seconds, in the order sent; None: no answer in time."""
    reply: str
    """`time_exceeded` (a router), `reached` (the destination), `unreachable` (an ICMP
    destination unreachable from a router, e.g. a firewall's), or `none`."""
    aws: Attribution | None = None
    """The AWS published prefix holding `address`, when the ranges are loaded and it is in one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TracePath(Details):
    """The trace probe: the hops toward one address of one family (probes/trace.py)."""

    method: str
    """`udp`, `icmp` or `tcp`: what the probes were."""
    destination: str
    """The address traced toward."""
    reached: bool
    """The destination answered."""
    last_hop: int
    """The number of the last hop that answered (0: none did)."""
    last_address: str | None
    """Its address (None: no hop answered)."""
    max_hops: int
    """The hop limit the trace would have gone to."""
    hops: tuple[Hop, ...] = ()
    """Every hop probed, from the first."""
    complete: bool = True
    """False when the trace's time ran out before it reached, stopped or gave up."""


def details_json(details: Details | None) -> dict[str, Any]:
    """The `details` object of the JSON report: every field, by its name; {} when none."""
    if details is None:
        return {}
    return _plain(details)


def _plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _plain(value)
        elif isinstance(value, tuple):
            value = [_plain(v) if dataclasses.is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out

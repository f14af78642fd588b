"""Small authoritative DNS server (UDP+TCP, ::1 and 127.0.0.1 on one port) over a dict of records.
No recursion, wildcards, DNSSEC, zone transfers or delegations; built for the lab and tests.
`recursive` makes it pass for a resolver of its own names (RA set); `dnskey_records` is a
signed-looking DNSKEY RRset (fixed bytes, no real key) for a large answer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.SOA
import dns.rrset

from monitor.lab.ports import LOOPBACK_V4, LOOPBACK_V6, SocketSpec, bind_same_port

log = logging.getLogger(__name__)

# Longest CNAME chain followed inside the served data before giving up (loops end sooner).
MAX_CNAME_HOPS = 8
# A TCP client that sends nothing for this long is dropped, so idle clients cannot pin tasks.
TCP_IDLE_TIMEOUT = 10.0
# RFC 1035 limit for UDP answers when the query carries no EDNS payload size.
CLASSIC_UDP_SIZE = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsRecord:
    """One resource record under its owner name (the owner is the key of the records dict).

    rtype is a type mnemonic ("A", "AAAA", "CNAME", "NS", "SOA", ...), value its presentation
    form; names in values are taken as absolute. Records sharing owner and type form one RRset,
    whose TTL is the lowest of theirs (an RRset has a single TTL on the wire).
    """

    rtype: str
    value: str
    ttl: int = 300


Records = Mapping[str, Sequence[DnsRecord]]


def default_soa(zone: str, ttl: int = 60) -> DnsRecord:
    """An SOA for zones the caller gave none; its minimum (negative-cache TTL) equals `ttl`."""
    apex = dns.name.from_text(zone)
    mname = dns.name.from_text("ns", apex).to_text()
    rname = dns.name.from_text("hostmaster", apex).to_text()
    return DnsRecord(rtype="SOA", value=f"{mname} {rname} 1 7200 900 1209600 {ttl}", ttl=ttl)


def dnskey_records(count: int = 4, key_bytes: int = 516, ttl: int = 3600) -> list[DnsRecord]:
    """`count` DNSKEYs of `key_bytes` each (an RSA-4096 key's size): about count x key_bytes
    bytes on the wire, so a DNSKEY answer is larger than a 1280 or 1500-byte packet. The key
    bytes are a fixed hash stream: the same every run, and no key at all."""
    records = []
    for n in range(count):
        stream = b"".join(
            hashlib.sha256(f"lab-dnskey-{n}-{i}".encode()).digest()
            for i in range(key_bytes // 32 + 1)
        )
        flags = 257 if n == 0 else 256  # one key-signing key, the rest zone-signing keys
        key = base64.b64encode(stream[:key_bytes]).decode()
        records.append(DnsRecord(rtype="DNSKEY", value=f"{flags} 3 8 {key}", ttl=ttl))
    return records


class ZoneData:
    """The records compiled into RRsets, and the query logic of an authoritative server."""

    def __init__(self, records: Records, zones: Iterable[str], *, recursive: bool = False) -> None:
        self.recursive = recursive
        """Set RA on answers to queries that want recursion, as a resolver would."""
        # Deepest zone first, so "a.sub.example.com" picks "sub.example.com" over "example.com".
        self.zones: tuple[dns.name.Name, ...] = tuple(
            sorted({dns.name.from_text(z) for z in zones}, key=len, reverse=True)
        )
        if not self.zones:
            raise ValueError("at least one zone is needed")
        self._data: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        for owner_text, owner_records in records.items():
            owner = dns.name.from_text(owner_text)
            if self.zone_of(owner) is None:
                raise ValueError(f"{owner_text} is outside the served zones")
            for record in owner_records:
                self._add(owner, record)
        for zone in self.zones:
            if dns.rdatatype.SOA not in self._data.get(zone, {}):
                self._add(zone, default_soa(zone.to_text()))
        for owner, rrsets in self._data.items():
            if dns.rdatatype.CNAME in rrsets and len(rrsets) > 1:
                raise ValueError(f"{owner} has a CNAME next to other data")
        # Every ancestor of an owner (up to its zone) exists as an empty non-terminal: asking
        # for it must give NODATA, not NXDOMAIN (RFC 8020).
        self._names: set[dns.name.Name] = set()
        for owner in self._data:
            owner_zone = self.zone_of(owner)
            name = owner
            while owner_zone is not None and name.is_subdomain(owner_zone):
                self._names.add(name)
                if name == owner_zone:
                    break
                name = name.parent()

    def _add(self, owner: dns.name.Name, record: DnsRecord) -> None:
        rdtype = dns.rdatatype.from_text(record.rtype)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, record.value)
        rrsets = self._data.setdefault(owner, {})
        rrset = rrsets.get(rdtype)
        if rrset is None:
            rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype)
            rrset.update_ttl(record.ttl)
            rrsets[rdtype] = rrset
        rrset.add(rdata, record.ttl)

    def zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        for zone in self.zones:
            if name.is_subdomain(zone):
                return zone
        return None

    def _negative_soa(self, zone: dns.name.Name) -> dns.rrset.RRset:
        soa = self._data[zone][dns.rdatatype.SOA]
        rdata = soa[0]
        assert isinstance(rdata, dns.rdtypes.ANY.SOA.SOA)
        # RFC 2308: the negative answer lives min(SOA TTL, SOA minimum) seconds.
        negative = dns.rrset.RRset(zone, dns.rdataclass.IN, dns.rdatatype.SOA)
        negative.add(rdata, min(soa.ttl, rdata.minimum))
        return negative

    def _glue(self, rrset: dns.rrset.RRset) -> list[dns.rrset.RRset]:
        """A/AAAA of NS targets we also serve, for the additional section."""
        extra: list[dns.rrset.RRset] = []
        for rdata in rrset:
            target = getattr(rdata, "target", None)
            if isinstance(target, dns.name.Name):
                for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    found = self._data.get(target, {}).get(rdtype)
                    if found is not None:
                        extra.append(found)
        return extra

    def respond(self, query: dns.message.Message) -> dns.message.Message:
        """The authoritative answer to a parsed query (never raises for odd queries)."""
        response = dns.message.make_response(query)
        if self.recursive and query.flags & dns.flags.RD:
            response.flags |= dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        zone = self.zone_of(qname)
        if (
            zone is None
            or question.rdclass != dns.rdataclass.IN
            or qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR)
        ):
            # Not ours (or a transfer, which the lab does not offer): no AA, like a real
            # authoritative server asked about someone else's name.
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        name = qname
        seen: set[dns.name.Name] = set()
        for _ in range(MAX_CNAME_HOPS + 1):
            seen.add(name)
            rrsets = self._data.get(name, {})
            if qtype == dns.rdatatype.ANY and rrsets:
                response.answer.extend(rrsets.values())
                return response
            wanted = rrsets.get(qtype)
            if wanted is not None:
                response.answer.append(wanted)
                if qtype == dns.rdatatype.NS:
                    response.additional.extend(self._glue(wanted))
                return response
            cname = rrsets.get(dns.rdatatype.CNAME)
            if cname is not None:
                response.answer.append(cname)
                first = cname[0]
                assert isinstance(first, dns.rdtypes.ANY.CNAME.CNAME)
                target = first.target
                next_zone = self.zone_of(target)
                if next_zone is None or target in seen:
                    # Chain leaves our data (or loops): answer with what we have, as an
                    # authoritative server does; the resolver takes it from there.
                    return response
                name, zone = target, next_zone
                continue
            if name not in self._names:
                # RFC 6604: the rcode describes the last name of the chain.
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._negative_soa(zone))
            return response
        return response


def _error_reply(wire: bytes, rcode: dns.rcode.Rcode) -> bytes | None:
    """A header-only error answer for a message we could not parse; None if it is not a query."""
    if len(wire) < 12:
        return None  # not even a header: nothing to echo an id into, so drop it
    flags = int.from_bytes(wire[2:4], "big")
    if flags & dns.flags.QR:
        return None  # never answer responses: that is how reflection loops start
    reply = dns.message.Message(id=int.from_bytes(wire[0:2], "big"))
    reply.flags = dns.flags.QR | (flags & dns.flags.RD)
    reply.set_opcode(dns.opcode.from_flags(flags))
    reply.set_rcode(rcode)
    return reply.to_wire()


def handle_wire(zone_data: ZoneData, wire: bytes, *, udp: bool) -> bytes | None:
    """Wire query in, wire answer out (None: send nothing). Survives any input."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return _error_reply(wire, dns.rcode.FORMERR)
    except (ValueError, TypeError, IndexError, UnicodeError):
        # dnspython raises plain Python errors for a few malformed rdata; still a FORMERR.
        return _error_reply(wire, dns.rcode.FORMERR)
    if query.flags & dns.flags.QR:
        return None
    try:
        response = zone_data.respond(query)
        if udp:
            limit = max(query.payload, CLASSIC_UDP_SIZE) if query.edns >= 0 else CLASSIC_UDP_SIZE
            # prefer_truncation sets TC so the client retries over TCP.
            return response.to_wire(max_size=limit, prefer_truncation=True)
        return response.to_wire()
    except Exception:  # one odd query must never take the lab's DNS down for the rest
        log.exception("lab DNS failed to answer a query")
        return _error_reply(wire, dns.rcode.SERVFAIL)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, zone_data: ZoneData, drop_above: int | None = None) -> None:
        self._zone_data = zone_data
        self._drop_above = drop_above
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: on 3.11 the selector datagram transport does not subclass
        # asyncio.DatagramTransport although it implements it.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = handle_wire(self._zone_data, data, udp=True)
        if reply is None or self._transport is None:
            return
        if self._drop_above is not None and len(reply) > self._drop_above:
            return  # a large answer lost on the way, as IP fragments are on many paths
        self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (client gone): nothing to do, keep serving.
        log.debug("lab DNS UDP error: %s", exc)


class DnsServer:
    """Serves `records` for `zones` on UDP and TCP, on ::1 and 127.0.0.1, one port number.

    `async with DnsServer(records, zones) as srv: srv.port` — the port comes from the kernel
    unless `port` is given. Faults for tests: no TCP listener (`tcp=False`: TCP 53 refused), UDP
    replies longer than `udp_drop_above` bytes never sent (large answers lost).
    """

    def __init__(
        self,
        records: Records,
        zones: Iterable[str],
        *,
        hosts: Sequence[str] = (LOOPBACK_V6, LOOPBACK_V4),
        port: int = 0,
        recursive: bool = False,
        tcp: bool = True,
        udp_drop_above: int | None = None,
    ) -> None:
        self.zone_data = ZoneData(records, zones, recursive=recursive)
        self._with_tcp = tcp
        self._udp_drop_above = udp_drop_above
        self.hosts = tuple(hosts)
        self._wanted_port = port
        self._port: int | None = None
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("DnsServer is not running")
        return self._port

    async def start(self) -> None:
        if self._port is not None:
            raise RuntimeError("DnsServer already started")
        specs: list[SocketSpec] = []
        for host in self.hosts:
            # UDP first: it is the socket the brief's port choice starts from.
            specs.append(SocketSpec(host=host, kind=socket.SOCK_DGRAM))
            if self._with_tcp:
                specs.append(SocketSpec(host=host, kind=socket.SOCK_STREAM))
        port, socks = bind_same_port(specs, port=self._wanted_port)
        loop = asyncio.get_running_loop()
        pending = list(socks)
        try:
            for sock in socks:
                if sock.type == socket.SOCK_DGRAM:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _UdpProtocol(self.zone_data, self._udp_drop_above), sock=sock
                    )
                    self._udp.append(transport)
                else:
                    server = await asyncio.start_server(self._serve_tcp, sock=sock, backlog=64)
                    self._tcp.append(server)
                pending.remove(sock)
        except BaseException:
            for sock in pending:
                sock.close()
            await self.stop()
            raise
        self._port = port
        log.debug("lab DNS on port %d (%s)", port, ", ".join(self.hosts))

    async def stop(self) -> None:
        for server in self._tcp:
            server.close()
        for transport in self._udp:
            transport.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        for server in self._tcp:
            await server.wait_closed()
        self._tcp.clear()
        self._udp.clear()
        self._port = None
        # One loop turn so the UDP transports run their deferred close before the loop ends.
        await asyncio.sleep(0)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(length)
                reply = handle_wire(self.zone_data, wire, udp=False)
                if reply is None:
                    break  # unanswerable garbage: the framing may be off too, so hang up
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # client went away or idled out
        except asyncio.CancelledError:
            pass  # server stopping; close below and end quietly
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

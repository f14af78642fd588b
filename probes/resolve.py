"""Resolve a target's name once per family (A for ipv4, AAAA for ipv6) with dnspython.

Uses the configured name servers, or the system's (/etc/resolv.conf) when none are set; never
the OS stub via getaddrinfo, so rcode, TTL and the CNAME chain are visible. Flags AAAA records
inside a NAT64 prefix (64:ff9b::/96 or the one learnt from ipv4only.arpa, RFC 7050).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.ipv4
import dns.ipv6
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from probes.base import Clock, ErrorKind, Family, ProbeError, Resolution
from probes.errors import classify, error
from probes.netutil import wait_readable
from probes.text import peer_text

WELL_KNOWN_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# AAAA values that cannot carry IPv6 to the named host: the connection would go out over IPv4
# (IPv4-mapped), to a deprecated form (IPv4-compatible, ::), or stay on this link or group.
NOT_NATIVE: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.IPv6Network("::/96"), "IPv4-compatible"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast"),
)
_LOOPBACK6 = ipaddress.IPv6Address("::1")
# RFC 7050: the two IPv4 addresses behind ipv4only.arpa, found inside a synthesized AAAA.
_IPV4ONLY = (ipaddress.IPv4Address("192.0.0.170"), ipaddress.IPv4Address("192.0.0.171"))
_RDTYPE = {"ipv4": dns.rdatatype.A, "ipv6": dns.rdatatype.AAAA}


def ip_family(address: str) -> Family | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return "ipv6" if ip.version == 6 else "ipv4"


def not_native_reason(address: str) -> str | None:
    """Why an AAAA value is not native IPv6, or None when it is (loopback, ULA and
    documentation addresses are native: labs use them)."""
    ip = ipaddress.IPv6Address(address)
    if ip == _LOOPBACK6:
        return None
    return next((why for net, why in NOT_NATIVE if ip in net), None)


def nat64_prefixes_from(addresses: Sequence[str]) -> tuple[ipaddress.IPv6Network, ...]:
    """RFC 7050 section 3: find the /96 prefixes whose low 32 bits carry 192.0.0.170/171."""
    found: list[ipaddress.IPv6Network] = []
    for text in addresses:
        ip = ipaddress.IPv6Address(text)
        if ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) in _IPV4ONLY:
            net = ipaddress.IPv6Network((int(ip) & ~0xFFFFFFFF, 96))
            if net not in found:
                found.append(net)
    return tuple(found)


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsReach:
    """Whether the resolvers answer at all, over some queries: a vantage none of whose queries
    got an answer (of any rcode) cannot probe anything, and should say so once, plainly."""

    answered: int = 0
    """Queries some server answered (NOERROR, NXDOMAIN, SERVFAIL, REFUSED alike)."""
    unanswered: int = 0
    """Queries no server answered: unreachable, refused by the host, timed out."""
    errors: tuple[tuple[str, str], ...] = ()
    """(server, what went wrong) for each server that failed, the latest error each."""

    @property
    def offline(self) -> bool:
        return self.answered == 0 and self.unanswered > 0

    def summary(self) -> str:
        """One line: which servers, what error, and the question to ask."""
        servers = "; ".join(f"{server}: {what}" for server, what in self.errors) or "none"
        return peer_text(f"no DNS server answered any query ({servers}): is this machine online?")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plain:
    """What a resolution needs of an answer, read by dnspython or by read_answer."""

    cname_chain: tuple[str, ...]
    """The owner names of the CNAME records followed, from the name asked."""
    nameserver: str
    ttl: int | None
    """The TTL of the address records (None: none at the end of the chain)."""
    addresses: tuple[str, ...] | None
    """Sorted, without repeats; None: no record of the type asked (NODATA)."""


class _Unusual(Exception):
    """A reply read_answer leaves to dnspython (which may still take it, or reject it)."""


_MAX_CHAIN = 16  # dnspython's limit on CNAME hops
_PLAIN_LABEL = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_A, _AAAA, _CNAME, _OPT, _IN = 1, 28, 5, 41, 1


def _read_name(data: bytes, at: int) -> tuple[str, int]:
    """The name at `at` (compression followed) as text without the final dot, and the offset
    after it where it started. Only plain labels (letters, digits, - and _): anything dnspython
    would escape is _Unusual."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if at >= len(data):
            raise _Unusual("truncated name")
        n = data[at]
        if n & 0xC0 == 0xC0:
            if at + 1 >= len(data) or jumps > 64:
                raise _Unusual("bad compression")
            if end < 0:
                end = at + 2
            at = ((n & 0x3F) << 8) | data[at + 1]
            jumps += 1
            continue
        if n & 0xC0:
            raise _Unusual("label type")
        at += 1
        if n == 0:
            return ".".join(labels), end if end >= 0 else at
        label = data[at : at + n]
        if len(label) != n or not _PLAIN_LABEL.issuperset(label):
            raise _Unusual("label")
        labels.append(label.decode("ascii"))
        at += n


_FINAL_RCODES = {"SERVFAIL": ErrorKind.DNS_SERVFAIL, "REFUSED": ErrorKind.DNS_REFUSED}
TRUNCATED = "TRUNCATED"
"""What the fast path says of a reply with the TC flag: ask over TCP."""
NO_REPLY = "NO_REPLY"
"""What the fast path says when the first server did not answer (no reply in one attempt's
time, or a socket error): the full resolver starts at the next server."""


def read_answer(data: bytes, name: str, rdtype: int, nameserver: str) -> Plain | str:
    """A reply to the query for (name, rdtype), read without dnspython's message objects:
    TRUNCATED, or the rcode's name (NXDOMAIN, SERVFAIL, ...) when it is not NOERROR, else the
    CNAME chain and address records, as dnspython's Answer gives them. Raises _Unusual for
    anything outside the plain case (dnspython then reads it)."""
    if len(data) < 12:
        raise _Unusual("short")
    flags = int.from_bytes(data[2:4], "big")
    qd, an, _ns, ar = (int.from_bytes(data[i : i + 2], "big") for i in (4, 6, 8, 10))
    if not flags & 0x8000 or (flags >> 11) & 0xF or qd != 1:
        raise _Unusual("not a plain response")
    if flags & 0x0200:  # TC: the rest may be cut anywhere; TCP, as dnspython would
        return TRUNCATED
    qname, at = _read_name(data, 12)
    qtype, qclass = (
        int.from_bytes(data[at : at + 2], "big"),
        int.from_bytes(data[at + 2 : at + 4], "big"),
    )
    at += 4
    if qname.lower() != name.rstrip(".").lower() or (qtype, qclass) != (rdtype, _IN):
        raise _Unusual("another question")
    records: list[tuple[str, int, int, bytes | str]] = []
    for n in range(an + _ns + ar):
        owner, at = _read_name(data, at)
        if at + 10 > len(data):
            raise _Unusual("truncated record")
        rtype = int.from_bytes(data[at : at + 2], "big")
        rclass = int.from_bytes(data[at + 2 : at + 4], "big")
        ttl = int.from_bytes(data[at + 4 : at + 8], "big")
        size = int.from_bytes(data[at + 8 : at + 10], "big")
        at += 10
        rdata = data[at : at + size]
        if len(rdata) != size:
            raise _Unusual("truncated rdata")
        if rtype == _OPT and ttl >> 24:
            raise _Unusual("extended rcode")  # it changes the rcode: dnspython's reading
        if n < an and rclass == _IN and rtype in (rdtype, _CNAME):
            if rtype == _CNAME:
                target, _ = _read_name(data, at)
                records.append((owner, rtype, ttl, target))
            elif len(rdata) != (4 if rtype == _A else 16):
                raise _Unusual("address size")
            else:
                records.append((owner, rtype, ttl, rdata))
        at += size
    if at != len(data):
        raise _Unusual("trailing bytes")
    if flags & 0xF:
        return dns.rcode.to_text(dns.rcode.Rcode(flags & 0xF))
    chain: list[str] = []
    current = qname.lower()
    for _ in range(_MAX_CHAIN + 1):
        found = [r for r in records if r[0].lower() == current and r[1] == rdtype]
        if found:
            ntoa = dns.ipv4.inet_ntoa if rdtype == _A else dns.ipv6.inet_ntoa
            return Plain(
                cname_chain=tuple(chain),
                nameserver=nameserver,
                ttl=min(r[2] for r in found),
                addresses=tuple(sorted({ntoa(r[3]) for r in found if isinstance(r[3], bytes)})),
            )
        cnames = [r for r in records if r[0].lower() == current and r[1] == _CNAME]
        if not cnames:
            return Plain(cname_chain=tuple(chain), nameserver=nameserver, ttl=None, addresses=None)
        if len(cnames) > 1 or len(chain) >= _MAX_CHAIN:
            raise _Unusual("CNAME set or chain too long")
        alias, _, _, canonical = cnames[0]
        if not isinstance(canonical, str):
            raise _Unusual("CNAME target")
        chain.append(alias)
        current = canonical.lower()
    raise _Unusual("chain too long")


def _server(entry: object) -> str:
    """dnspython's name of a server ("Do53:2001:db8::53@53") as people write it."""
    text = str(entry).removeprefix("Do53:")
    address, at, port = text.rpartition("@")
    if not at:
        return text
    return address if port == "53" else f"{address} port {port}"


class Resolver:
    """One resolver per run or per vantage; tests inject the lab's name server."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        port: int = 53,
        *,
        timeout: float = 5.0,
        clock: Clock,
        fast: bool = True,
    ) -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(nameservers)
            self._resolver.port = port
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 2.0)
        self._resolver.search = []
        self._resolver.use_search_by_default = False
        self._clock = clock
        self._nat64: tuple[ipaddress.IPv6Network, ...] | None = None
        self._nat64_lock = asyncio.Lock()
        self._answered = 0
        self._unanswered = 0
        self._errors: dict[str, str] = {}
        self._fast_path = fast
        """Ask the first server directly before dnspython's resolver (tests compare both)."""
        self._rotated: dns.asyncresolver.Resolver | None = None
        """The resolver asking the second server first (after the first did not answer)."""
        self._queries: dict[tuple[str, int], bytes] = {}
        """The wire form of each (name, rdtype) asked (the id is replaced on every query)."""

    # -- whether any server answers ----------------------------------------------------------

    def reach(self) -> DnsReach:
        """Queries answered and not, since this resolver was made (or last taken)."""
        return DnsReach(
            answered=self._answered,
            unanswered=self._unanswered,
            errors=tuple(self._errors.items()),
        )

    def take_reach(self) -> DnsReach:
        """reach(), then start counting afresh (probe serve judges one window at a time)."""
        reach = self.reach()
        self._answered = self._unanswered = 0
        self._errors = {}
        return reach

    def _unreached(self, exc: BaseException) -> bool:
        """Count a query no server answered when `exc` says so; True if it did."""
        if isinstance(exc, dns.resolver.NoNameservers):
            entries = exc.kwargs.get("errors", [])
            if not entries or not all(isinstance(e[3], OSError) for e in entries):
                return False  # some server answered (with an rcode): reachable
            for entry in entries:
                self._errors[_server(entry[0])] = entry[3].strerror or str(entry[3])
        elif isinstance(exc, dns.exception.Timeout):
            port = "" if self._resolver.port == 53 else f" port {self._resolver.port}"
            for ns in self.nameservers:
                self._errors[f"{ns}{port}"] = "timed out"
        else:
            return False
        self._unanswered += 1
        return True

    def _unreachable_error(self, host: str, exc: dns.resolver.NoNameservers) -> ProbeError:
        """The socket error of the first server, as its error kind (ENETUNREACH is
        network_unreachable, an ICMP port unreachable connect_refused), naming every server."""
        entries = exc.kwargs.get("errors", [])
        first: OSError = entries[0][3]
        said = "; ".join(f"{_server(e[0])}: {e[3].strerror or e[3]}" for e in entries)
        return error(classify(first).kind, f"{host}: no DNS server reachable ({said})")

    @property
    def nameservers(self) -> tuple[str, ...]:
        return tuple(str(ns) for ns in self._resolver.nameservers)

    async def nat64_prefixes(self) -> tuple[ipaddress.IPv6Network, ...]:
        """The well-known prefix plus any learnt from ipv4only.arpa (asked once)."""
        async with self._nat64_lock:
            if self._nat64 is None:
                learnt: tuple[ipaddress.IPv6Network, ...] = ()
                try:
                    answer = await self._resolver.resolve(
                        "ipv4only.arpa.", "AAAA", raise_on_no_answer=False, search=False
                    )
                    if answer.rrset is not None:
                        learnt = nat64_prefixes_from([r.address for r in answer.rrset])
                except dns.exception.DNSException:
                    learnt = ()  # no DNS64 here, or the resolver refuses: only the well-known
                self._nat64 = (WELL_KNOWN_NAT64, *(p for p in learnt if p != WELL_KNOWN_NAT64))
            return self._nat64

    async def nameservers_of(self, zone: str) -> list[str]:
        """The zone's NS names, sorted; raises dns.exception.DNSException on failure."""
        try:
            answer = await self._resolver.resolve(zone.rstrip(".") + ".", "NS", search=False)
        except dns.exception.DNSException as exc:
            if not self._unreached(exc):
                self._answered += 1
            raise
        self._answered += 1
        return sorted(str(r.target).rstrip(".") for r in answer)

    async def resolve(self, host: str, family: Family) -> Resolution:
        literal = ip_family(host)
        if literal == family:
            return Resolution(family=family, addresses=(host,))
        if literal is not None:
            return Resolution(
                family=family,
                error=error(ErrorKind.DNS_NO_ADDRESS, f"{host} is an {literal} address"),
            )
        name = host if host.endswith(".") else host + "."
        t0 = self._clock()
        fast = await self._fast(name, _RDTYPE[family])
        if isinstance(fast, dns.resolver.Answer | Plain):
            self._answered += 1
            return await self._resolution(host, family, t0, fast)
        if fast == "NXDOMAIN":
            self._answered += 1
            return self._failed(
                family, t0, "NXDOMAIN", ErrorKind.DNS_NXDOMAIN, f"{host}: no such name"
            )
        if fast in _FINAL_RCODES and len(self._resolver.nameservers) == 1:
            # what dnspython concludes of the one server's SERVFAIL or REFUSED, unasked again
            self._answered += 1
            kind = _FINAL_RCODES[fast]
            return self._failed(family, t0, fast, kind, f"{host}: {fast} from every server")
        # the fast attempt took at most half the lifetime: the full resolver has the rest
        lifetime = max(0.001, self._resolver.lifetime - (self._clock() - t0))
        # The first server just had its attempt and did not answer: the next one first, as
        # dnspython itself would go on (the first is asked again only after the others).
        full = self._next_first() if fast == NO_REPLY else self._resolver
        try:
            answer = await full.resolve(
                name,
                _RDTYPE[family],
                raise_on_no_answer=False,
                search=False,
                lifetime=lifetime,
                tcp=fast == TRUNCATED,
            )
        except dns.resolver.NXDOMAIN:
            self._answered += 1
            return self._failed(
                family, t0, "NXDOMAIN", ErrorKind.DNS_NXDOMAIN, f"{host}: no such name"
            )
        except dns.resolver.NoNameservers as exc:
            if not self._unreached(exc):
                self._answered += 1  # every server answered, with an rcode
            return self._no_nameservers(family, t0, host, exc)
        except dns.exception.Timeout as exc:
            self._unreached(exc)
            return self._failed(family, t0, "", ErrorKind.TIMEOUT, f"{host}: DNS timed out")
        except (dns.exception.DNSException, ValueError) as exc:
            return self._failed(family, t0, "", ErrorKind.DNS_BAD_RESPONSE, f"{host}: {exc}")
        self._answered += 1
        return await self._resolution(host, family, t0, answer)

    def _next_first(self) -> dns.asyncresolver.Resolver:
        """The full resolver with its servers rotated by one (the same resolver when there is
        only one)."""
        servers = self._resolver.nameservers
        if len(servers) < 2:
            return self._resolver
        if self._rotated is None:
            self._rotated = copy.copy(self._resolver)
            self._rotated.nameservers = [*servers[1:], servers[0]]
        return self._rotated

    def _fast_server(self) -> tuple[str, int] | None:
        """The first name server, when a query to it may take the fast path."""
        r = self._resolver
        servers = r.nameservers
        if (
            not self._fast_path
            or not servers
            or r.keyname is not None
            or r.cache is not None
            or r.rotate
        ):
            return None
        first = servers[0]
        if not isinstance(first, str) or ip_family(first) is None:
            return None  # DoH, DoT, or a name server given otherwise: dnspython's way only
        return first, r.nameserver_ports.get(first, r.port)

    def _wire(self, name: str, rdtype: dns.rdatatype.RdataType) -> bytes:
        """The query as dnspython's resolver would send it (EDNS and flags alike)."""
        key = (name, int(rdtype))
        wire = self._queries.get(key)
        if wire is None:
            r = self._resolver
            query = dns.message.make_query(name, rdtype, dns.rdataclass.IN)
            query.use_edns(r.edns, r.ednsflags, r.payload, options=r.ednsoptions)
            if r.flags is not None:
                query.flags = r.flags
            wire = self._queries[key] = query.to_wire()
        return wire

    async def _fast(
        self, name: str, rdtype: dns.rdatatype.RdataType
    ) -> dns.resolver.Answer | Plain | str | None:
        """One UDP exchange with the first name server, without dnspython's resolver around it
        (which costs as much again as the query: a transport per query, its state machine).

        Gives the Answer to a plain NOERROR response, TRUNCATED, the name of another rcode,
        NO_REPLY when the server did not answer in one attempt's time or the socket failed,
        and None for a reply dnspython cannot read or when the fast path does not apply: then
        the full resolver asks, every server in turn, and says what went wrong.
        A socket of its own each time: a fresh source port per query, as dnspython's."""
        server = self._fast_server()
        if server is None:
            return None
        qid = int.from_bytes(os.urandom(2), "big")
        wire = qid.to_bytes(2, "big") + self._wire(name, rdtype)[2:]
        try:
            attempt = min(self._resolver.timeout, self._resolver.lifetime / 2)
            data = await _exchange(wire, server, qid, attempt)
        except (OSError, TimeoutError):
            return NO_REPLY
        try:
            return read_answer(data, name, int(rdtype), server[0])
        except _Unusual:
            pass
        try:  # a reply the lean reader does not take: dnspython's reading of it
            response = dns.message.from_wire(data)
            if not isinstance(response, dns.message.QueryMessage):
                return None
            if response.flags & dns.flags.TC:
                return TRUNCATED
            if response.rcode() != dns.rcode.NOERROR:
                return dns.rcode.to_text(response.rcode())
            qname = dns.name.from_text(name)
            if [(q.name, q.rdtype) for q in response.question] != [(qname, rdtype)]:
                return None
            return dns.resolver.Answer(
                qname, rdtype, dns.rdataclass.IN, response, server[0], server[1]
            )
        except dns.exception.DNSException:
            return None

    async def _resolution(
        self, host: str, family: Family, t0: float, answer: dns.resolver.Answer | Plain
    ) -> Resolution:
        if isinstance(answer, dns.resolver.Answer):
            answer = Plain(
                cname_chain=tuple(
                    str(rrset.name).rstrip(".") for rrset in answer.chaining_result.cnames
                ),
                nameserver=str(answer.nameserver or ""),
                ttl=answer.rrset.ttl if answer.rrset is not None else None,
                addresses=tuple(sorted(r.address for r in answer.rrset))
                if answer.rrset is not None
                else None,
            )
        seconds = self._clock() - t0
        chain = answer.cname_chain
        nameserver = answer.nameserver
        if answer.addresses is None or answer.ttl is None:
            rtype = "AAAA" if family == "ipv6" else "A"
            return Resolution(
                family=family,
                seconds=seconds,
                cname_chain=chain,
                nameserver=nameserver,
                error=error(ErrorKind.DNS_NO_ADDRESS, f"{host}: no {rtype} record"),
            )
        addresses = answer.addresses
        nat64 = False
        not_native: tuple[str, ...] = ()
        if family == "ipv6":
            not_native = tuple(a for a in addresses if not_native_reason(a))
            addresses = tuple(a for a in addresses if a not in not_native)
            if not addresses:
                first = not_native[0]
                return Resolution(
                    family=family,
                    ttl=answer.ttl,
                    cname_chain=chain,
                    seconds=seconds,
                    nameserver=nameserver,
                    not_native=not_native,
                    error=error(
                        ErrorKind.DNS_NOT_NATIVE_IPV6,
                        f"{host}: AAAA {first} is {not_native_reason(first)}, not native IPv6"
                        + (f" (and {len(not_native) - 1} more)" if len(not_native) > 1 else ""),
                    ),
                )
            prefixes = await self.nat64_prefixes()
            nat64 = all(any(ipaddress.IPv6Address(a) in p for p in prefixes) for a in addresses)
        return Resolution(
            family=family,
            addresses=addresses,
            ttl=answer.ttl,
            cname_chain=chain,
            seconds=seconds,
            nameserver=nameserver,
            nat64_synthesized=nat64,
            not_native=not_native,
            error=error(
                ErrorKind.DNS_NAT64_SYNTHESIZED,
                f"{host}: AAAA {addresses[0]} is synthesized by DNS64 (NAT64 prefix), "
                "not native IPv6",
            )
            if nat64
            else None,
        )

    def _failed(
        self, family: Family, t0: float, rcode: str, kind: ErrorKind, message: str
    ) -> Resolution:
        return Resolution(
            family=family, rcode=rcode, seconds=self._clock() - t0, error=error(kind, message)
        )

    def _no_nameservers(
        self, family: Family, t0: float, host: str, exc: dns.resolver.NoNameservers
    ) -> Resolution:
        # Each entry is (server, tcp, port, error, response); an rcode error is its text.
        entries = exc.kwargs.get("errors", [])
        if entries and all(isinstance(e[3], OSError) for e in entries):
            unreachable = self._unreachable_error(host, exc)
            return Resolution(family=family, seconds=self._clock() - t0, error=unreachable)
        rcodes = {str(e[3]) for e in entries}
        for rcode, kind in (
            ("SERVFAIL", ErrorKind.DNS_SERVFAIL),
            ("REFUSED", ErrorKind.DNS_REFUSED),
        ):
            if rcode in rcodes:
                return self._failed(family, t0, rcode, kind, f"{host}: {rcode} from every server")
        return self._failed(family, t0, "", ErrorKind.DNS_BAD_RESPONSE, f"{host}: {exc}")


async def _exchange(wire: bytes, server: tuple[str, int], qid: int, timeout: float) -> bytes:
    """Send one query from a fresh connected UDP socket and give the first reply bearing its
    id (connected: the kernel drops datagrams from anyone but the server, and reports its
    port unreachable as ConnectionRefusedError). Raises TimeoutError, OSError."""
    af = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(server)
        sock.send(wire)
        async with asyncio.timeout(timeout):
            while True:
                await wait_readable(sock)
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    continue
                if len(data) >= 12 and int.from_bytes(data[:2], "big") == qid and data[2] & 0x80:
                    return data

"""Resolve a target's name once per family (A for ipv4, AAAA for ipv6) over probes/dnsquery.py.

Uses the configured name servers, or the system's (/etc/resolv.conf) when none are set; never
the OS stub via getaddrinfo, so rcode, TTL and the CNAME chain are visible. Flags AAAA records
inside a NAT64 prefix (64:ff9b::/96 or the one learnt from ipv4only.arpa, RFC 7050).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.resolver

from probes import dnsquery, dnswire, stamp
from probes.base import Clock, ErrorKind, Family, Resolution
from probes.errors import classify, error
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
_RDTYPE = {"ipv4": dnswire.A, "ipv6": dnswire.AAAA}
_PAYLOAD = 1232  # the EDNS buffer size of DNS Flag Day 2020, dnspython's default too
_TIMED_OUT = "timed out"
_FINAL_RCODES = {"SERVFAIL": ErrorKind.DNS_SERVFAIL, "REFUSED": ErrorKind.DNS_REFUSED}


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
class Asked:
    """What became of one question put to the name servers in turn."""

    reply: dnsquery.Reply | None = None
    """The NOERROR or NXDOMAIN reply that ended the asking (None: no server gave one)."""
    nameserver: str = ""
    """The address of the server that gave `reply`."""
    seconds: float = 0.0
    """From the first send to the kernel's stamp on `reply` (earlier servers' tries
    included); without a reply, the time spent asking."""
    failures: tuple[tuple[str, OSError | str | dnswire.BadMessage], ...] = ()
    """(server, what it did) for each server that failed: a socket error, "timed out", the
    rcode's name (SERVFAIL, REFUSED, ...) or a reply that could not be read; the latest each."""
    timed_out: bool = False
    """The lifetime ran out while some server could still have answered."""


class LookupFailed(LookupError):
    """nameservers_of() got no NS set; the message says why (each server's failure)."""


def _said(what: OSError | str | dnswire.BadMessage) -> str:
    return (what.strerror or str(what)) if isinstance(what, OSError) else str(what)


class Resolver:
    """One resolver per run or per vantage; tests inject the lab's name server.

    Each question goes to the servers in their order, the first one first every time (it may
    be back), each try bounded by `timeout` (at most 2 s, at most half the lifetime, so a
    silent first server leaves time for the next). A server that refuses the port, sends an
    rcode other than NOERROR/NXDOMAIN or an unreadable reply is not asked again for this
    question; a silent one is, in turn, until the lifetime (`timeout`) runs out."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        port: int = 53,
        *,
        timeout: float = 5.0,
        clock: Clock,
    ) -> None:
        if nameservers:
            self._servers = [(str(ns), port) for ns in nameservers]
        else:  # /etc/resolv.conf, read by dnspython (raises NoResolverConfiguration)
            system = dns.resolver.Resolver()
            self._servers = [
                (str(ns), system.nameserver_ports.get(str(ns), system.port))
                for ns in system.nameservers
                if ip_family(str(ns)) is not None
            ]
        self._lifetime = timeout
        self._attempt = min(timeout, 2.0, timeout / 2)
        self._clock = clock
        self._nat64: tuple[ipaddress.IPv6Network, ...] | None = None
        self._nat64_lock = asyncio.Lock()
        self._answered = 0
        self._unanswered = 0
        self._errors: dict[str, str] = {}

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

    def _count(self, asked: Asked) -> None:
        """A question some server answered (any rcode, even unreadable) counts as answered;
        one that only met socket errors and silence as unanswered, naming each server."""
        if asked.reply is not None or not all(
            isinstance(what, OSError) or what == _TIMED_OUT for _, what in asked.failures
        ):
            self._answered += 1
            return
        self._unanswered += 1
        for server, what in asked.failures:
            self._errors[server] = _said(what)

    @property
    def nameservers(self) -> tuple[str, ...]:
        return tuple(address for address, _ in self._servers)

    # -- asking ------------------------------------------------------------------------------

    async def ask(self, name: str, rdtype: int) -> Asked:
        """Put the question (recursion desired, EDNS 0) to the servers in turn, as the class
        docstring says; never raises for what the network or a server did (ValueError: `name`
        is no DNS name)."""
        query = dnswire.query(name, rdtype, payload=_PAYLOAD)
        start = self._clock()
        first_sent = stamp.now_ns()
        failures: dict[str, OSError | str | dnswire.BadMessage] = {}
        live = list(self._servers)
        turn = 0
        while live:
            left = self._lifetime - (self._clock() - start)
            if left <= 0:
                break
            address, port = live[turn % len(live)]
            label = address if port == 53 else f"{address} port {port}"
            sent = stamp.now_ns()
            try:
                reply = await dnsquery.exchange(
                    query, address, port, timeout=min(self._attempt, left)
                )
            except TimeoutError:
                failures[label] = _TIMED_OUT
                turn += 1
                continue
            except (OSError, dnswire.BadMessage) as exc:
                failures[label] = exc
                live.remove((address, port))  # `turn` now points at the next server
                continue
            rcode = reply.message.rcode
            if rcode in (dnswire.NOERROR, dnswire.NXDOMAIN):
                return Asked(
                    reply=reply,
                    nameserver=address,
                    # the earlier tries by this clock, this one as the kernel timed it
                    seconds=(sent - first_sent) / 1e9 + reply.seconds,
                    failures=tuple(failures.items()),
                )
            failures[label] = dnswire.rcode_text(rcode)
            live.remove((address, port))
        return Asked(
            seconds=self._clock() - start, failures=tuple(failures.items()), timed_out=bool(live)
        )

    async def nat64_prefixes(self) -> tuple[ipaddress.IPv6Network, ...]:
        """The well-known prefix plus any learnt from ipv4only.arpa (asked once)."""
        async with self._nat64_lock:
            if self._nat64 is None:
                learnt: tuple[ipaddress.IPv6Network, ...] = ()
                asked = await self.ask("ipv4only.arpa.", dnswire.AAAA)
                if asked.reply is not None:  # else no DNS64 here: only the well-known
                    with contextlib.suppress(dnswire.BadMessage):
                        found = dnswire.chain(asked.reply.message, "ipv4only.arpa.", dnswire.AAAA)
                        learnt = nat64_prefixes_from([str(r.value) for r in found.answer])
                self._nat64 = (WELL_KNOWN_NAT64, *(p for p in learnt if p != WELL_KNOWN_NAT64))
            return self._nat64

    async def nameservers_of(self, zone: str) -> list[str]:
        """The zone's NS names, sorted; raises LookupFailed or dnswire.BadMessage on failure."""
        name = zone.rstrip(".").lower() + "."
        asked = await self.ask(name, dnswire.NS)
        self._count(asked)
        if asked.reply is None:
            said = "; ".join(f"{server}: {_said(what)}" for server, what in asked.failures)
            if asked.timed_out:
                raise LookupFailed(f"NS {name}: timed out ({said})")
            raise LookupFailed(f"NS {name}: no server answered ({said})")
        if asked.reply.message.rcode == dnswire.NXDOMAIN:
            raise LookupFailed(f"NS {name}: no such name")
        answer = dnswire.chain(asked.reply.message, name, dnswire.NS).answer
        if not answer:
            raise LookupFailed(f"NS {name}: no NS record")
        return sorted(str(r.value).rstrip(".") for r in answer)

    async def resolve(self, host: str, family: Family) -> Resolution:
        literal = ip_family(host)
        if literal == family:
            return Resolution(family=family, addresses=(host,))
        if literal is not None:
            return Resolution(
                family=family,
                error=error(ErrorKind.DNS_NO_ADDRESS, f"{host} is an {literal} address"),
            )
        name = host.lower() if host.endswith(".") else host.lower() + "."
        try:
            asked = await self.ask(name, _RDTYPE[family])
        except ValueError as exc:  # a name that is no DNS name
            return Resolution(
                family=family, error=error(ErrorKind.DNS_BAD_RESPONSE, f"{host}: {exc}")
            )
        self._count(asked)
        if asked.reply is None:
            return self._unanswered_resolution(host, family, asked)
        message = asked.reply.message
        if message.rcode == dnswire.NXDOMAIN:
            return self._failed(
                family, asked.seconds, "NXDOMAIN", ErrorKind.DNS_NXDOMAIN, f"{host}: no such name"
            )
        try:
            chain = dnswire.chain(message, name, _RDTYPE[family])
        except dnswire.BadMessage as exc:  # a CNAME loop or chain too long
            return self._failed(
                family, asked.seconds, "NOERROR", ErrorKind.DNS_BAD_RESPONSE, f"{host}: {exc}"
            )
        return await self._resolution(host, family, asked, chain)

    async def _resolution(
        self, host: str, family: Family, asked: Asked, chaining: dnswire.Chain
    ) -> Resolution:
        seconds = asked.seconds
        chain = chaining.cnames
        nameserver = asked.nameserver
        rrset = chaining.answer
        if not rrset:
            rtype = "AAAA" if family == "ipv6" else "A"
            return Resolution(
                family=family,
                seconds=seconds,
                cname_chain=chain,
                nameserver=nameserver,
                error=error(ErrorKind.DNS_NO_ADDRESS, f"{host}: no {rtype} record"),
            )
        ttl = min(r.ttl for r in rrset)
        addresses: tuple[str, ...] = tuple(sorted({str(r.value) for r in rrset}))
        nat64 = False
        not_native: tuple[str, ...] = ()
        if family == "ipv6":
            not_native = tuple(a for a in addresses if not_native_reason(a))
            addresses = tuple(a for a in addresses if a not in not_native)
            if not addresses:
                first = not_native[0]
                return Resolution(
                    family=family,
                    ttl=ttl,
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
            ttl=ttl,
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
        self, family: Family, seconds: float, rcode: str, kind: ErrorKind, message: str
    ) -> Resolution:
        return Resolution(family=family, rcode=rcode, seconds=seconds, error=error(kind, message))

    def _unanswered_resolution(self, host: str, family: Family, asked: Asked) -> Resolution:
        """No server gave NOERROR or NXDOMAIN: the lifetime ran out (timeout), every server
        failed at the socket (the first one's error kind: ENETUNREACH is network_unreachable,
        an ICMP port unreachable connect_refused), or said SERVFAIL, REFUSED or nonsense."""
        seconds = asked.seconds
        failures = asked.failures
        if asked.timed_out:
            return self._failed(family, seconds, "", ErrorKind.TIMEOUT, f"{host}: DNS timed out")
        if not failures:
            return self._failed(
                family, seconds, "", ErrorKind.DNS_BAD_RESPONSE, f"{host}: no name server to ask"
            )
        said = "; ".join(f"{server}: {_said(what)}" for server, what in failures)
        sockets = [what for _, what in failures if isinstance(what, OSError)]
        if len(sockets) == len(failures):
            kind = classify(sockets[0]).kind
            return Resolution(
                family=family,
                seconds=seconds,
                error=error(kind, f"{host}: no DNS server reachable ({said})"),
            )
        rcodes = {what for _, what in failures if isinstance(what, str)}
        for rcode, kind in _FINAL_RCODES.items():
            if rcode in rcodes:
                return self._failed(
                    family, seconds, rcode, kind, f"{host}: {rcode} from every server"
                )
        return self._failed(family, seconds, "", ErrorKind.DNS_BAD_RESPONSE, f"{host}: {said}")

"""The lab: AWS-style dual-stack endpoints with known faults, served on ::1/127.0.0.1 with DNS.
Loopback only and no root: faults are made with sockets (RST, full accept queue), not firewalls."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from monitor.lab.dnsserver import DnsRecord, DnsServer, dnskey_records
from monitor.lab.pki import IssuedCert, LabPki
from monitor.lab.ports import LOOPBACK_V4, LOOPBACK_V6, LOOPBACKS, SocketSpec, bind_same_port
from monitor.lab.web import BlackholeServer, ClosedPort, LabServer, ResetServer, WebServer

__all__ = [
    "ALIAS_HOST",
    "FAULTS",
    "MISSING_HOST",
    "NAMESERVERS",
    "NAT64_ADDRESS",
    "SERVED_ZONES",
    "ZONE",
    "Lab",
    "LabEndpoint",
    "LabFacts",
    "endpoint_host",
    "lab_records",
]

log = logging.getLogger(__name__)

ZONE = "example.com"
NAMESERVERS: tuple[str, ...] = ("ns-1.awsdns-01.org", "ns-2.awsdns-02.net")
SERVED_ZONES: tuple[str, ...] = (ZONE, "amazonaws.com", "awsdns-01.org", "awsdns-02.net")
ALIAS_HOST = "lab-alias.example.com"
MISSING_HOST = "dualstack.lab-missing.us-east-1.elb.amazonaws.com"
# RFC 6052 well-known prefix + 127.0.0.1. Not a local address: nothing may ever connect to it.
NAT64_ADDRESS = "64:ff9b::7f00:1"
# IPv4-mapped 127.0.0.1: dialled, it would reach the healthy IPv4 server and look like IPv6.
V4_MAPPED_ADDRESS = "::ffff:127.0.0.1"
ENDPOINT_TTL = 60
NS_TTL = 172800
EXTRA_SAN = "other.lab.invalid"

FaultId = Literal[
    "healthy",
    "no_aaaa",
    "v4_only",
    "cert_differs_v6",
    "rotated_v6",
    "expired_v6",
    "v6_reset",
    "v6_timeout",
    "nat64",
    "v4_mapped",
]
# What listens on ::1 at the endpoint's port.
V6Side = Literal["web", "closed", "reset", "blackhole"]
# Which certificate the ::1 web server presents (the 127.0.0.1 side always has the plain one).
V6Cert = Literal["same", "other_ca", "rotated", "expired"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LabEndpoint:
    """One lab endpoint, as a config generator needs it."""

    name: str  # short id, e.g. "healthy"
    host: str  # DNS name the lab DNS server answers
    port: int  # TCP (TLS/h2) and UDP (h3) port, same number on ::1 and 127.0.0.1
    fault: str  # one of FAULTS
    description: str  # one line for people


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    fault: FaultId
    aaaa: str | None
    v6: V6Side
    v6_cert: V6Cert
    description: str

    @property
    def host(self) -> str:
        return endpoint_host(self.fault)


def endpoint_host(name: str) -> str:
    """AWS load-balancer style name of an endpoint, e.g. dualstack.lab-no-aaaa.us-east-1...."""
    return f"dualstack.lab-{name.replace('_', '-')}.us-east-1.elb.amazonaws.com"


_PLANS: tuple[_Plan, ...] = (
    _Plan(
        fault="healthy",
        aaaa=LOOPBACK_V6,
        v6="web",
        v6_cert="same",
        description="A+AAAA, same certificate, h2 and h3 on both families",
    ),
    _Plan(
        fault="no_aaaa",
        aaaa=None,
        v6="web",
        v6_cert="same",
        description="only an A record, although ::1 serves the same site",
    ),
    _Plan(
        fault="v4_only",
        aaaa=LOOPBACK_V6,
        v6="closed",
        v6_cert="same",
        description="A+AAAA, but nothing listens on ::1: TCP refused, UDP ICMP unreachable",
    ),
    _Plan(
        fault="cert_differs_v6",
        aaaa=LOOPBACK_V6,
        v6="web",
        v6_cert="other_ca",
        description=f"::1 presents a CA 2 certificate (trusted) with extra SAN {EXTRA_SAN}",
    ),
    _Plan(
        fault="rotated_v6",
        aaaa=LOOPBACK_V6,
        v6="web",
        v6_cert="rotated",
        description="::1 presents a new key from the same CA for the same names (rotation)",
    ),
    _Plan(
        fault="expired_v6",
        aaaa=LOOPBACK_V6,
        v6="web",
        v6_cert="expired",
        description="::1 presents an expired certificate (right CA and names)",
    ),
    _Plan(
        fault="v6_reset",
        aaaa=LOOPBACK_V6,
        v6="reset",
        v6_cert="same",
        description="::1 resets every TCP connection (UDP refused); 127.0.0.1 healthy",
    ),
    _Plan(
        fault="v6_timeout",
        aaaa=LOOPBACK_V6,
        v6="blackhole",
        v6_cert="same",
        description="::1 TCP connects and QUIC time out (blackhole); 127.0.0.1 healthy",
    ),
    _Plan(
        fault="nat64",
        aaaa=NAT64_ADDRESS,
        v6="closed",
        v6_cert="same",
        description=f"AAAA is {NAT64_ADDRESS} (NAT64 prefix, never connect); 127.0.0.1 healthy",
    ),
    _Plan(
        fault="v4_mapped",
        aaaa=V4_MAPPED_ADDRESS,
        v6="closed",
        v6_cert="same",
        description=f"AAAA is {V4_MAPPED_ADDRESS} (IPv4-mapped: would reach 127.0.0.1 over IPv4)",
    ),
)

FAULTS: tuple[str, ...] = tuple(plan.fault for plan in _PLANS)


def _zone_records(zone: str) -> dict[str, list[DnsRecord]]:
    """SOA, NS and DNSKEY for one served zone, AWS Route 53 style."""
    ns = [DnsRecord(rtype="NS", value=f"{name}.", ttl=NS_TTL) for name in NAMESERVERS]
    # Minimum (negative TTL) kept short: the lab's answers change between runs.
    soa_value = f"{NAMESERVERS[0]}. awsdns-hostmaster.amazon.com. 1 7200 900 1209600 60"
    # A DNSKEY RRset of a few kilobytes: the name servers' large answer (probe dns_large).
    return {zone: [DnsRecord(rtype="SOA", value=soa_value, ttl=900), *ns, *dnskey_records()]}


def lab_records() -> dict[str, tuple[DnsRecord, ...]]:
    """The lab's DNS data (independent of ports, so it exists before the lab starts)."""
    data: dict[str, list[DnsRecord]] = {}
    for zone in SERVED_ZONES:
        data.update(_zone_records(zone))
    for ns_name in NAMESERVERS:
        # The nameservers are the lab DNS server itself, on both families.
        data[ns_name] = [
            DnsRecord(rtype="A", value=LOOPBACK_V4, ttl=3600),
            DnsRecord(rtype="AAAA", value=LOOPBACK_V6, ttl=3600),
        ]
    for plan in _PLANS:
        records = [DnsRecord(rtype="A", value=LOOPBACK_V4, ttl=ENDPOINT_TTL)]
        if plan.aaaa is not None:
            records.append(DnsRecord(rtype="AAAA", value=plan.aaaa, ttl=ENDPOINT_TTL))
        data[plan.host] = records
    data[ALIAS_HOST] = [DnsRecord(rtype="CNAME", value=f"{endpoint_host('healthy')}.", ttl=300)]
    return {name: tuple(records) for name, records in data.items()}


def _endpoint_named(endpoints: tuple[LabEndpoint, ...], name: str) -> LabEndpoint:
    for endpoint in endpoints:
        if endpoint.name == name:
            return endpoint
    raise KeyError(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class LabFacts:
    """What a running lab is, as plain data: what config generators and tests read.

    Picklable, so a lab serving in another process (the test suite's, which must not share a
    GIL with the code it measures) can hand it over. `Lab.facts()` makes one.
    """

    workdir: Path
    dns_port: int
    ca_file: Path
    endpoints: tuple[LabEndpoint, ...]
    # (endpoint name, address family number) -> certificate that side presents.
    certs: Mapping[tuple[str, int], IssuedCert]
    zone: str = ZONE
    nameservers: tuple[str, ...] = NAMESERVERS
    zones: tuple[str, ...] = SERVED_ZONES
    dns_hosts: tuple[str, ...] = LOOPBACKS

    def endpoint(self, name: str) -> LabEndpoint:
        return _endpoint_named(self.endpoints, name)

    def cert_for(self, name: str, family: socket.AddressFamily) -> IssuedCert:
        """The certificate the `family` side of endpoint `name` presents (KeyError if none)."""
        return self.certs[(name, int(family))]


class Lab:
    """Starts the PKI, the DNS server and every endpoint's servers; stops them all on exit.

    ``async with Lab(workdir) as lab:`` then read dns_port, ca_file, endpoints, ... Certificates
    and keys are written to `workdir`.
    """

    zone = ZONE
    nameservers: tuple[str, ...] = NAMESERVERS
    zones: tuple[str, ...] = SERVED_ZONES
    dns_hosts: tuple[str, ...] = LOOPBACKS

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.records: Mapping[str, tuple[DnsRecord, ...]] = lab_records()
        self._stack: contextlib.AsyncExitStack | None = None
        self._dns: DnsServer | None = None
        self._pki: LabPki | None = None
        self._endpoints: tuple[LabEndpoint, ...] | None = None
        # (endpoint name, family) -> certificate that side presents (absent: no TLS there).
        self.certs: dict[tuple[str, socket.AddressFamily], IssuedCert] = {}

    # -- what a config generator reads ------------------------------------------------------

    @property
    def dns_port(self) -> int:
        if self._dns is None:
            raise RuntimeError("Lab is not running")
        return self._dns.port

    @property
    def ca_file(self) -> Path:
        if self._pki is None:
            raise RuntimeError("Lab is not running")
        return self._pki.ca_file

    @property
    def endpoints(self) -> tuple[LabEndpoint, ...]:
        if self._endpoints is None:
            raise RuntimeError("Lab is not running")
        return self._endpoints

    def endpoint(self, name: str) -> LabEndpoint:
        return _endpoint_named(self.endpoints, name)

    def cert_for(self, name: str, family: socket.AddressFamily) -> IssuedCert:
        """The certificate the `family` side of endpoint `name` presents (KeyError if none)."""
        return self.certs[(name, family)]

    def facts(self) -> LabFacts:
        """This running lab as plain, picklable data."""
        return LabFacts(
            workdir=self.workdir,
            dns_port=self.dns_port,
            ca_file=self.ca_file,
            endpoints=self.endpoints,
            certs={(name, int(family)): cert for (name, family), cert in self.certs.items()},
            zone=self.zone,
            nameservers=self.nameservers,
            zones=self.zones,
            dns_hosts=self.dns_hosts,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Lab:
        if self._stack is not None:
            raise RuntimeError("Lab already started")
        self.certs.clear()
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            pki = LabPki(self.workdir)
            endpoints = []
            for plan in _PLANS:
                endpoints.append(await self._start_endpoint(stack, pki, plan))
            dns = DnsServer(self.records, self.zones, hosts=self.dns_hosts)
            await stack.enter_async_context(dns)
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack, self._pki, self._dns = stack, pki, dns
        self._endpoints = tuple(endpoints)
        log.info("lab up: DNS port %d, %d endpoints", dns.port, len(endpoints))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._dns = self._pki = None
        self._endpoints = None
        if stack is not None:
            await stack.aclose()

    async def _start_endpoint(
        self, stack: contextlib.AsyncExitStack, pki: LabPki, plan: _Plan
    ) -> LabEndpoint:
        name = plan.fault
        v4_cert = pki.issue(f"{name}-v4", [plan.host])
        v6_cert: IssuedCert | None = None
        if plan.v6 == "web":
            if plan.v6_cert == "same":
                v6_cert = v4_cert
            elif plan.v6_cert == "other_ca":
                v6_cert = pki.issue(f"{name}-v6", [plan.host, EXTRA_SAN], second_ca=True)
            elif plan.v6_cert == "rotated":
                v6_cert = pki.rotate(v4_cert, f"{name}-v6")
            else:
                v6_cert = pki.issue(f"{name}-v6", [plan.host], expired=True)

        # Every side holds TCP and UDP on both families, even the fault sides, so the port
        # number cannot be taken by someone else on ::1 while the lab runs.
        specs = [
            SocketSpec(host=host, kind=kind)
            for host in (LOOPBACK_V4, LOOPBACK_V6)
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        ]
        port, (tcp4, udp4, tcp6, udp6) = bind_same_port(specs)

        servers: list[LabServer] = [
            WebServer(tcp_sock=tcp4, udp_sock=udp4, cert=v4_cert, label=f"{name} ipv4")
        ]
        if plan.v6 == "web":
            assert v6_cert is not None
            servers.append(
                WebServer(tcp_sock=tcp6, udp_sock=udp6, cert=v6_cert, label=f"{name} ipv6")
            )
        elif plan.v6 == "closed":
            servers.append(ClosedPort(tcp_sock=tcp6, udp_sock=udp6))
        elif plan.v6 == "reset":
            servers.append(ResetServer(sock=tcp6))
            # QUIC over ::1 is refused (ICMP), the UDP counterpart of a reset.
            servers.append(ClosedPort(tcp_sock=None, udp_sock=udp6))
        else:
            servers.append(BlackholeServer(tcp_sock=tcp6, udp_sock=udp6))
        # Registered before starting, so a failed start still frees every socket.
        for server in servers:
            stack.push_async_callback(server.stop)
        for server in servers:
            await server.start()

        self.certs[(name, socket.AF_INET)] = v4_cert
        if v6_cert is not None:
            self.certs[(name, socket.AF_INET6)] = v6_cert
        return LabEndpoint(
            name=name, host=plan.host, port=port, fault=name, description=plan.description
        )

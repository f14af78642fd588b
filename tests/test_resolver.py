"""The resolver (probes/resolve.py over probes/dnsquery.py) against dnspython's own resolver
on the lab DNS server: the same answers, CNAME chains and TTLs; failover when the first server
is silent or its port closed; the kernel's receive stamp as the latency."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import dns.asyncresolver
import dns.resolver
import pytest

from monitor.lab.dnsserver import DnsRecord, DnsServer
from probes.base import ErrorKind, Family
from probes.resolve import Resolver

RECORDS = {
    "both.example.com": [
        DnsRecord(rtype="A", value="127.0.0.1", ttl=60),
        DnsRecord(rtype="A", value="127.0.0.2", ttl=60),
        DnsRecord(rtype="AAAA", value="::1", ttl=60),
    ],
    "alias.example.com": [DnsRecord(rtype="CNAME", value="both.example.com.")],
    "v4only.example.com": [DnsRecord(rtype="A", value="127.0.0.1")],
    "synth.example.com": [DnsRecord(rtype="AAAA", value="64:ff9b::7f00:1")],
}


@pytest.mark.parametrize(
    "host",
    [
        "both.example.com",
        "alias.example.com",
        "v4only.example.com",
        "synth.example.com",
        "missing.example.com",
    ],
)
async def test_resolves_as_dnspython_does(host: str) -> None:
    async with DnsServer(RECORDS, ("example.com",)) as server:
        ours = Resolver(["127.0.0.1"], server.port, timeout=2.0, clock=time.perf_counter)
        theirs = dns.asyncresolver.Resolver(configure=False)
        theirs.nameservers = ["127.0.0.1"]
        theirs.port = server.port
        pairs: tuple[tuple[Family, str], ...] = (("ipv4", "A"), ("ipv6", "AAAA"))
        for family, rdtype in pairs:
            res = await ours.resolve(host, family)
            try:
                answer = await theirs.resolve(host + ".", rdtype, raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                assert res.error is not None and res.error.kind is ErrorKind.DNS_NXDOMAIN
                assert res.rcode == "NXDOMAIN"
                continue
            chain = tuple(str(r.name).rstrip(".") for r in answer.chaining_result.cnames)
            assert res.cname_chain == chain
            if answer.rrset is None:
                assert res.error is not None and res.error.kind is ErrorKind.DNS_NO_ADDRESS
                continue
            assert res.ttl == answer.rrset.ttl
            addresses = tuple(sorted(r.address for r in answer.rrset))
            if host.startswith("synth"):
                assert res.nat64_synthesized and res.addresses == addresses
            else:
                assert res.error is None and res.addresses == addresses
        assert ours.reach().answered == 2 and not ours.reach().offline


async def test_a_closed_first_server_falls_back_to_the_next() -> None:
    """Nothing listens on 127.0.0.2: the query is refused at once (ICMP port unreachable),
    and the next server's answer is the result."""
    async with DnsServer(RECORDS, ("example.com",)) as server:
        resolver = Resolver(
            ["127.0.0.2", "127.0.0.1"], server.port, timeout=5.0, clock=time.perf_counter
        )
        res = await resolver.resolve("both.example.com", "ipv4")
        assert res.error is None and res.addresses == ("127.0.0.1", "127.0.0.2")
        assert res.nameserver == "127.0.0.1"


@asynccontextmanager
async def silent_server(host: str, port: int) -> AsyncIterator[list[bytes]]:
    """A UDP socket that reads queries and never answers: a server that lost its replies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    got: list[bytes] = []
    loop = asyncio.get_running_loop()

    def readable() -> None:
        with suppress(BlockingIOError):
            got.append(sock.recv(65535))

    loop.add_reader(sock.fileno(), readable)
    try:
        yield got
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


async def test_a_silent_first_server_is_asked_once_then_the_next_answers() -> None:
    """The first server gets one try (half the 2 s lifetime) and no answer: the second
    answers within the rest of the lifetime."""
    async with (
        DnsServer(RECORDS, ("example.com",)) as server,
        silent_server("127.0.0.3", server.port) as queries,
    ):
        resolver = Resolver(
            ["127.0.0.3", "127.0.0.1"], server.port, timeout=2.0, clock=time.perf_counter
        )
        res = await resolver.resolve("both.example.com", "ipv4")
        assert res.error is None and res.addresses == ("127.0.0.1", "127.0.0.2"), res
        assert res.nameserver == "127.0.0.1"
        assert len(queries) == 1
        # The next resolution asks the first server first again (it may be back).
        await resolver.resolve("v4only.example.com", "ipv4")
        assert len(queries) == 2


async def test_a_closed_port_is_connect_refused_not_a_timeout() -> None:
    """The kernel's ICMP port unreachable for the one server is connect_refused at once, and
    the query counts as unanswered (the vantage may be offline)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    servers: tuple[tuple[Family, str], ...] = (("ipv4", "127.0.0.1"), ("ipv6", "::1"))
    for family, server in servers:
        resolver = Resolver([server], port, timeout=5.0, clock=time.perf_counter)
        start = time.perf_counter()
        res = await resolver.resolve("both.example.com", family)
        assert time.perf_counter() - start < 2.0
        assert res.error is not None and res.error.kind is ErrorKind.CONNECT_REFUSED, res
        assert f"{server} port {port}: Connection refused" in res.error.message
        reach = resolver.reach()
        assert reach.offline
        assert reach.errors == ((f"{server} port {port}", "Connection refused"),)

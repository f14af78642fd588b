"""The resolver's fast path (one plain UDP exchange with the first server, read without
dnspython's message objects) against dnspython's own resolver, on the lab DNS server: the same
resolutions, and the same failover when the first server is silent or refuses."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import dns.rdatatype
import pytest

from monitor.lab.dnsserver import DnsRecord, DnsServer
from probes import resolve
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
async def test_fast_path_resolves_as_dnspython_does(host: str) -> None:
    async with DnsServer(RECORDS, ("example.com",)) as server:
        servers = ["127.0.0.1"]
        fast = Resolver(servers, server.port, timeout=2.0, clock=time.perf_counter)
        slow = Resolver(servers, server.port, timeout=2.0, clock=time.perf_counter, fast=False)
        for family in ("ipv4", "ipv6"):
            a = await fast.resolve(host, family)
            b = await slow.resolve(host, family)
            assert dataclasses.replace(a, seconds=0) == dataclasses.replace(b, seconds=0)
        assert fast.reach() == slow.reach()


@pytest.mark.parametrize("host", ["both.example.com", "alias.example.com", "missing.example.com"])
async def test_plain_replies_are_read_without_dnspython_messages(host: str) -> None:
    """The replies of the comparison above are the lean reader's (not dnspython's fallback)."""
    async with DnsServer(RECORDS, ("example.com",)) as server:
        resolver = Resolver(["127.0.0.1"], server.port, timeout=2.0, clock=time.perf_counter)
        wire = b"\0\0" + resolver._wire(host + ".", dns.rdatatype.A)[2:]  # id 0
        reply = await resolve._exchange(wire, ("127.0.0.1", server.port), 0, 2.0)
        read = resolve.read_answer(reply, host + ".", 1, "127.0.0.1")
        if host.startswith("missing"):
            assert read == "NXDOMAIN"
        else:
            assert isinstance(read, resolve.Plain) and read.addresses
            assert read.cname_chain == (("alias.example.com",) if "alias" in host else ())


async def test_fast_path_falls_back_to_the_next_server() -> None:
    """Nothing listens on 127.0.0.2: the fast attempt is refused at once, and the full
    resolver asks the next server first, whose answer is the result."""
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
    """The first server gets the fast attempt (half the 2 s lifetime) and no answer: the full
    resolver starts at the second, which answers within the rest of the lifetime. Asking the
    silent one again first (dnspython's order) would spend the rest of the lifetime on it."""
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
        # The next resolution takes the fast path to the first server again (it may be back).
        await resolver.resolve("v4only.example.com", "ipv4")
        assert len(queries) == 2

"""ICMP and DNS latencies come from the kernel's receive stamp (SO_TIMESTAMPNS), not from when
the event loop got round to reading: once the reply waits in the socket, the loop is blocked
for 300 ms before reading it, and the reported latency stays far below that. Not a timing
test: the blocking is deterministic, and read-time measurement would report at least 300 ms
(the margin left is for a busy machine's late answer, not for our measurement)."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from probes import handler, stamp
from probes.base import (
    ErrorKind,
    Family,
    IcmpSpec,
    ProbeEnv,
    Resolution,
    Target,
)
from probes.resolve import Resolver

BLOCK = 0.3
FAR_BELOW = 0.1
LOOPBACK: dict[Family, str] = {"ipv4": "127.0.0.1", "ipv6": "::1"}


@pytest.fixture
def blocked_after_send(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Block the event loop for BLOCK seconds before the first read of a reply, once it is
    there (the request has left by then), as a loop busy with other jobs would."""
    real: Callable[[socket.socket, int], Awaitable[tuple[bytes, Any, int]]] = stamp.arrival
    blocked: list[float] = []

    async def late(sock: socket.socket, size: int) -> tuple[bytes, Any, int]:
        if not blocked:
            select.select([sock], [], [], 2.0)  # the reply has come (select reads nothing)
            time.sleep(BLOCK)  # the whole loop stops: nothing reads the socket meanwhile
            blocked.append(BLOCK)
        return await real(sock, size)

    monkeypatch.setattr(stamp, "arrival", late)
    # Linux turns arrival stamps on from a work queue once a socket first asks: let it run
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        stamp.stamp_arrivals(sock)
    time.sleep(0.1)
    return blocked


@pytest.fixture
def dns_thread() -> Iterator[dict[Family, int]]:
    """A name server answering every A, AAAA and SOA question from a thread of its own (it
    answers whatever the test's event loop does), on both loopbacks: the port per family."""
    socks: dict[Family, socket.socket] = {
        "ipv4": socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        "ipv6": socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    }
    stop = threading.Event()

    def serve(sock: socket.socket, family: Family) -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            value = {
                dns.rdatatype.A: "127.0.0.1",
                dns.rdatatype.AAAA: "::1",
                dns.rdatatype.SOA: "ns.example. admin.example. 1 7200 900 1209600 300",
            }[question.rdtype]
            response.flags |= dns.flags.AA
            response.answer.append(
                dns.rrset.from_text(question.name, 60, "IN", question.rdtype, value)
            )
            sock.sendto(response.to_wire(), peer)

    threads = []
    for family, sock in socks.items():
        sock.bind((LOOPBACK[family], 0))
        thread = threading.Thread(target=serve, args=(sock, family), daemon=True)
        thread.start()
        threads.append(thread)
    try:
        yield {family: int(sock.getsockname()[1]) for family, sock in socks.items()}
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in socks.values():
            sock.close()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_dns_latency_leaves_out_a_blocked_loop(
    family: Family, dns_thread: dict[Family, int], blocked_after_send: list[float]
) -> None:
    resolver = Resolver(
        [LOOPBACK[family]], dns_thread[family], timeout=2.0, clock=time.perf_counter
    )
    start = time.perf_counter()
    res = await resolver.resolve("host.example", "ipv4")
    assert time.perf_counter() - start >= BLOCK  # the loop was blocked, as meant
    assert blocked_after_send
    assert res.error is None and res.addresses == ("127.0.0.1",)
    assert res.seconds < FAR_BELOW, res.seconds


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_soa_latency_leaves_out_a_blocked_loop(
    family: Family, dns_thread: dict[Family, int], blocked_after_send: list[float]
) -> None:
    """The dns probe of a name-server target: its query phase is the kernel's too."""
    target = Target(
        name="ns",
        service="route53",
        region="",
        host="ns.example",
        port=dns_thread[family],
        zone="example",
        timeout=2.0,
        probes=("dns",),
    )
    resolution = Resolution(family=family, addresses=(LOOPBACK[family],))
    result = await handler.run_probe("dns", target, family, resolution, ProbeEnv())
    assert blocked_after_send
    assert result.success, result.error
    assert result.phases["query"] < FAR_BELOW, result.phases


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_icmp_latency_leaves_out_a_blocked_loop(
    family: Family, blocked_after_send: list[float]
) -> None:
    address = LOOPBACK[family]
    target = Target(
        name="lo", service="lo", region="", host=address, timeout=2.0, icmp=IcmpSpec(count=1)
    )
    resolution = Resolution(family=family, addresses=(address,))
    result = await handler.run_probe("icmp", target, family, resolution, ProbeEnv())
    if result.error is not None and result.error.kind is ErrorKind.ICMP_NOT_PERMITTED:
        pytest.skip("no ICMP socket allowed here (not root, ping_group_range closed)")
    assert blocked_after_send
    assert result.success, result.error
    assert result.duration_seconds < FAR_BELOW, result.duration_seconds

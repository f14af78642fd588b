"""The handler over several addresses and samples, the kernel's connect time, and the
vantage's own judgement from results: fast, on loopback, with real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from monitor.engine.vantage import MIN_JUDGED_TARGETS, ipv6_broken
from probes.base import AddressResult, ProbeEnv, ProbeResult, Resolution, Target
from probes.handler import run_probe
from probes.netutil import connect_seconds


async def listening() -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (bound, never listening: connect is refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def test_every_address_is_dialled_and_one_failure_fails_the_family() -> None:
    server, port = await listening()
    try:
        # 127.0.0.2 and .3 are loopback too, but nothing listens there on this port
        target = Target(name="t", service="s3", region="", host="x.example", port=port)
        res = Resolution(family="ipv4", addresses=("127.0.0.1", "127.0.0.2", "127.0.0.3"))
        r = await run_probe("tcp", target, "ipv4", res, ProbeEnv())
    finally:
        server.close()
        await server.wait_closed()
    assert [(a.address, a.success) for a in r.addresses] == [
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("127.0.0.3", False),
    ]
    assert not r.success and r.address == "127.0.0.1"
    assert r.error is not None and r.error.kind == "connect_refused"
    assert r.error.message == (
        "2 of 3 IPv4 addresses failed: 127.0.0.2 connect_refused, 127.0.0.3 connect_refused"
    )


async def test_max_addresses_bounds_the_dialled_addresses() -> None:
    server, port = await listening()
    try:
        target = Target(
            name="t", service="s3", region="", host="x.example", port=port, max_addresses=1
        )
        res = Resolution(family="ipv4", addresses=("127.0.0.1", "127.0.0.2"))
        r = await run_probe("tcp", target, "ipv4", res, ProbeEnv())
    finally:
        server.close()
        await server.wait_closed()
    assert r.success and [a.address for a in r.addresses] == ["127.0.0.1"]


async def test_samples_give_a_median_and_a_minimum() -> None:
    server, port = await listening()
    try:
        target = Target(name="t", service="s3", region="", host="x.example", port=port)
        res = Resolution(family="ipv4", addresses=("127.0.0.1",))
        r = await run_probe("tcp", target, "ipv4", res, ProbeEnv(samples=3))
        one = await run_probe("tcp", target, "ipv4", res, ProbeEnv(samples=1))
    finally:
        server.close()
        await server.wait_closed()
    assert r.success and r.duration_min_seconds is not None
    assert r.duration_min_seconds <= r.duration_seconds
    assert one.duration_min_seconds is None  # one sample: nothing more to say


async def test_a_failed_sample_fails_the_address() -> None:
    target = Target(name="t", service="s3", region="", host="x.example", port=closed_port())
    res = Resolution(family="ipv4", addresses=("127.0.0.1",))
    r = await run_probe("tcp", target, "ipv4", res, ProbeEnv(samples=3))
    assert not r.success and r.error is not None and r.error.kind == "connect_refused"


async def test_connect_time_comes_from_the_kernel() -> None:
    server, port = await listening()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        # A loop that noticed the connection 10 s late does not make it a 10 s connect.
        assert 0 < connect_seconds(writer.get_extra_info("socket"), 10.0) < 0.1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_connect_time_falls_back_to_the_wall_clock() -> None:
    assert connect_seconds(None, 0.25) == 0.25


def result(target: str, family: str, ok: bool, *, probe: str = "tcp") -> ProbeResult:
    address = "2001:db8::1" if family == "ipv6" else "192.0.2.1"
    return ProbeResult(
        target=target,
        probe=probe,
        family=family,  # type: ignore[arg-type]
        address=address,
        success=ok,
        duration_seconds=0.01,
        started=0.0,
        addresses=(
            AddressResult(
                address=address, success=ok, error=None, duration_seconds=0.01, phases={}
            ),
        ),
    )


def rounds(n: int, *, v6_ok: int = 0, v4_ok: bool = True) -> list[ProbeResult]:
    out = []
    for i in range(n):
        out += [result(f"t{i}", "ipv4", v4_ok), result(f"t{i}", "ipv6", i < v6_ok)]
    return out


@pytest.mark.parametrize(
    ("results", "broken"),
    [
        (rounds(MIN_JUDGED_TARGETS), True),
        (rounds(MIN_JUDGED_TARGETS - 1), False),  # too few to blame the vantage
        (rounds(5, v6_ok=1), False),  # one target works over IPv6: the vantage is fine
        (rounds(5, v4_ok=False), False),  # IPv4 fails too: not an IPv6 judgement
    ],
    ids=["three-fail", "two-fail", "one-works", "ipv4-down"],
)
def test_ipv6_broken_here(results: list[ProbeResult], broken: bool) -> None:
    assert ipv6_broken(results) is broken


def test_ipv6_broken_ignores_targets_whose_aaaa_was_never_dialled() -> None:
    undialled = [dataclasses.replace(r, addresses=()) for r in rounds(3) if r.family == "ipv6"]
    assert not ipv6_broken([*undialled, *(r for r in rounds(3) if r.family == "ipv4")])

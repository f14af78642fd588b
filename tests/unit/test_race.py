"""The race probe's RFC 8305 behaviour, on loopback: real TCP servers (listening, blackholed by a
full accept queue, closed) on ::1 and 127.0.0.x at one port, and a scripted resolver that
answers A and AAAA when the test says, so section 3's timing can be watched. Every race runs
through the handler (`run_once`), as `probe run` and `probe serve` run it. The lab test
(tests/test_race_lab.py) runs the real resolver against the lab."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import pytest

from monitor.lab.ports import SocketSpec, bind_same_port
from monitor.lab.web import BlackholeServer, ClosedPort, LabServer
from probes import race as race_mod
from probes.base import (
    FAMILIES,
    ErrorKind,
    Family,
    ProbeEnv,
    ProbeKind,
    ProbeResult,
    RaceSpec,
    Resolution,
    Resolves,
    Target,
)
from probes.errors import error
from probes.handler import run_once

Role = Literal["listen", "blackhole", "closed"]
CAD = 0.2
"""A little under RFC 8305's 250 ms: quick tests, with room for a busy machine's jitter."""


class Listening(LabServer):
    """Accepts and holds connections (a healthy TCP server)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        async def keep(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self._writers.append(w)

        self._server = await asyncio.start_server(keep, sock=self._sock)

    async def stop(self) -> None:
        if self._server is None:
            self._sock.close()
            return
        self._server.close()
        # The race closes its sockets without waiting for the peer: a connection accepted just
        # now has its callback still to run, a few loop turns on.
        await asyncio.sleep(0.05)
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def servers(roles: Mapping[str, Role]) -> AsyncIterator[int]:
    """One TCP server per address, all on one port number: that port."""
    hosts = list(roles)
    port, socks = bind_same_port([SocketSpec(host=h, kind=socket.SOCK_STREAM) for h in hosts])
    made: list[LabServer] = []
    for host, sock in zip(hosts, socks, strict=True):
        role = roles[host]
        if role == "listen":
            made.append(Listening(sock))
        elif role == "blackhole":
            made.append(BlackholeServer(tcp_sock=sock, udp_sock=None))
        else:
            made.append(ClosedPort(tcp_sock=sock, udp_sock=None))
    try:
        for server in made:
            await server.start()
        yield port
    finally:
        for server in made:
            await server.stop()


class Scripted:
    """A resolver whose answers come after the delays a test chooses."""

    def __init__(
        self, answers: Mapping[Family, tuple[float, tuple[str, ...]]], nat64: bool = False
    ) -> None:
        self.answers = answers
        self.nat64 = nat64
        self.asked: list[tuple[Family, float]] = []

    async def resolve(self, host: str, family: Family) -> Resolution:
        self.asked.append((family, time.perf_counter()))
        delay, addresses = self.answers.get(family, (0.0, ()))
        await asyncio.sleep(delay)
        if not addresses:
            rtype = "AAAA" if family == "ipv6" else "A"
            return Resolution(
                family=family, error=error(ErrorKind.DNS_NO_ADDRESS, f"{host}: no {rtype} record")
            )
        return Resolution(
            family=family,
            addresses=addresses,
            nat64_synthesized=self.nat64 and family == "ipv6",
        )


def target(port: int, *, timeout: float = 2.0, probes: tuple[ProbeKind, ...] = ("race",)) -> Target:
    return Target(
        name="race",
        service="unit",
        region="",
        host="race.example.com",
        port=port,
        probes=probes,
        timeout=timeout,
        race=RaceSpec(resolution_delay=0.05, connection_attempt_delay=CAD),
    )


@dataclasses.dataclass(frozen=True)
class Raced:
    """A race's one result, its details' fields read as its own (`r.winner_family`)."""

    result: ProbeResult

    def __getattr__(self, name: str) -> Any:
        return getattr(self.result.details, name)

    @property
    def error(self) -> Any:
        return self.result.error


async def race(
    t: Target, resolver: Resolves | None, families: Sequence[Family] = FAMILIES
) -> Raced:
    r = await run_once("race", t, families, ProbeEnv(resolver=resolver))
    assert r.probe == "race" and isinstance(r.details, race_mod.RaceDetails)
    # filed under the winner's family (none: the first family selected)
    assert r.family == (r.details.winner_family or families[0])
    assert r.address == r.details.winner_address and r.success is (r.error is None)
    return Raced(r)


async def run(roles: Mapping[str, Role], resolver: Scripted, *, timeout: float = 2.0) -> Raced:
    async with servers(roles) as port:
        return await race(target(port, timeout=timeout), resolver)


def outcomes(r: Raced) -> list[tuple[str, str]]:
    return [(a.address, a.outcome) for a in r.attempts]


async def test_healthy_ipv6_wins_at_once() -> None:
    r = await run(
        {"::1": "listen", "127.0.0.1": "listen"},
        Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.0, ("127.0.0.1",))}),
    )
    assert (r.winner_family, r.winner_address) == ("ipv6", "::1")
    assert r.ipv6_penalty_seconds == 0.0 and r.direct_ipv4_seconds is None
    assert outcomes(r) == [("::1", "connected"), ("127.0.0.1", "not_started")]
    assert r.attempts[1].started_seconds is None
    assert r.connect_seconds is not None and r.connect_seconds < CAD
    assert r.error is None
    assert r.result.family == "ipv6" and r.result.success
    assert r.result.duration_seconds == r.connect_seconds  # no TLS probe listed: no handshake
    assert set(r.result.phases) == {"resolve", "connect"}


async def test_blackholed_ipv6_costs_the_attempt_delay() -> None:
    r = await run(
        {"::1": "blackhole", "127.0.0.1": "listen"},
        Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.0, ("127.0.0.1",))}),
    )
    assert (r.winner_family, r.winner_address) == ("ipv4", "127.0.0.1")
    assert outcomes(r) == [("::1", "cancelled"), ("127.0.0.1", "connected")]
    started = r.attempts[1].started_seconds
    assert started is not None and CAD <= started < 2 * CAD
    assert r.direct_ipv4_seconds is not None and r.direct_ipv4_seconds < CAD
    assert r.ipv6_penalty_seconds is not None
    assert 0.8 * CAD <= r.ipv6_penalty_seconds <= 1.6 * CAD


async def test_a_failed_attempt_starts_the_next_at_once() -> None:
    """Section 5: the next attempt need not wait the delay when the latest one failed."""
    r = await run(
        {"::1": "closed", "127.0.0.1": "listen"},
        Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.0, ("127.0.0.1",))}),
    )
    assert outcomes(r) == [("::1", "failed"), ("127.0.0.1", "connected")]
    assert r.attempts[0].error is not None
    assert r.attempts[0].error.kind is ErrorKind.CONNECT_REFUSED
    started = r.attempts[1].started_seconds
    assert started is not None and started < CAD / 2
    assert r.ipv6_penalty_seconds is not None and r.ipv6_penalty_seconds < CAD / 2


async def test_addresses_alternate_by_family_ipv6_first() -> None:
    """Section 4: ::1, 127.0.0.2, then 127.0.0.3 (no second IPv6 on loopback), each a delay
    after the one before; the third wins."""
    r = await run(
        {"::1": "blackhole", "127.0.0.2": "blackhole", "127.0.0.3": "listen"},
        Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.0, ("127.0.0.2", "127.0.0.3"))}),
    )
    assert outcomes(r) == [
        ("::1", "cancelled"),
        ("127.0.0.2", "cancelled"),
        ("127.0.0.3", "connected"),
    ]
    starts = [a.started_seconds or 0.0 for a in r.attempts]
    assert starts[0] < starts[1] < starts[2]
    assert 2 * CAD <= starts[2] < 3 * CAD


def test_queue_interleaves_many_addresses() -> None:
    q = race_mod._Queue()
    q.add([race_mod._Try(family="ipv4", address=a) for a in ("a1", "a2", "a3")])
    q.add([race_mod._Try(family="ipv6", address=a) for a in ("b1", "b2")])
    assert [t.address for t in q.drain()] == ["b1", "a1", "b2", "a2", "a3"]


async def test_a_answer_waits_the_resolution_delay_for_aaaa() -> None:
    """Section 3: A first, AAAA 20 ms later (within the 50 ms delay): IPv6 is still first."""
    r = await run(
        {"::1": "listen", "127.0.0.1": "listen"},
        Scripted({"ipv6": (0.02, ("::1",)), "ipv4": (0.0, ("127.0.0.1",))}),
    )
    assert r.winner_family == "ipv6"
    assert outcomes(r)[0] == ("::1", "connected")
    assert 0.02 <= r.resolution_seconds < 0.05


async def test_a_late_aaaa_joins_the_race() -> None:
    """Section 3: AAAA later than the resolution delay: IPv4 is dialled first, after waiting
    50 ms; the AAAA then arrives and IPv6 gets the next slot, and wins (IPv4 blackholed)."""
    r = await run(
        {"::1": "listen", "127.0.0.1": "blackhole"},
        Scripted({"ipv6": (0.12, ("::1",)), "ipv4": (0.0, ("127.0.0.1",))}),
    )
    assert 0.05 <= r.resolution_seconds < 0.1
    assert outcomes(r) == [("127.0.0.1", "cancelled"), ("::1", "connected")]
    started = r.attempts[1].started_seconds
    assert started is not None and CAD <= started < 2 * CAD
    assert r.winner_family == "ipv6" and r.ipv6_penalty_seconds == 0.0


async def test_aaaa_first_starts_without_waiting_for_a() -> None:
    resolver = Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.5, ("127.0.0.1",))})
    t0 = time.perf_counter()
    r = await run({"::1": "listen", "127.0.0.1": "listen"}, resolver)
    assert r.winner_family == "ipv6" and r.resolution_seconds < 0.05
    assert time.perf_counter() - t0 < 0.4  # the A lookup was not waited for
    assert [f for f, _ in resolver.asked] == ["ipv6", "ipv4"]  # AAAA asked first
    assert outcomes(r) == [("::1", "connected")]  # the A never came in time to be listed


async def test_nothing_connects() -> None:
    r = await run(
        {"::1": "closed", "127.0.0.1": "closed"},
        Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.0, ("127.0.0.1",))}),
    )
    assert r.winner_family is None and r.winner_address is None
    assert r.connect_seconds is None and r.ipv6_penalty_seconds is None
    assert outcomes(r) == [("::1", "failed"), ("127.0.0.1", "failed")]
    assert r.error is not None and r.error.kind is ErrorKind.CONNECT_REFUSED
    assert r.error.message.startswith("every address failed: ::1 connect_refused")


async def test_the_deadline_ends_the_race() -> None:
    r = await run(
        {"::1": "blackhole", "127.0.0.2": "blackhole", "127.0.0.3": "blackhole"},
        Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.0, ("127.0.0.2", "127.0.0.3"))}),
        timeout=1.5 * CAD,
    )
    assert r.winner_family is None
    assert r.error is not None and r.error.kind is ErrorKind.TIMEOUT
    assert outcomes(r) == [
        ("::1", "cancelled"),
        ("127.0.0.2", "cancelled"),
        ("127.0.0.3", "not_started"),
    ]


async def test_no_address_is_the_lookup_error() -> None:
    r = await race(target(9), Scripted({}))
    assert r.winner_family is None and r.attempts == ()
    assert r.error is not None and r.error.kind is ErrorKind.DNS_NO_ADDRESS


async def test_nat64_aaaa_is_not_raced() -> None:
    r = await run(
        {"::1": "listen", "127.0.0.1": "listen"},
        Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.0, ("127.0.0.1",))}, nat64=True),
    )
    assert r.winner_family == "ipv4" and outcomes(r) == [("127.0.0.1", "connected")]


async def test_one_family_only() -> None:
    async with servers({"::1": "listen", "127.0.0.1": "listen"}) as port:
        r = await race(
            target(port),
            Scripted({"ipv6": (0.0, ("::1",)), "ipv4": (0.0, ("127.0.0.1",))}),
            families=("ipv4",),
        )
    assert outcomes(r) == [("127.0.0.1", "connected")]


async def test_a_crash_is_a_result(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        async def resolve(self, host: str, family: Family) -> Resolution:
            raise RuntimeError("resolver bug")

    r = await race(target(9), Broken())
    assert r.winner_family is None
    assert r.error is not None and r.error.kind is ErrorKind.INTERNAL_ERROR
    assert r.error.message == "RuntimeError: resolver bug"
    assert "resolution crashed in the race for race" in caplog.text


async def test_a_bug_in_the_race_is_the_handlers_crash_boundary(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race has no crash boundary of its own: probes/handler.py's turns a bug into a
    failed result, as for every kind."""

    async def broken(self: Any) -> Any:
        raise RuntimeError("race bug")

    monkeypatch.setattr(race_mod._Race, "run", broken)
    r = await run_once("race", target(9), FAMILIES, ProbeEnv(resolver=Scripted({})))
    assert (r.probe, r.family, r.success, r.details) == ("race", "ipv4", False, None)
    assert r.error is not None and r.error.kind is ErrorKind.INTERNAL_ERROR
    assert (r.error.message, r.error.phase) == ("RuntimeError: race bug", "connect")
    assert "probe race crashed on race" in caplog.text


async def test_without_a_resolver_the_race_says_so() -> None:
    r = await run_once("race", target(9), FAMILIES, ProbeEnv())
    assert r.error is not None and r.error.kind is ErrorKind.CLIENT_CONFIG

"""The IPv6 path-MTU black-hole retry of the tls and http2 probes, and the echoes behind the icmp
probe's `sizes`, on loopback with real peers. A gate in front of the lab's real TLS/HTTP server
plays the broken path: a connection whose client announced a full-size MSS gets its TCP
handshake and then nothing (the large packets that would follow are what a black hole eats);
one announcing MSS 1220 or less is passed through. The real path, with nftables, is in
tests/test_pmtu_netns.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from monitor.lab.pki import IssuedCert, LabPki
from monitor.lab.web import WebServer
from probes import echo, handler, icmp, pmtu
from probes.base import (
    ErrorKind,
    Family,
    IcmpSpec,
    ProbeEnv,
    ProbeKind,
    ProbeRequest,
    ProbeResult,
    Resolution,
    Target,
)
from probes.details import HttpExchange, IcmpEcho, TlsHandshake

LOOPBACK: dict[Family, str] = {"ipv4": "127.0.0.1", "ipv6": "::1"}
HOST = "pmtu.example.com"
TIMEOUT = 1.2
SMALL = 1300
"""The gate lets through connections whose segments fit in this (the retry's 1220 does)."""


@dataclass
class Gate:
    """A TCP relay on one loopback address: it stalls full-size connections, relays the rest."""

    port: int = 0
    seen: list[int] = field(default_factory=list)
    """The MSS of each accepted connection, as the kernel settled it."""
    stall_all: bool = False
    stall_first: bool = False
    """Stall only the first connection, whatever its MSS: a server slow to answer once."""
    reset_small: bool = False
    """Reset the small connections instead of relaying them."""


@contextlib.asynccontextmanager
async def gate(
    host: str,
    upstream: int,
    *,
    stall_all: bool = False,
    stall_first: bool = False,
    reset_small: bool = False,
) -> AsyncIterator[Gate]:
    g = Gate(stall_all=stall_all, stall_first=stall_first, reset_small=reset_small)
    handlers: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        mss = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        g.seen.append(mss)
        up_writer: asyncio.StreamWriter | None = None
        try:
            stall = len(g.seen) == 1 if g.stall_first else mss > SMALL
            if g.stall_all or stall:
                await reader.read()  # the handshake is done; what follows never arrives
                return
            if g.reset_small:
                writer.transport.abort()  # unread bytes pending: the kernel sends RST
                return
            up_reader, up_writer = await asyncio.open_connection(host, upstream)
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the test is over: a relay may still be going (the client does not linger)
        finally:
            writer.close()
            if up_writer is not None:
                up_writer.close()

    server = await asyncio.start_server(handle, host, 0)
    g.port = int(server.sockets[0].getsockname()[1])
    try:
        yield g
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def loopback_mtu() -> int:
    with open("/sys/class/net/lo/mtu", encoding="ascii") as f:
        return int(f.read())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return LabPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cert(pki: LabPki) -> IssuedCert:
    return pki.issue("pmtu", [HOST])


@pytest.fixture
def env(pki: LabPki) -> ProbeEnv:
    return ProbeEnv(ssl_cafile=str(pki.ca_file))


def target(kind: ProbeKind, port: int, *, sizes: tuple[int, ...] = ()) -> Target:
    return Target(
        name="pmtu",
        service="unit",
        region="",
        host=HOST,
        port=port,
        probes=(kind,),
        timeout=TIMEOUT,
        icmp=IcmpSpec(sizes=sizes),
    )


async def run(kind: ProbeKind, family: Family, port: int, env: ProbeEnv) -> ProbeResult:
    resolution = Resolution(family=family, addresses=(LOOPBACK[family],))
    return await handler.run_probe(kind, target(kind, port), family, resolution, env)


@pytest.mark.parametrize("kind", ["tls", "http2"])
async def test_ipv6_stall_that_mss_1220_fixes_is_pmtu_blackhole(
    kind: ProbeKind, cert: IssuedCert, env: ProbeEnv
) -> None:
    async with WebServer.bind("::1", cert, h3=False) as web, gate("::1", web.port) as g:
        result = await run(kind, "ipv6", g.port, env)
    assert result.error is not None and result.error.kind is ErrorKind.PMTU_BLACKHOLE, result.error
    assert not result.success
    # The message names the MSS that worked and the one announced before (loopback's 64 KiB
    # MTU less the IPv6 and TCP headers).
    default = re.search(
        r"announcing MSS 1220, while MSS (\d+) made no progress twice", result.error.message
    )
    assert default is not None, result.error.message
    assert int(default.group(1)) == loopback_mtu() - 60
    # One stalled full-size connection, the retry, whose segments fit in 1280 bytes, and a
    # full-size confirmation that stalled too.
    assert len(g.seen) == 3 and g.seen[0] > SMALL and g.seen[1] <= pmtu.PMTU_MSS
    assert g.seen[2] > SMALL
    # The confirmation is cut just before the deadline.
    assert TIMEOUT / 2 <= result.duration_seconds < TIMEOUT
    # What the retry learnt is kept: the handshake verified, the response came.
    if kind == "tls":
        assert isinstance(result.details, TlsHandshake) and result.details.verified
    else:
        assert isinstance(result.details, HttpExchange) and result.details.status == 200
    assert {"connect", "handshake"} <= set(result.phases)


@pytest.mark.parametrize("kind", ["tls", "http2"])
async def test_a_server_slow_to_answer_once_is_no_black_hole(
    kind: ProbeKind, cert: IssuedCert, env: ProbeEnv
) -> None:
    """The first connection stalls whatever its MSS (a busy or CPU-starved server), later ones
    are answered: the retry works, and so does the full-size confirmation. Before the
    confirmation this read as pmtu_blackhole on a loaded machine."""
    async with (
        WebServer.bind("::1", cert, h3=False) as web,
        gate("::1", web.port, stall_first=True) as g,
    ):
        result = await run(kind, "ipv6", g.port, env)
    assert result.success and result.error is None, result.error
    assert len(g.seen) == 3 and g.seen[1] <= pmtu.PMTU_MSS < SMALL < g.seen[2]


async def test_ipv4_is_not_retried(cert: IssuedCert, env: ProbeEnv) -> None:
    async with WebServer.bind("127.0.0.1", cert, h3=False) as web, gate("127.0.0.1", web.port) as g:
        result = await run("tls", "ipv4", g.port, env)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT, result.error
    assert len(g.seen) == 1


@pytest.mark.parametrize("kind", ["tls", "http2"])
async def test_a_stall_the_retry_does_not_fix_stays_timeout(
    kind: ProbeKind, cert: IssuedCert, env: ProbeEnv
) -> None:
    async with (
        WebServer.bind("::1", cert, h3=False) as web,
        gate("::1", web.port, stall_all=True) as g,
    ):
        result = await run(kind, "ipv6", g.port, env)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT, result.error
    assert len(g.seen) == 2  # it was retried, and that stalled too
    assert result.duration_seconds < TIMEOUT + 0.5


async def test_the_retry_failing_otherwise_is_timeout_and_says_how(
    cert: IssuedCert, env: ProbeEnv
) -> None:
    """The retry reset by the peer: the kind stays timeout, as before the check, and the
    message tells what the retry met."""
    async with (
        WebServer.bind("::1", cert, h3=False) as web,
        gate("::1", web.port, reset_small=True) as g,
    ):
        result = await run("tls", "ipv6", g.port, env)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT, result.error
    assert "a retry announcing MSS 1220 failed too (" in result.error.message
    assert len(g.seen) == 2


async def test_echo_sizes_on_loopback() -> None:
    """Loopback's MTU is 64 KiB: every size comes back. Without an ICMP socket allowed, the
    echoes raise (the icmp probe then reports the ping's own icmp_not_permitted)."""
    req = ProbeRequest(
        target=target("icmp", 0), family="ipv6", address="::1", timeout=1.0, env=ProbeEnv()
    )
    try:
        got = await pmtu.echo_sizes(req, [1500, 1280, 9000], budget=1.0, rounds=3, spacing=0.05)
    except PermissionError:
        assert not icmp._has_root()
        return
    assert got == pmtu.SizeEchoes(answered=(1280, 1500, 9000), unanswered=())


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_icmp_probe_reports_the_path_mtu(family: Family) -> None:
    resolution = Resolution(family=family, addresses=(LOOPBACK[family],))
    t = target("icmp", 0, sizes=(1280, 1500))
    result = await handler.run_probe("icmp", t, family, resolution, ProbeEnv())
    if result.error is not None and result.error.kind is ErrorKind.ICMP_NOT_PERMITTED:
        return  # no ICMP socket here: the sizes could not be sent either
    assert result.success, result.error
    assert isinstance(result.details, IcmpEcho)
    assert result.details.path_mtu_bytes == 1500
    assert result.details.sizes_answered == (1280, 1500)
    assert result.details.sizes_unanswered == ()


def test_echo_request_is_the_size_asked() -> None:
    for family, overhead in echo.OVERHEAD.items():
        packet = echo.echo_request(family, 7, 1, 1280)
        assert len(packet) + overhead - 8 == 1280  # the ICMP header is part of both
    v4 = echo.echo_request("ipv4", 7, 1, 100)
    assert echo.checksum(v4) == 0  # a valid ICMPv4 checksum sums to zero


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[asyncio.StreamWriter, asyncio.StreamWriter]]:
    """A real loopback connection: (our end, the peer's end)."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result(w)

    server = await asyncio.start_server(handle, "::1", 0)
    _reader, ours = await asyncio.open_connection("::1", server.sockets[0].getsockname()[1])
    theirs = await asyncio.wait_for(accepted, 5)
    try:
        yield ours, theirs
    finally:
        for w in (ours, theirs):
            w.close()
        server.close()
        await server.wait_closed()


async def test_cut_if_stalled_cuts_a_silent_connection() -> None:
    async with tcp_pair() as (ours, _theirs):
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with pmtu.cut_if_stalled(ours.get_extra_info("socket"), 0.1) as cut:
                await asyncio.sleep(5)
        assert cut.expired() and 0.1 <= time.perf_counter() - t0 < 1.0


async def test_cut_if_stalled_waits_while_bytes_wait_unread() -> None:
    """The peer's bytes are in the kernel, unread: this loop is behind, not the path."""
    async with tcp_pair() as (ours, theirs):
        assert isinstance(ours.transport, asyncio.Transport)
        ours.transport.pause_reading()  # as a loop too busy to read them
        theirs.write(b"x" * 100)
        await theirs.drain()
        await asyncio.sleep(0.05)
        sock = ours.get_extra_info("socket")
        assert pmtu.unread_bytes(sock) == 100
        async with pmtu.cut_if_stalled(sock, 0.05) as cut:
            await asyncio.sleep(0.3)
        assert not cut.expired()


async def test_a_loop_blocked_past_the_cut_is_no_black_hole(
    cert: IssuedCert, env: ProbeEnv
) -> None:
    """The event loop (server and client alike) is blocked from before the cut to after it;
    the check then runs late and waits, the handshake completes: success, not pmtu_blackhole."""
    async with WebServer.bind("::1", cert, h3=False) as web:
        asyncio.get_running_loop().call_later(0.02, time.sleep, TIMEOUT / 2 + 0.2)
        result = await run("tls", "ipv6", web.port, env)
    assert result.success, result.error

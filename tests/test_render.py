"""Rendering off the loop (monitor/web/render.py, monitor/serve/exporter.py `Exposition`), through
a real aiohttp server on 127.0.0.1 and a real client: the fast exposition is byte for byte what
prometheus_client writes, concurrent scrapes share one render, a body is never older than the
cache's age, gzip round-trips, /healthz and /readyz are never cached, and the loop keeps
answering while a render is stuck. No timing assertions: renders are held by events."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import platform
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from isal import isal_zlib
from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder

from monitor import gz
from monitor.engine.parity import Thresholds, Verdict, judge
from monitor.gz import Deflated
from monitor.serve.exporter import Exposition, SnapshotCollector, make_registry
from monitor.serve.state import Snapshot, Store
from monitor.web import render
from monitor.web.render import IDENTITY_CHUNK, RenderCache, accepts_gzip
from monitor.web.server import RENDER_CACHE, make_app
from probes.base import (
    AddressResult,
    ErrorKind,
    Family,
    ProbeError,
    ProbeKind,
    ProbeResult,
    RaceResult,
    Target,
)
from probes.details import (
    Certificate,
    Details,
    DnsAnswer,
    HttpExchange,
    IcmpEcho,
    QuicExchange,
    TcpConnect,
    TlsHandshake,
)
from probes.ipranges import Attribution

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
ACCEPTS = (
    "",
    "text/plain;version=0.0.4",
    OPENMETRICS,
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    # Escapings that rename metrics: prometheus_client writes these itself.
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
)
CERT = Certificate(
    subject="CN=x",
    issuer="CN=ca",
    sans=("x",),
    not_after="2030-03-17T17:46:40Z",
    not_after_timestamp=1_900_000_000.0,
    fingerprint_sha256="ab" * 32,
    serial="1f",
)
AWS = Attribution(prefix="p", region="us-east-1", network_border_group="us-east-1", services=())


def result(
    target: str,
    probe: ProbeKind,
    family: Family,
    details: Details | None,
    *,
    duration: float = 0.0123,
    error: ProbeError | None = None,
    **kw: object,
) -> ProbeResult:
    return ProbeResult(
        target=target,
        probe=probe,
        family=family,
        address="::1" if family == "ipv6" else "127.0.0.1",
        success=error is None,
        duration_seconds=duration,
        started=1_700_000_000.25,
        phases={"resolve": 0.001, "connect": duration},
        error=error,
        details=details,
        **kw,  # type: ignore[arg-type]
    )


def details_for(probe: ProbeKind, family: Family) -> Details:
    if probe == "dns":
        return DnsAnswer(rcode="NOERROR", records=("::1",) if family == "ipv6" else ("a", "b"))
    if probe == "tls":
        return TlsHandshake(verified=True, tls_version="TLSv1.3", certificate=CERT)
    if probe == "http2":
        return HttpExchange(
            http_version="2",
            status=200 if family == "ipv4" else 503,
            tls_version="TLSv1.3",
            alpn="h2",
            alt_svc=None,
            server=None,
            body_bytes=0,
        )
    if probe == "http3":
        return QuicExchange(
            http_version="3", status=204, alpn="h3", alt_svc=None, server=None, body_bytes=0
        )
    if probe == "icmp":
        mtu = 1500 if family == "ipv4" else None
        return IcmpEcho(
            sent=3,
            received=3,
            loss_ratio=0.0,
            rtt_min_seconds=0.001,
            rtt_avg_seconds=0.002,
            rtt_max_seconds=0.003,
            path_mtu_bytes=mtu,
        )
    return TcpConnect(source_address=None)


def rich_store(targets: int = 4) -> Store:
    """Every kind of series the exposition has: details of every probe kind, errors, skipped
    results, addresses, AWS attribution, races, no region, and label values to escape."""
    store = Store(vantage='v"ant\\age', site="site-1")
    kinds: tuple[ProbeKind, ...] = ("dns", "icmp", "tcp", "tls", "http2", "http3", "race")
    names = [f"t-{i:03d}" for i in range(targets)] + ['odd "name"\\\n', "none-region"]
    all_targets = {
        n: Target(
            name=n,
            service="ec2",
            region="" if n == "none-region" else "eu-west-1",
            host="h.example.com",
            probes=kinds,
        )
        for n in names
    }
    store.set_targets(all_targets)
    for i, t in enumerate(all_targets.values()):
        for probe in kinds:
            if probe == "race":
                store.record_race(
                    RaceResult(
                        target=t.name,
                        started=1_700_000_000.0,
                        winner_family="ipv6" if i % 2 else "ipv4",
                        winner_address="::1",
                        connect_seconds=0.002,
                        ipv6_penalty_seconds=0.0 if i % 2 else 0.25,
                        attempts=(),
                    )
                )
                continue
            v4 = result(
                t.name,
                probe,
                "ipv4",
                details_for(probe, "ipv4"),
                aws=AWS,
                addresses=(
                    AddressResult(
                        address="127.0.0.1",
                        success=True,
                        error=None,
                        duration_seconds=0.01,
                        phases={},
                    ),
                    AddressResult(
                        address="127.0.0.2",
                        success=False,
                        error=None,
                        duration_seconds=0.01,
                        phases={},
                    ),
                ),
            )
            if i == 1 and probe == "tcp":
                v6 = result(t.name, probe, "ipv6", None, skipped="no_address")
            elif i % 3 == 2:
                err = ProbeError(kind=ErrorKind.TIMEOUT, message='peer said "no"')
                v6 = result(t.name, probe, "ipv6", details_for(probe, "ipv6"), error=err)
            else:
                v6 = result(t.name, probe, "ipv6", details_for(probe, "ipv6"), duration=12.5)
            for _ in range(i + 1):
                store.record([v4, v6], judge(t, probe, v4, v6, thresholds=Thresholds()))
    store.lag.observe(0.002)
    store.job_failures["hung"] += 2
    store.skipped[("t-000", "tls")] = 3
    store.ip_ranges_sync = 1_700_000_000.0
    return store


def expose(exposition: Exposition, snap: Snapshot, accept: str) -> str:
    """The exposition's body as the render thread makes it (a gzip member, its kept pieces
    placed as they are), decompressed and checked (CRC-32, length) by the gzip module."""
    body, size, _ = render._compress(lambda s: exposition.render(s, accept), snap, time.monotonic)
    text = gzip.decompress(body)
    assert len(text) == size
    return text.decode()


def reference(snap: Snapshot, accept: str) -> str:
    encoder, _ = choose_encoder(accept)
    return encoder(SnapshotCollector(snap)).decode()


@pytest.mark.parametrize("accept", ACCEPTS)
def test_exposition_is_byte_for_byte_prometheus_client(accept: str) -> None:
    store = rich_store()
    exposition = Exposition()
    for _ in range(2):  # the second render reuses the label text of the first
        snap = store.snapshot()
        assert expose(exposition, snap, accept) == reference(snap, accept)
        t = store.targets["t-001"]
        v4 = result(t.name, "tcp", "ipv4", TcpConnect(source_address=None), duration=0.5)
        v6 = result(t.name, "tcp", "ipv6", TcpConnect(source_address=None), duration=0.25)
        store.record([v4, v6], judge(t, "tcp", v4, v6, thresholds=Thresholds()))
    # A reload that moves a target to another region: its label text is built afresh.
    moved = {
        **store.targets,
        "t-002": Target(
            name="t-002", service="s3", region="ap-south-1", host="h.example.com", probes=("tcp",)
        ),
    }
    store.set_targets(moved)
    snap = store.snapshot()
    text = expose(exposition, snap, accept)
    assert text == reference(snap, accept)
    assert 'region="ap-south-1"' in text or "ap_south_1" in text or "ap__south__1" in text


def test_kept_text_follows_every_change_between_renders() -> None:
    """The exposition keeps each job's text between renders: what it writes must still be
    prometheus_client's after a render with no change, a verdict changed alone, an error
    counted alone, a target removed, and the vantage renamed."""
    store = rich_store()
    exposition = Exposition()
    first = expose(exposition, store.snapshot(), "")
    snap = store.snapshot()
    assert expose(exposition, snap, "") == first == reference(snap, "")
    # A verdict changed alone (results and histograms the same objects).
    (name, probe), par = next(iter(store.parity.items()))
    other = Verdict.OK if par.verdict is Verdict.IPV6_SLOWER else Verdict.IPV6_SLOWER
    store.parity[(name, probe)] = dataclasses.replace(par, verdict=other)
    snap = store.snapshot()
    assert expose(exposition, snap, "") == reference(snap, "")
    # An error counted alone.
    store.errors[("t-000", "tcp", "ipv6", "timeout")] += 1
    snap = store.snapshot()
    assert expose(exposition, snap, "") == reference(snap, "")
    # A target removed, then the vantage renamed.
    store.set_targets({n: t for n, t in store.targets.items() if n != "t-002"})
    snap = store.snapshot()
    text = expose(exposition, snap, "")
    assert text == reference(snap, "") and 'target="t-002"' not in text
    store.vantage = "renamed"
    snap = store.snapshot()
    text = expose(exposition, snap, "")
    assert text == reference(snap, "") and 'vantage="renamed"' in text


def test_a_first_result_rewrites_only_the_block_it_falls_in() -> None:
    """Blocks end where a row's key says, not at fixed positions: jobs that get their first
    result in the middle of the schedule order (a vantage's first interval, a target added)
    leave every other block as it was, and the body is still prometheus_client's."""
    targets = {
        name: Target(name=name, service="s3", region="eu-west-1", host="h.example.com")
        for name in (f"t-{i:04d}" for i in range(1000))
    }
    store = Store(vantage="v")
    store.set_targets(targets)

    def run(name: str) -> None:
        v4 = result(name, "tcp", "ipv4", TcpConnect(source_address=None), duration=0.5)
        v6 = result(name, "tcp", "ipv6", TcpConnect(source_address=None), duration=0.25)
        store.record([v4, v6], judge(targets[name], "tcp", v4, v6, thresholds=Thresholds()))

    names = sorted(targets)
    for name in names[::2]:
        run(name)
    exposition = Exposition()
    expose(exposition, store.snapshot(), "")
    jobs, pairs = dict(exposition._job_blocks), dict(exposition._parity_blocks)
    assert len(jobs) > 20 and len(pairs) > 10
    newcomers = names[1::200]  # 5 jobs, spread over the order
    for name in newcomers:
        run(name)
    snap = store.snapshot()
    assert expose(exposition, snap, "") == reference(snap, "")
    for before, after in ((jobs, exposition._job_blocks), (pairs, exposition._parity_blocks)):
        rewritten = [k for k, block in after.items() if before.get(k) is not block]
        # A row lands in one block, or ends it and makes two.
        assert 0 < len(rewritten) <= 2 * len(newcomers), (len(rewritten), len(after))


def test_the_live_registry_and_the_exposition_agree() -> None:
    store = rich_store(1)
    assert expose(Exposition(), store.snapshot(), "").encode() == generate_latest(
        make_registry(store)
    )


def test_a_snapshot_does_not_move_when_the_store_does() -> None:
    store = rich_store(1)
    snap = store.snapshot()
    before = reference(snap, "")
    t = store.targets["t-000"]
    v4 = result(t.name, "tcp", "ipv4", None, duration=0.75)
    v6 = result(t.name, "tcp", "ipv6", None, duration=0.75)
    store.record([v4, v6], judge(t, "tcp", v4, v6, thresholds=Thresholds()))
    store.lag.observe(5.0)
    store.set_targets({})
    assert reference(snap, "") == before
    assert reference(store.snapshot(), "") != before


@pytest.mark.parametrize(
    ("header", "takes"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("br;q=1.0, GZIP", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=nonsense", False),
        ("identity", False),
        ("", False),
        ("deflate, br", False),
    ],
)
def test_accepts_gzip(header: str, takes: bool) -> None:
    assert accepts_gzip(header) is takes


class Gated(Exposition):
    """The real exposition, held in the render thread until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.go = threading.Event()
        self.calls = 0
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def render(self, snap: Snapshot, accept: str) -> Iterator[str | Deflated]:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.started.set()
            assert self.go.wait(30), "the test never let the render go"
            yield from super().render(snap, accept)
        finally:
            with self._lock:
                self.active -= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Served = Callable[..., Awaitable[tuple[str, aiohttp.ClientSession, TestServer]]]


@pytest.fixture
async def serve() -> AsyncIterator[Served]:
    """make_app on 127.0.0.1 (kernel port) with a real client session; closed after."""
    opened: list[tuple[TestServer, aiohttp.ClientSession]] = []

    async def start(
        store: Store, exposition: Exposition, **kw: object
    ) -> tuple[str, aiohttp.ClientSession, TestServer]:
        server = TestServer(make_app(store, exposition, **kw), host="127.0.0.1", port=0)  # type: ignore[arg-type]
        await server.start_server()
        session = aiohttp.ClientSession(auto_decompress=False)
        opened.append((server, session))
        return f"http://127.0.0.1:{server.port}", session, server

    yield start
    for server, session in opened:
        await session.close()
        await server.close()


async def wait_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 30)


async def test_concurrent_scrapes_share_one_render(serve: Served) -> None:
    store = rich_store()
    exposition = Gated()
    base, session, server = await serve(store, exposition)

    async def scrape() -> bytes:
        async with session.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.status == 200
            assert r.headers["Content-Encoding"] == "gzip"
            return await r.read()

    first = asyncio.ensure_future(scrape())
    await wait_for(exposition.started)
    others = [asyncio.ensure_future(scrape()) for _ in range(7)]
    await asyncio.sleep(0.2)  # let the others arrive while the render is held
    exposition.go.set()
    bodies = await asyncio.gather(first, *others)
    assert exposition.calls == 1
    assert server.app[RENDER_CACHE].renders == 1
    assert len(set(bodies)) == 1
    assert gzip.decompress(bodies[0]).decode() == reference(store.snapshot(), "")


async def test_one_render_at_a_time_across_variants(serve: Served) -> None:
    exposition = Gated()
    base, session, server = await serve(rich_store(), exposition)
    text = asyncio.ensure_future(session.get(f"{base}/metrics"))
    await wait_for(exposition.started)
    om = asyncio.ensure_future(session.get(f"{base}/metrics", headers={"Accept": OPENMETRICS}))
    page = asyncio.ensure_future(session.get(f"{base}/api/v1/results"))
    await asyncio.sleep(0.2)
    assert server.app[RENDER_CACHE].renders == 1  # the others wait for the one in the thread
    exposition.go.set()
    for response in await asyncio.gather(text, om, page):
        assert response.status == 200
        response.release()
    assert exposition.calls == 2
    assert exposition.most_active == 1
    assert server.app[RENDER_CACHE].renders == 3


def record_tcp(store: Store, name: str, duration: float) -> None:
    t = store.targets[name]
    v4 = result(t.name, "tcp", "ipv4", None, duration=duration)
    v6 = result(t.name, "tcp", "ipv6", None, duration=duration)
    store.record([v4, v6], judge(t, "tcp", v4, v6, thresholds=Thresholds()))


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for `condition`, failing after `within` seconds (a bound, not a timing check)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_a_warm_key_renders_between_requests_and_goes_cold() -> None:
    """A key asked for warm is rendered without requests (no body made: `renders` counts
    bodies) until `warm_for` after its last request; the exposition's body after warm renders
    is still prometheus_client's; a key not asked warm is rendered only when asked."""
    store = rich_store(1)
    exposition = Exposition()

    def render(snap: Snapshot) -> Iterator[str | Deflated]:
        return exposition.render(snap, "")

    cache = RenderCache(store, max_age=0.01, warm_every=0.02, warm_for=0.3)
    try:
        await cache.get("/metrics", render, warm=True)
        record_tcp(store, "t-000", 0.875)
        await until(lambda: cache.warmed >= 2)
        record_tcp(store, "t-000", 0.5)
        await until(lambda: cache.warmed >= 4)
        assert cache.renders == 1
        await asyncio.sleep(0.02)  # past max_age
        body = await cache.get("/metrics", render, warm=True)
        snap = store.snapshot()
        assert gzip.decompress(body.gzip).decode() == reference(snap, "")
        warmer = cache._warmer
        assert warmer is not None
        await until(warmer.done)  # cold: warm_for after the last request
        warmed = cache.warmed
        await asyncio.sleep(0.1)
        assert cache.warmed == warmed
        await cache.get("/", lambda s: ["page"])
        await asyncio.sleep(0.1)
        assert cache.warmed == warmed and cache._warmer is warmer
    finally:
        cache.close()


async def test_a_body_is_at_most_max_age_old() -> None:
    store = rich_store(1)
    clock = Clock()
    cache = RenderCache(store, max_age=1.0, clock=clock)
    exposition = Exposition()

    def render(snap: Snapshot) -> Iterator[str | Deflated]:
        return exposition.render(snap, "")

    try:
        before = await cache.get("/metrics", render)
        record_tcp(store, "t-000", 0.875)
        clock.now += 1.0
        assert await cache.get("/metrics", render) is before  # one second old: still shared
        assert cache.renders == 1
        clock.now += 0.001
        after = await cache.get("/metrics", render)
        assert cache.renders == 2
        text = gzip.decompress(after.gzip).decode()
        assert text != gzip.decompress(before.gzip).decode()
        assert "} 0.875\n" in text
        assert text == reference(store.snapshot(), "")
        assert after.size == len(text.encode())
    finally:
        cache.close()


async def test_a_client_asking_again_gets_the_next_body(serve: Served) -> None:
    """A client scraping in a loop gets one body per render: the same address asking again
    while its body is still shared waits for the next render."""
    store = rich_store(1)
    clock = Clock()  # never moves: only the wait of a repeat can bring a new render
    base, session, server = await serve(store, Exposition(), clock=clock, max_age=0.2)
    cache = server.app[RENDER_CACHE]

    async def metrics() -> str:
        async with session.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as r:
            assert r.status == 200
            return (await r.read()).decode()

    before = await metrics()
    record_tcp(store, "t-000", 0.875)
    after = await metrics()
    assert cache.renders == 2
    assert "} 0.875\n" in after and "} 0.875\n" not in before
    assert after == reference(store.snapshot(), "")
    # Another client (no address: the cache's own callers) still shares the fresh body.
    shared = await cache.get(f"/metrics {Exposition().content_type('')}", lambda _: ["x"])
    assert gzip.decompress(shared.gzip).decode() == after
    assert cache.renders == 2


def test_bodies_are_gzipped_with_isal_where_it_has_wheels() -> None:
    """pyproject.toml installs isal on these machines: a missing install falls back silently."""
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        assert gz.deflate is isal_zlib
    else:
        assert gz.deflate is zlib


@pytest.mark.parametrize("deflate", ["isal", "zlib"])
async def test_gzip_round_trips_and_identity_streams_large_bodies(
    serve: Served, deflate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ISA-L's deflate (the dependency, where it has wheels) and zlib's (elsewhere)."""
    module = isal_zlib if deflate == "isal" else zlib
    monkeypatch.setattr(gz, "deflate", module)
    store = rich_store(150)  # several IDENTITY_CHUNKs of text
    base, session, _ = await serve(store, Exposition())
    async with session.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Vary"] == "Accept-Encoding"
        zipped = await r.read()
    async with session.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as r:
        assert "Content-Encoding" not in r.headers
        assert r.headers["Vary"] == "Accept-Encoding"
        plain = await r.read()
        assert int(r.headers["Content-Length"]) == len(plain)
    assert len(plain) > 2 * IDENTITY_CHUNK
    assert len(zipped) < len(plain) // 10
    assert gzip.decompress(zipped) == plain
    assert plain.decode() == reference(store.snapshot(), "")
    assert gz.deflate is module
    for path, kind in (("/api/v1/results", "application/json"), ("/", "text/html")):
        async with session.get(f"{base}{path}", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.status == 200
            assert r.content_type == kind
            assert r.headers["Content-Encoding"] == "gzip"
            assert b"t-149" in gzip.decompress(await r.read())


async def test_health_answers_while_a_render_is_stuck_and_is_never_cached(serve: Served) -> None:
    store = Store(vantage="v")
    exposition = Gated()
    base, session, _ = await serve(store, exposition, max_age=3600.0)
    stuck = asyncio.ensure_future(
        session.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"})
    )
    await wait_for(exposition.started)
    # The render thread is held: the loop still answers, and /readyz follows the store.
    async with session.get(f"{base}/healthz") as r:
        assert (r.status, await r.text()) == (200, "ok\n")
    async with session.get(f"{base}/readyz") as r:
        assert r.status == 503
    t = Target(name="t", service="ec2", region="", host="h.example.com", probes=("tcp",))
    store.set_targets({t.name: t})
    v4 = result("t", "tcp", "ipv4", None)
    v6 = result("t", "tcp", "ipv6", None)
    store.record([v4, v6], judge(t, "tcp", v4, v6, thresholds=Thresholds()))
    async with session.get(f"{base}/readyz") as r:
        assert (r.status, await r.text()) == (200, "ready\n")
    exposition.go.set()
    response = await stuck
    assert response.status == 200
    body = (await response.read()).decode()
    assert "dualstack_probe_success{" not in body  # the snapshot of before the results
    store.offline = "no DNS server answered"
    async with session.get(f"{base}/readyz") as r:
        assert r.status == 503
        assert "no DNS server answered" in await r.text()

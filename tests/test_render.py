"""/metrics, / and /api/v1/results through the web app (monitor/web/render.py), on a real aiohttp
server on 127.0.0.1 with a real client: the body is prometheus_client's exposition of the metric
table in the format asked for, promtool accepts it, concurrent scrapes share one render, a body
is never older than the cache's age, gzip and identity are both served, /healthz and /readyz are
never cached, and the loop keeps answering while a render is stuck. No timing assertions:
renders are held by events."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from promstack import promtool_check_metrics

from monitor.engine.parity import Thresholds, judge
from monitor.serve.exporter import Exposition, SnapshotCollector, make_registry
from monitor.serve.state import Snapshot, Store
from monitor.web.render import RenderCache, accepts_gzip
from monitor.web.server import RENDER_CACHE, make_app
from probes.base import (
    AddressResult,
    ErrorKind,
    Family,
    ProbeError,
    ProbeKind,
    ProbeResult,
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
from probes.race import RaceDetails

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
            if probe == "race":  # one result, under the winner's family, no verdict
                winner: Family = "ipv6" if i % 2 else "ipv4"
                details = RaceDetails(
                    winner_family=winner,
                    winner_address="::1" if i % 2 else "127.0.0.1",
                    connect_seconds=0.002,
                    ipv6_penalty_seconds=0.0 if i % 2 else 0.25,
                )
                store.record([result(t.name, probe, winner, details)])
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


def exposed(snap: Snapshot, accept: str) -> bytes:
    """What /metrics sends for `accept`, in one piece."""
    return b"".join(
        p.encode() if isinstance(p, str) else p for p in Exposition.render(snap, accept)
    )


def reference(snap: Snapshot, accept: str) -> str:
    encoder, _ = choose_encoder(accept)
    return encoder(SnapshotCollector(snap)).decode()


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_exposition_is_prometheus_clients_for_each_accept(accept: str) -> None:
    snap = rich_store().snapshot()
    encoder, content_type = choose_encoder(accept)
    assert Exposition.content_type(accept) == content_type
    assert exposed(snap, accept) == encoder(SnapshotCollector(snap))


def test_promtool_accepts_the_exposition() -> None:
    text = reference(rich_store().snapshot(), "")
    assert promtool_check_metrics(text) == ""


def test_openmetrics_parses_and_ends_with_eof() -> None:
    text = reference(rich_store().snapshot(), OPENMETRICS)
    assert text.endswith("# EOF\n")
    names = {f.name for f in om_families(text)}  # type: ignore[no-untyped-call]
    assert {"dualstack_probe_success", "dualstack_probe_runs", "dualstack_parity"} <= names


def test_the_live_registry_and_the_exposition_agree() -> None:
    store = rich_store(1)
    assert exposed(store.snapshot(), "") == generate_latest(make_registry(store))


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
        ("gzip;q=0, *", True),
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
        self.started = threading.Event()
        self.go = threading.Event()
        self.calls = 0
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def render(self, snap: Snapshot, accept: str) -> Iterable[str | bytes]:  # type: ignore[override]
        with self._lock:
            self.calls += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.started.set()
            assert self.go.wait(30), "the test never let the render go"
            return (exposed(snap, accept),)
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
    assert exposition.calls == 1  # the others wait for the one in the thread
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


async def test_a_body_is_at_most_max_age_old() -> None:
    store = rich_store(1)
    clock = Clock()
    cache = RenderCache(store, max_age=1.0, clock=clock)

    def render(snap: Snapshot) -> tuple[bytes]:
        return (exposed(snap, ""),)

    try:
        before = await cache.get("/metrics", render)
        record_tcp(store, "t-000", 0.875)
        clock.now += 1.0
        assert await cache.get("/metrics", render) is before  # one second old: still shared
        assert cache.renders == 1
        clock.now += 0.001
        after = await cache.get("/metrics", render)
        assert cache.renders == 2
        assert after.body != before.body
        assert "} 0.875\n" in after.body.decode()
        assert after.body.decode() == reference(store.snapshot(), "")
        assert gzip.decompress(after.gzip) == after.body
    finally:
        cache.close()


async def test_a_key_asked_at_a_steady_period_is_rendered_before_it_is_due() -> None:
    """Prometheus's scrapes: the third request, one period after the second, finds a body
    rendered ahead of it (no render starts for it), with the records made before that render;
    a key asked for once, or more often than `warm_min`, is rendered on request only."""
    store = rich_store(1)
    cache = RenderCache(store, max_age=0.05, warm_min=0.3)
    period = 1.3  # the lead is half the period: the warm render starts 0.65 s after a request

    def render(snap: Snapshot) -> tuple[bytes]:
        return (exposed(snap, ""),)

    try:
        await cache.get("/metrics", render)
        await asyncio.sleep(period)
        await cache.get("/metrics", render)
        assert cache.renders == 2  # the first period: nothing known to render ahead of
        await asyncio.sleep(0.15)
        record_tcp(store, "t-000", 0.875)  # before the warm render starts
        await asyncio.sleep(period - 0.15 - 0.1)
        assert cache.renders == 3  # started ahead, before the request below
        third = await cache.get("/metrics", render)
        assert cache.renders == 3  # served the warm body
        assert "} 0.875\n" in third.body.decode()
        await cache.get("/other", render)
        await asyncio.sleep(0.1)
        await cache.get("/other", render)  # 0.1 s apart: under warm_min, no plan
        await asyncio.sleep(period)
        assert cache.renders == 6  # /metrics ahead of its fourth request; /other twice only
    finally:
        cache.close()


async def test_a_reload_forgets_the_cached_bodies(serve: Served) -> None:
    store = rich_store(1)
    reloads: list[int] = []

    async def reload() -> bool:
        reloads.append(1)
        record_tcp(store, "t-000", 0.875)
        return True

    base, session, _ = await serve(store, Exposition(), reload=reload, max_age=3600.0)
    plain = {"Accept-Encoding": "identity"}
    async with session.get(f"{base}/metrics", headers=plain) as r:
        assert "} 0.875\n" not in (await r.read()).decode()
    async with session.post(f"{base}/-/reload") as r:
        assert r.status == 200
    async with session.get(f"{base}/metrics", headers=plain) as r:
        assert "} 0.875\n" in (await r.read()).decode()
    assert reloads == [1]


async def test_gzip_and_identity_are_both_served(serve: Served) -> None:
    store = rich_store(150)
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
    assert len(zipped) < len(plain) // 10
    assert gzip.decompress(zipped) == plain
    assert plain.decode() == reference(store.snapshot(), "")
    om = {"Accept": OPENMETRICS, "Accept-Encoding": "gzip"}
    async with session.get(f"{base}/metrics", headers=om) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert gzip.decompress(await r.read()).decode().endswith("# EOF\n")
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

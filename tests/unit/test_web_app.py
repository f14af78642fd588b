"""The web app of `probe serve` (monitor.web.server.make_app) through aiohttp's test client:
health and readiness, /metrics, the JSON API against its schema, the status page's headers,
the lifecycle endpoint and the basic-auth exemption. No scheduler, no probes: a Store fed
typed results stands in for them."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import bcrypt
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from monitor.engine.parity import Thresholds, judge
from monitor.engine.schema import report_schema
from monitor.serve.exporter import Exposition
from monitor.serve.state import Store
from monitor.web.server import make_app
from monitor.web.webconfig import WebConfig
from probes.base import ErrorKind, Family, ProbeError, ProbeKind, ProbeResult, Target
from probes.details import Certificate, Details, DnsAnswer, HttpExchange, TlsHandshake

SCHEMA = report_schema()
VANTAGE = "unit-web"
TARGET = Target(
    name="web",
    service="s3",
    region="eu-west-1",
    host="web.example.com",
    probes=("dns", "tls", "http2"),
)
PEER_TEXT = "<script>alert(1)</script>"
"""An error message quoting a hostile peer: the page must show it as text."""

Client = TestClient[web.Request, web.Application]


def result(
    probe: ProbeKind,
    family: Family,
    details: Details | None,
    *,
    error: ProbeError | None = None,
) -> ProbeResult:
    return ProbeResult(
        target=TARGET.name,
        probe=probe,
        family=family,
        address="2001:db8::1" if family == "ipv6" else "192.0.2.1",
        success=error is None,
        duration_seconds=0.01,
        started=1_700_000_000.0,
        phases={"resolve": 0.001, "connect": 0.002},
        error=error,
        details=details,
    )


CERT = Certificate(
    subject="CN=web.example.com",
    issuer="CN=Unit CA",
    sans=("web.example.com",),
    not_after="2030-03-17T17:46:40Z",
    not_after_timestamp=1_900_000_000.0,
    fingerprint_sha256="ab" * 32,
    serial="1f",
)
HS = TlsHandshake(verified=True, tls_version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", alpn="h2")
ROUND: dict[ProbeKind, tuple[ProbeResult, ProbeResult]] = {
    "dns": (
        result("dns", "ipv4", DnsAnswer(rcode="NOERROR", records=("192.0.2.1",), ttl=60)),
        result("dns", "ipv6", DnsAnswer(rcode="NOERROR", records=("2001:db8::1",), ttl=60)),
    ),
    "tls": (
        result("tls", "ipv4", HS),
        result(
            "tls",
            "ipv6",
            TlsHandshake(verified=False, tls_version="TLSv1.3", certificate=CERT),
            error=ProbeError(kind=ErrorKind.TLS_UNTRUSTED, message="unable to get issuer"),
        ),
    ),
    "http2": (
        result(
            "http2",
            "ipv4",
            HttpExchange(
                http_version="2",
                status=200,
                tls_version="TLSv1.3",
                alpn="h2",
                alt_svc='h3=":443"',
                server="AmazonS3",
                body_bytes=12,
            ),
        ),
        result(
            "http2",
            "ipv6",
            None,
            error=ProbeError(kind=ErrorKind.PROTOCOL_ERROR, message=PEER_TEXT),
        ),
    ),
}


def run_round(store: Store, probes: tuple[ProbeKind, ...] = TARGET.probes) -> None:
    for probe in probes:
        v4, v6 = ROUND[probe]
        store.record([v4, v6], judge(TARGET, probe, v4, v6, thresholds=Thresholds()))


@pytest.fixture
def store() -> Store:
    return Store(vantage=VANTAGE)


@pytest.fixture
def configured(store: Store) -> Store:
    store.set_targets({TARGET.name: TARGET})
    return store


AppFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def client_for() -> AsyncIterator[AppFactory]:
    """Starts make_app(store, Exposition(), **kw) on 127.0.0.1 (kernel port); stops it after.
    Rendered bodies are not shared (`max_age=0`) unless a test asks: these tests change the
    store between requests and expect to see it at once."""
    clients: list[Client] = []

    async def start(store: Store, **kw: object) -> Client:
        kw.setdefault("max_age", 0.0)
        app = make_app(store, Exposition(), **kw)  # type: ignore[arg-type]
        client: Client = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def test_healthz(client_for: AppFactory, store: Store) -> None:
    client = await client_for(store)
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.text() == "ok\n"


async def test_readyz_only_once_every_job_has_a_verdict(
    client_for: AppFactory, store: Store
) -> None:
    client = await client_for(store)
    assert (await client.get("/readyz")).status == 503  # not even configured
    store.set_targets({TARGET.name: TARGET})
    assert (await client.get("/readyz")).status == 503  # configured, nothing judged
    run_round(store, ("dns", "tls"))
    assert (await client.get("/readyz")).status == 503  # http2 still has no verdict
    run_round(store, ("http2",))
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.text() == "ready\n"


async def test_metrics(client_for: AppFactory, configured: Store) -> None:
    run_round(configured)
    client = await client_for(configured)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    success = {
        (s.labels["probe"], s.labels["family"]): s.value
        for s in families["dualstack_probe_success"].samples
    }
    assert success[("tls", "ipv4")] == 1.0
    assert success[("tls", "ipv6")] == 0.0
    assert "dualstack_parity" in families


async def test_metrics_in_openmetrics_when_asked(client_for: AppFactory, configured: Store) -> None:
    client = await client_for(configured)
    resp = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


async def test_api_results_match_the_schema(client_for: AppFactory, configured: Store) -> None:
    run_round(configured)
    configured.before_scrape = lambda: setattr(configured, "notes", ("pulled before the read",))
    client = await client_for(configured)
    resp = await client.get("/api/v1/results")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = await resp.json()
    jsonschema.validate(doc, SCHEMA)
    assert doc["vantage"] == VANTAGE
    assert doc["notes"] == ["pulled before the read"]
    assert len(doc["results"]) == 2 * len(TARGET.probes)
    by_key = {(r["probe"], r["family"]): r for r in doc["results"]}
    assert by_key[("tls", "ipv6")]["error"] == {
        "kind": "tls_untrusted",
        "message": "unable to get issuer",
        "phase": None,  # an error made by hand here, not by a probe
    }
    assert by_key[("tls", "ipv6")]["details"]["certificate"]["sans"] == ["web.example.com"]
    assert by_key[("http2", "ipv4")]["details"]["status"] == 200
    assert {p["probe"]: p["verdict"] for p in doc["parity"]} == {
        "dns": "ok",
        "tls": "ipv6_failed",
        "http2": "ipv6_failed",
    }


async def test_api_results_before_any_round_match_the_schema(
    client_for: AppFactory, store: Store
) -> None:
    client = await client_for(store)
    doc = await (await client.get("/api/v1/results")).json()
    jsonschema.validate(doc, SCHEMA)
    assert doc["results"] == [] and doc["parity"] == []


async def test_status_page_headers(client_for: AppFactory, configured: Store) -> None:
    run_round(configured)
    client = await client_for(configured)
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";")}
    assert directives["frame-ancestors"] == "frame-ancestors 'none'"
    assert directives["default-src"] == "default-src 'none'"
    assert "script-src" not in directives  # no script at all: default-src 'none' covers it
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    page = await resp.text()
    assert "web" in page
    assert PEER_TEXT not in page
    assert html.escape(PEER_TEXT) in page  # the failure is listed, as text


async def test_reload_is_absent_without_lifecycle(client_for: AppFactory, store: Store) -> None:
    client = await client_for(store)
    assert (await client.post("/-/reload")).status in (404, 405)


@pytest.mark.parametrize(("outcome", "status"), [(True, 200), (False, 500)])
async def test_reload_calls_the_reload_callable(
    client_for: AppFactory, store: Store, outcome: bool, status: int
) -> None:
    calls: list[str] = []

    async def reload() -> bool:
        calls.append("reload")
        return outcome

    client = await client_for(store, reload=reload)
    assert (await client.get("/-/reload")).status == 405  # only POST changes state
    assert calls == []
    resp = await client.post("/-/reload")
    assert resp.status == status
    assert calls == ["reload"]


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_basic_auth_spares_only_healthz(client_for: AppFactory, configured: Store) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4))
    client = await client_for(configured, web_config=WebConfig(users={"prom": hashed}))
    assert (await client.get("/healthz")).status == 200
    for path in ("/metrics", "/readyz", "/api/v1/results", "/api/v1/events", "/"):
        assert (await client.get(path)).status == 401, path
    ok = await client.get("/metrics", headers=basic_auth("prom", "s3cret"))
    assert ok.status == 200
    wrong = await client.get("/metrics", headers=basic_auth("prom", "guess"))
    assert wrong.status == 401


def record_changes(store: Store) -> None:
    """Three verdict changes, a second apart: tls ok -> ipv6_failed, http2 (first) ipv6_failed,
    tls ipv6_failed -> ok."""
    clock = iter([1_800_000_000.0, 1_800_000_001.0, 1_800_000_002.0])
    store.events.clock = lambda: next(clock)
    v4, v6 = ROUND["tls"]
    h4, h6 = ROUND["http2"]
    failed = judge(TARGET, "tls", v4, v6, thresholds=Thresholds())
    ok = judge(TARGET, "tls", v4, v4, thresholds=Thresholds())
    http2 = judge(TARGET, "http2", h4, h6, thresholds=Thresholds())
    for parity, previous, results in (
        (failed, ok.verdict, (v4, v6)),
        (http2, None, (h4, h6)),
        (ok, failed.verdict, (v4, v6)),
    ):
        store.events.add(
            vantage=VANTAGE,
            site=VANTAGE,
            target=TARGET,
            parity=parity,
            previous=previous,
            results=results,
        )


async def test_api_events_newest_first_and_filtered(
    client_for: AppFactory, configured: Store
) -> None:
    record_changes(configured)
    client = await client_for(configured)
    resp = await client.get("/api/v1/events")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    events = (await resp.json())["events"]
    assert [(e["probe"], e["from"], e["to"]) for e in events] == [
        ("tls", "ipv6_failed", "ok"),
        ("http2", None, "ipv6_failed"),
        ("tls", "ok", "ipv6_failed"),
    ]
    assert events[2]["time"] == "2027-01-15T08:00:00.000Z"
    evidence = {r["family"]: r for r in events[2]["results"]}
    assert evidence["ipv6"]["error"]["kind"] == "tls_untrusted"
    assert evidence["ipv6"]["details"]["certificate"]["sans"] == ["web.example.com"]
    assert evidence["ipv4"]["success"] is True

    async def probes(query: str) -> list[str]:
        resp = await client.get(f"/api/v1/events?{query}")
        assert resp.status == 200, await resp.text()
        return [e["probe"] for e in (await resp.json())["events"]]

    assert await probes("target=web&probe=tls") == ["tls", "tls"]
    assert await probes("target=other") == []
    assert await probes("limit=1") == ["tls"]
    assert await probes("since=2027-01-15T08:00:01Z") == ["tls", "http2"]
    assert await probes("since=2027-01-15T08:00:01%2B00:00") == ["tls", "http2"]
    assert await probes("since=2027-01-15T08:00:01+00:00") == ["tls", "http2"]  # + as a space
    assert await probes("since=2027-01-15T17:00:01.5%2B09:00") == ["tls"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("since=yesterday", "since='yesterday' is not an ISO 8601 time"),
        ("since=", "since='' is not an ISO 8601 time"),
        ("limit=0", "limit='0' is not a whole number from 1 to 1000"),
        ("limit=1001", "limit='1001' is not a whole number from 1 to 1000"),
        ("limit=ten", "limit='ten' is not a whole number from 1 to 1000"),
        ("limit=-1", "limit='-1' is not a whole number from 1 to 1000"),
        ("verdict=ok", "unknown parameter 'verdict': use target, probe, since, limit"),
        ("target=a&target=b", "parameter 'target' given twice"),
    ],
)
async def test_api_events_bad_parameters_are_400_with_one_line(
    client_for: AppFactory, configured: Store, query: str, reason: str
) -> None:
    client = await client_for(configured)
    resp = await client.get(f"/api/v1/events?{query}")
    assert resp.status == 400
    text = await resp.text()
    assert text.startswith(f"400: {reason}") and text.count("\n") == 1, text


async def test_status_page_shows_recent_changes(client_for: AppFactory, configured: Store) -> None:
    run_round(configured)
    record_changes(configured)
    client = await client_for(configured)
    page = await (await client.get("/")).text()
    section = page.split("<h2>Recent changes</h2>", 1)[1].split("</section>", 1)[0]
    assert 'data-target="web"' in section
    rows = re.findall(r'<tr data-probe="(\w+)" data-from="(\w+)" data-to="(\w+)">', section)
    assert rows == [
        ("tls", "ipv6_failed", "ok"),
        ("http2", "none", "ipv6_failed"),
        ("tls", "ok", "ipv6_failed"),
    ]
    assert "tls_untrusted" in section and "unable to get issuer" in section
    assert PEER_TEXT not in page and html.escape(PEER_TEXT) in section  # the message, as text
    assert "<script" not in page

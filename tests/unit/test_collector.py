"""The Prometheus collector over a Store fed typed results, read back through a real scrape:
`generate_latest` on a fresh registry, parsed by prometheus_client's own text parser."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor import __version__
from monitor.engine.parity import VERDICTS, Parity, Thresholds, Verdict, judge
from monitor.serve.exporter import make_registry
from monitor.serve.metrics import metrics
from monitor.serve.state import Store
from monitor.serve.tracing import TRACE_RESULTS
from probes.base import (
    FAMILIES,
    ErrorKind,
    Family,
    ProbeError,
    ProbeKind,
    ProbeResult,
    Target,
)
from probes.details import Certificate, Details, DnsAnswer, HttpExchange, TlsHandshake
from probes.trace import BLAMES

VANTAGE = "unit-vantage"
WEB = Target(
    name="web",
    service="s3",
    region="eu-west-1",
    host="web.example.com",
    probes=("dns", "tls", "http2"),
)
GLOBAL = Target(name="global", service="cloudfront", region="", host="g.example.com")
NOT_AFTER = 1_900_000_000.0
# What a hostile peer might send: label syntax, a newline, a comment. It must stay data.
PEER_TEXT = 'evil"} 1\n# HELP injected'

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(store: Store) -> Samples:
    text = generate_latest(make_registry(store)).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
    return found[0] if found else None


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


def result(
    target: Target,
    probe: ProbeKind,
    family: Family,
    *,
    success: bool = True,
    duration: float = 0.010,
    phases: dict[str, float] | None = None,
    details: Details | None = None,
    error: ProbeError | None = None,
    skipped: str | None = None,
) -> ProbeResult:
    return ProbeResult(
        target=target.name,
        probe=probe,
        family=family,
        address="2001:db8::1" if family == "ipv6" else "192.0.2.1",
        success=success,
        duration_seconds=duration,
        started=1_700_000_000.0,
        phases=phases or {},
        error=error,
        details=details,
        skipped=skipped,
    )


def certificate(subject: str = "CN=web.example.com") -> Certificate:
    return Certificate(
        subject=subject,
        issuer="CN=Unit CA",
        sans=("web.example.com",),
        not_after="2030-03-17T17:46:40Z",
        not_after_timestamp=NOT_AFTER,
        fingerprint_sha256="ab" * 32,
        serial="1f",
    )


def record(store: Store, target: Target, v4: ProbeResult, v6: ProbeResult) -> Parity:
    parity = judge(target, v4.probe, v4, v6, thresholds=Thresholds())
    store.record([v4, v6], parity)
    return parity


@pytest.fixture
def store() -> Store:
    s = Store(vantage=VANTAGE)
    s.set_targets({t.name: t for t in (WEB, GLOBAL)})
    return s


def test_success_duration_and_phases_per_family(store: Store) -> None:
    phases = {"resolve": 0.001, "connect": 0.002, "handshake": 0.004}
    v4 = result(WEB, "tls", "ipv4", duration=0.006, phases=phases)
    v6 = result(
        WEB,
        "tls",
        "ipv6",
        success=False,
        duration=0.5,
        phases={"resolve": 0.001, "connect": 0.003},
        error=ProbeError(kind=ErrorKind.TLS_UNTRUSTED, message="unable to get local issuer"),
    )
    record(store, WEB, v4, v6)
    s = scrape(store)
    base = {"vantage": VANTAGE, "target": "web", "service": "s3", "region": "eu-west-1"}
    assert value(s, "dualstack_probe_success", **base, probe="tls", family="ipv4") == 1.0
    assert value(s, "dualstack_probe_success", **base, probe="tls", family="ipv6") == 0.0
    assert value(s, "dualstack_probe_duration_seconds", **base, probe="tls", family="ipv4") == 0.006
    assert value(s, "dualstack_probe_duration_seconds", **base, probe="tls", family="ipv6") == 0.5
    for ph, secs in phases.items():
        assert value(s, "dualstack_probe_phase_duration_seconds", family="ipv4", phase=ph) == secs
    assert (
        value(s, "dualstack_probe_phase_duration_seconds", family="ipv6", phase="handshake") is None
    )
    assert value(s, "dualstack_probe_last_run_timestamp_seconds", family="ipv4") == 1.7e9
    assert value(s, "dualstack_probe_runs_total", family="ipv6") == 1.0
    assert value(s, "dualstack_probe_errors_total", family="ipv6", kind="tls_untrusted") == 1.0
    assert value(s, "dualstack_probe_errors_total", family="ipv4") is None
    # Only successes feed the latency histogram.
    assert value(s, "dualstack_probe_latency_seconds_count", family="ipv4") == 1.0
    assert value(s, "dualstack_probe_latency_seconds_count", family="ipv6") is None


def test_a_target_without_region_is_exported_as_none(store: Store) -> None:
    record(store, GLOBAL, result(GLOBAL, "tcp", "ipv4"), result(GLOBAL, "tcp", "ipv6"))
    s = scrape(store)
    for family in FAMILIES:
        assert value(s, "dualstack_probe_success", target="global", family=family, region="none")
    assert value(s, "dualstack_parity", target="global", region="none", verdict="ok") == 1.0


def test_dns_records_count(store: Store) -> None:
    v4 = DnsAnswer(rcode="NOERROR", records=("192.0.2.1", "192.0.2.2"), ttl=60)
    v6 = DnsAnswer(rcode="NOERROR", records=("2001:db8::1",), ttl=60)
    record(
        store,
        WEB,
        result(WEB, "dns", "ipv4", details=v4),
        result(WEB, "dns", "ipv6", details=v6),
    )
    s = scrape(store)
    assert value(s, "dualstack_dns_records", probe="dns", family="ipv4") == 2.0
    assert value(s, "dualstack_dns_records", probe="dns", family="ipv6") == 1.0


def test_cert_not_after_only_from_the_tls_probe(store: Store) -> None:
    hs = TlsHandshake(verified=True, tls_version="TLSv1.3", alpn="h2", certificate=certificate())
    record(
        store, WEB, result(WEB, "tls", "ipv4", details=hs), result(WEB, "tls", "ipv6", details=hs)
    )
    # http2 reports a TlsHandshake when its handshake failed: not a second expiry series.
    failed = ProbeError(kind=ErrorKind.TLS_UNTRUSTED, message="untrusted")
    record(
        store,
        WEB,
        result(WEB, "http2", "ipv4", success=False, details=hs, error=failed),
        result(WEB, "http2", "ipv6", success=False, details=hs, error=failed),
    )
    s = scrape(store)
    metric = "dualstack_tls_cert_not_after_timestamp_seconds"
    for family in FAMILIES:
        assert value(s, metric, probe="tls", family=family) == NOT_AFTER
        assert value(s, metric, probe="http2", family=family) is None


def test_http_status_and_version(store: Store) -> None:
    def exchange(status: int, version: str) -> HttpExchange:
        return HttpExchange(
            http_version=version,
            status=status,
            tls_version="TLSv1.3",
            alpn="h2" if version == "2" else "http/1.1",
            alt_svc=None,
            server="AmazonS3",
            body_bytes=12,
        )

    record(
        store,
        WEB,
        result(WEB, "http2", "ipv4", details=exchange(200, "2")),
        result(WEB, "http2", "ipv6", details=exchange(403, "1.1")),
    )
    s = scrape(store)
    assert value(s, "dualstack_http_status_code", family="ipv4") == 200.0
    assert value(s, "dualstack_http_status_code", family="ipv6") == 403.0
    assert value(s, "dualstack_http_version_info", family="ipv4", version="2") == 1.0
    assert value(s, "dualstack_http_version_info", family="ipv6", version="1.1") == 1.0
    assert value(s, "dualstack_http_version_info", family="ipv4", version="1.1") is None


def test_parity_is_one_hot_over_every_verdict(store: Store) -> None:
    failed = ProbeError(kind=ErrorKind.CONNECT_REFUSED, message="connection refused")
    judged = {
        ("web", "dns"): record(
            store, WEB, result(WEB, "dns", "ipv4"), result(WEB, "dns", "ipv6")
        ).verdict,
        ("web", "tls"): record(
            store,
            WEB,
            result(WEB, "tls", "ipv4"),
            result(WEB, "tls", "ipv6", success=False, error=failed),
        ).verdict,
        ("global", "tcp"): record(
            store,
            GLOBAL,
            result(GLOBAL, "tcp", "ipv4", success=False, error=failed),
            result(GLOBAL, "tcp", "ipv6", success=False, error=failed),
        ).verdict,
    }
    assert judged == {
        ("web", "dns"): Verdict.OK,
        ("web", "tls"): Verdict.IPV6_FAILED,
        ("global", "tcp"): Verdict.BOTH_FAILED,
    }
    s = scrape(store)
    for (target, probe), verdict in judged.items():
        row = {
            v: value(s, "dualstack_parity", target=target, probe=probe, verdict=str(v))
            for v in VERDICTS
        }
        assert row == {v: 1.0 if v is verdict else 0.0 for v in VERDICTS}
    assert value(s, "dualstack_parity", target="web", probe="http2", verdict="ok") is None


def test_scheduler_job_failures_total(store: Store) -> None:
    s = scrape(store)
    for reason in ("crashed", "hung"):  # present from the start, at zero
        assert value(s, "dualstack_scheduler_job_failures_total", reason=reason) == 0.0
    store.job_failures.update(crashed=2, hung=1)
    s = scrape(store)
    metric = "dualstack_scheduler_job_failures_total"
    assert value(s, metric, vantage=VANTAGE, reason="crashed") == 2.0
    assert value(s, metric, vantage=VANTAGE, reason="hung") == 1.0


def test_vantage_wide_series(store: Store) -> None:
    store.reload_ok = False
    s = scrape(store)
    assert value(s, "dualstack_scheduler_jobs", vantage=VANTAGE) == float(
        len(WEB.probes) + len(GLOBAL.probes)
    )
    assert value(s, "dualstack_config_last_reload_successful", vantage=VANTAGE) == 0.0
    build = {"vantage": VANTAGE, "version": __version__, "python": platform.python_version()}
    assert value(s, "dualstack_build_info", **build) == 1.0
    # No IPv6 address tested yet: the availability gauge is absent, not 0.
    assert "dualstack_vantage_ipv6_available" not in names(s)


def test_skipped_results_are_not_exported_but_judged(store: Store) -> None:
    v4 = result(WEB, "tls", "ipv4")
    v6 = result(WEB, "tls", "ipv6", success=False, skipped="family not configured")
    assert record(store, WEB, v4, v6).verdict is Verdict.SKIPPED
    s = scrape(store)
    assert value(s, "dualstack_probe_success", probe="tls", family="ipv4") == 1.0
    assert value(s, "dualstack_probe_success", probe="tls", family="ipv6") is None
    assert value(s, "dualstack_parity", probe="tls", verdict="skipped") == 1.0


def test_before_scrape_runs_on_every_scrape(store: Store) -> None:
    calls: list[int] = []
    store.before_scrape = lambda: calls.append(1)
    scrape(store)
    scrape(store)
    assert len(calls) == 2


def test_labels_come_only_from_configuration(store: Store) -> None:
    """Whatever a peer sends (server header, certificate names, HTTP version, error text) is
    never a label value: cardinality stays bounded and the exposition cannot be forged."""
    peer_hs = TlsHandshake(
        verified=False,
        tls_version=PEER_TEXT,
        cipher=PEER_TEXT,
        alpn=PEER_TEXT,
        certificate=certificate(subject=PEER_TEXT),
    )
    peer_http = HttpExchange(
        http_version=PEER_TEXT,
        status=200,
        tls_version=PEER_TEXT,
        alpn=PEER_TEXT,
        alt_svc=PEER_TEXT,
        server=PEER_TEXT,
        body_bytes=1,
    )
    peer_error = ProbeError(kind=ErrorKind.PROTOCOL_ERROR, message=PEER_TEXT)
    record(
        store,
        WEB,
        result(WEB, "tls", "ipv4", details=peer_hs),
        result(WEB, "tls", "ipv6", success=False, details=peer_hs, error=peer_error),
    )
    record(
        store,
        WEB,
        result(WEB, "http2", "ipv4", details=peer_http),
        result(WEB, "http2", "ipv6", success=False, details=peer_http, error=peer_error),
    )
    s = scrape(store)
    label_values = {v for _, labels in s for _, v in labels}
    assert not any("evil" in v or "\n" in v for v in label_values)
    configured = {
        VANTAGE,
        *(t.name for t in (WEB, GLOBAL)),
        *(t.service for t in (WEB, GLOBAL)),
        "eu-west-1",
        "none",
        # dualstack_shard_info: this process's shard and the shard count (`sharding`)
        str(store.shard),
        str(store.shards),
    }
    closed_sets = {
        *FAMILIES,
        *WEB.probes,
        *(str(v) for v in VERDICTS),
        *(str(k) for k in ErrorKind),
        "resolve",
        "connect",
        "tls",
        "ttfb",
        "transfer",  # phases
        "crashed",
        "hung",
        *TRACE_RESULTS,
        *BLAMES,
        "1.1",
        "2",
        "3",
        __version__,
        platform.python_version(),
    }
    bucket_bounds = {v for (n, labels) in s for k, v in labels if k == "le"}
    assert label_values - bucket_bounds <= configured | closed_sets
    # The peer's weird HTTP version is not turned into a series.
    assert value(s, "dualstack_http_version_info", probe="http2") is None
    assert value(s, "dualstack_http_status_code", probe="http2", family="ipv4") == 200.0


def test_every_registry_is_fresh() -> None:
    a, b = Store(vantage="a"), Store(vantage="b")
    a.set_targets({GLOBAL.name: GLOBAL})
    b.set_targets({GLOBAL.name: GLOBAL})
    a.job_failures["crashed"] = 5
    assert value(scrape(a), "dualstack_scheduler_job_failures_total", reason="crashed") == 5.0
    assert value(scrape(b), "dualstack_scheduler_job_failures_total", reason="crashed") == 0.0
    assert make_registry(a) is not make_registry(a)


def test_each_metric_is_named_once_in_the_source() -> None:
    """A metric is defined once: its name (or one of its sample names) appears in a single place
    of monitor/ and probes/ (its row in the table, or its kind's declaration); and every metric
    name there is a row."""
    root = Path(__file__).resolve().parents[2]
    source = "\n".join(
        path.read_text(encoding="utf-8")
        for package in ("monitor", "probes")
        for path in sorted((root / package).rglob("*.py"))
    )
    suffixes = r"(?:_total|_bucket|_count|_sum|_created)?"
    for m in metrics():
        found = re.findall(rf"\b{m.name}{suffixes}\b", source)
        assert len(found) == 1, (m.name, found)
    names = {m.name for m in metrics()}
    assert len(names) == len(metrics())
    mentioned = set(re.findall(r"\bdualstack_\w+", source))
    assert mentioned == names, mentioned ^ names


def test_every_metric_is_exported_with_its_table_row() -> None:
    """Each row's name, type, help and label names are what a scrape shows (with a shard label
    after `vantage` on the process's own series when sharded)."""
    store = Store(vantage=VANTAGE)
    families = {
        f.name: f
        for f in text_string_to_metric_families(generate_latest(make_registry(store)).decode())
    }
    assert list(families) == [m.name for m in metrics()]
    for m in metrics():
        assert (families[m.name].type, families[m.name].documentation) == (m.type, m.help)

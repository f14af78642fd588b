"""Races and path MTUs in the Store and through a real scrape (a fresh registry per test): the
metric names and labels of issue 11 (declared by the kinds, probes/race.py and probes/icmp.py),
the store's readiness with a race job, reload cleanup, and the race as a result in the report,
under its winner's family and with no verdict."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.engine.parity import Thresholds, judge
from monitor.serve.exporter import make_registry
from monitor.serve.state import Store
from probes.base import (
    ErrorKind,
    Family,
    ProbeError,
    ProbeResult,
    Target,
)
from probes.details import IcmpEcho
from probes.race import RaceAttempt, RaceDetails

RACER = Target(
    name="racer",
    service="alb",
    region="us-east-1",
    host="racer.example.com",
    probes=("icmp", "race"),
)
Sample = tuple[str, dict[str, str], float]


def scrape(store: Store) -> list[Sample]:
    text = generate_latest(make_registry(store)).decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def of(samples: list[Sample], name: str) -> list[tuple[dict[str, str], float]]:
    return [(labels, v) for n, labels, v in samples if n == name]


def won(family: Family | None, *, connect: float | None, penalty: float | None) -> ProbeResult:
    """A race's result as the handler files it: under the winner's family (none: ipv4)."""
    attempts = (
        RaceAttempt(family="ipv6", address="2001:db8::1", started_seconds=0.0, outcome="cancelled"),
        RaceAttempt(
            family="ipv4", address="198.51.100.1", started_seconds=0.25, outcome="connected"
        ),
    )
    address = {"ipv4": "198.51.100.1", "ipv6": "2001:db8::1"}.get(family or "")
    return ProbeResult(
        target=RACER.name,
        probe="race",
        family=family or "ipv4",
        address=address,
        success=family is not None,
        duration_seconds=connect or 1.0,
        started=1_700_000_000.0,
        details=RaceDetails(
            winner_family=family,
            winner_address=address,
            connect_seconds=connect,
            ipv6_penalty_seconds=penalty,
            attempts=attempts,
        ),
        error=None if family else ProbeError(kind=ErrorKind.TIMEOUT, message="none"),
    )


def icmp(family: Family, mtu: int | None) -> ProbeResult:
    return ProbeResult(
        target=RACER.name,
        probe="icmp",
        family=family,
        address="2001:db8::1" if family == "ipv6" else "198.51.100.1",
        success=True,
        duration_seconds=0.01,
        started=1_700_000_000.0,
        details=IcmpEcho(
            sent=3,
            received=3,
            loss_ratio=0.0,
            rtt_min_seconds=0.01,
            rtt_avg_seconds=0.01,
            rtt_max_seconds=0.01,
            path_mtu_bytes=mtu,
            sizes_answered=(1280,) if mtu else (),
        ),
    )


def store() -> Store:
    s = Store(vantage="v1")
    s.set_targets({RACER.name: RACER})
    return s


TARGET_LABELS = {"vantage": "v1", "target": "racer", "service": "alb", "region": "us-east-1"}


def test_race_metrics_names_and_labels() -> None:
    s = store()
    before = scrape(s)
    # Both families' win counters exist (at 0) before any race: a share is defined at once.
    assert sorted(of(before, "dualstack_race_wins_total"), key=lambda x: x[0]["family"]) == [
        ({**TARGET_LABELS, "family": "ipv4"}, 0.0),
        ({**TARGET_LABELS, "family": "ipv6"}, 0.0),
    ]
    assert of(before, "dualstack_race_connect_seconds") == []
    s.record([won("ipv4", connect=0.27, penalty=0.25)])
    s.record([won("ipv4", connect=0.26, penalty=0.24)])
    s.record([won("ipv6", connect=0.02, penalty=0.0)])
    s.record([won(None, connect=None, penalty=None)])  # nobody won: counted nowhere
    after = scrape(s)
    wins = {labels["family"]: v for labels, v in of(after, "dualstack_race_wins_total")}
    assert wins == {"ipv4": 2.0, "ipv6": 1.0}
    # The gauges are the latest race's: it connected nothing, so they are absent.
    assert of(after, "dualstack_race_connect_seconds") == []
    assert of(after, "dualstack_race_ipv6_penalty_seconds") == []
    s.record([won("ipv4", connect=0.27, penalty=0.25)])
    latest = scrape(s)
    assert of(latest, "dualstack_race_connect_seconds") == [(TARGET_LABELS, 0.27)]
    assert of(latest, "dualstack_race_ipv6_penalty_seconds") == [(TARGET_LABELS, 0.25)]


def test_the_race_is_one_result_under_its_winners_family_without_a_verdict() -> None:
    """The common families carry the race, one series per target: the latest race's family
    (a race won over the other family replaces it, so no series goes stale), no verdict."""
    s = store()
    s.record([won("ipv6", connect=0.02, penalty=0.0)])
    s.record([won("ipv4", connect=0.27, penalty=0.25)])
    samples = scrape(s)
    race = {"probe": "race", **TARGET_LABELS}
    assert of(samples, "dualstack_probe_success") == [({**race, "family": "ipv4"}, 1.0)]
    assert [lv for lv, _ in of(samples, "dualstack_probe_last_run_timestamp_seconds")] == [
        {**race, "family": "ipv4"}
    ]
    assert {lv["family"]: v for lv, v in of(samples, "dualstack_probe_runs_total")} == {
        "ipv4": 1.0,
        "ipv6": 1.0,
    }
    # Won over either family, not a latency of one family against the other: no histogram.
    assert of(samples, "dualstack_probe_latency_seconds_count") == []
    assert [lv for lv, _ in of(samples, "dualstack_parity") if lv["probe"] == "race"] == []
    [result] = s.report().results
    assert (result.probe, result.family) == ("race", "ipv4") and s.report().parity == ()


def test_path_mtu_gauge_per_family() -> None:
    s = store()
    parity = judge(RACER, "icmp", icmp("ipv4", 1500), icmp("ipv6", 1280), thresholds=Thresholds())
    s.record([icmp("ipv4", 1500), icmp("ipv6", 1280)], parity)
    got = {labels["family"]: (labels, v) for labels, v in of(scrape(s), "dualstack_path_mtu_bytes")}
    assert got["ipv4"] == ({**TARGET_LABELS, "family": "ipv4"}, 1500.0)
    assert got["ipv6"] == ({**TARGET_LABELS, "family": "ipv6"}, 1280.0)
    # A different path MTU is a normal difference, listed and never a mismatch.
    assert str(parity.verdict) == "ok"
    assert [(d.field, d.ipv4, d.ipv6, d.significant) for d in parity.differences] == [
        ("path_mtu_bytes", 1500, 1280, False)
    ]


def test_ready_needs_the_race_too() -> None:
    s = store()
    pair = [icmp("ipv4", None), icmp("ipv6", None)]
    s.record(pair, judge(RACER, "icmp", *pair, thresholds=Thresholds()))
    assert not s.ready  # the race job has not reported yet
    s.record([won("ipv6", connect=0.01, penalty=0.0)])
    assert s.ready


def test_a_reload_without_race_forgets_it() -> None:
    s = store()
    s.record([won("ipv4", connect=0.27, penalty=0.25)])
    assert s.report().results and s.counted
    s.set_targets(
        {RACER.name: Target(name="racer", service="alb", region="", host="h", probes=("tcp",))}
    )
    assert s.report().results == () and not s.counted
    assert of(scrape(s), "dualstack_race_wins_total") == []
    s.record([won("ipv4", connect=0.27, penalty=0.25)])  # a race still running at reload
    assert s.latest == {} and not s.counted

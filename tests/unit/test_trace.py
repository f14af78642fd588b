"""The trace's pure parts (a hop from its answers, a path, the blame), the hop loop on a fake
method (gap limit, time bound, budget), `probe serve`'s budget and cooldown on an injected
clock, the trace event, the one-hot blame metric, and `probe trace`'s usage lines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from monitor.cli import main
from monitor.engine.parity import Parity, Verdict
from monitor.engine.schema import report_schema
from monitor.engine.trace import TargetTrace, judged
from monitor.lab.loopback import MISSING_HOST
from monitor.serve import tracing
from monitor.serve.events import EventLog
from monitor.serve.metrics import metrics
from monitor.serve.state import Store
from probes import kinds
from probes.base import AddressResult, Family, Outcome, ProbeError, ProbeResult, Target
from probes.details import Hop, TracePath, details_json
from probes.ipranges import IpRanges
from probes.trace import (
    BLAMES,
    Answer,
    Blame,
    TraceSettings,
    judge,
    make_hop,
    outcome_line,
    summarize,
    walk,
)

RANGES = IpRanges(
    {
        "syncToken": "1767225600",
        "createDate": "2026-01-01-00-00-00",
        "prefixes": [
            {
                "ip_prefix": "203.0.113.0/24",
                "region": "lab-1",
                "service": s,
                "network_border_group": "lab-1",
            }
            for s in ("AMAZON", "EC2")
        ],
        "ipv6_prefixes": [],
    },
    source="test",
)


def answer(n: int, address: str | None, reply: Any = "time_exceeded", ms: float = 1.0) -> Answer:
    return Answer(probe=n, address=address, reply=reply, received_ns=int(ms * 1e6))


def test_a_hop_shows_each_try_and_the_most_common_answerer() -> None:
    sent = [(0, 0), (1, 0), (2, 0)]
    hop = make_hop(
        3,
        sent,
        {0: answer(0, "203.0.113.2", ms=2), 2: answer(2, "203.0.113.2", ms=4)},
        RANGES,
    )
    assert hop.hop == 3 and hop.address == "203.0.113.2" and hop.reply == "time_exceeded"
    assert hop.rtts == (0.002, None, 0.004)
    assert (
        hop.aws is not None
        and hop.aws.region == "lab-1"
        and hop.aws.services
        == (
            "AMAZON",
            "EC2",
        )
    )
    silent = make_hop(4, sent, {}, RANGES)
    assert silent == Hop(hop=4, address=None, rtts=(None, None, None), reply="none")
    reached = make_hop(5, sent[:1], {0: answer(0, "198.51.100.9", "reached")}, RANGES)
    assert reached.reply == "reached" and reached.aws is None


def path(*addresses: str | None, reached: bool = False, aws_last: bool = False) -> TracePath:
    hops = [
        Hop(
            hop=i,
            address=a,
            rtts=(0.001,) if a else (None,),
            reply="time_exceeded" if a else "none",
            aws=RANGES.lookup("203.0.113.2") if aws_last and i == len(addresses) else None,
        )
        for i, a in enumerate(addresses, start=1)
    ]
    if reached:
        hops.append(Hop(hop=len(hops) + 1, address="dst", rtts=(0.001,), reply="reached"))
    return summarize("udp", "dst", 30, hops)


def test_a_path_says_where_it_stopped() -> None:
    assert outcome_line(path("r1", "r2", reached=True)) == "reached dst at hop 3"
    assert outcome_line(path("r1", None, None)) == "stopped after hop 1 at r1"
    assert outcome_line(path(None, None)) == "no hop answered"
    p = path("r1", "r2", None)
    assert (p.reached, p.last_hop, p.last_address) == (False, 2, "r2")


@pytest.mark.parametrize(
    ("v6", "blame"),
    [
        (path(None, None, None), Blame.VANTAGE),
        (path("r1", None, None), Blame.TRANSIT),
        (path("r1", "r2", None), Blame.TRANSIT),
        (path("r1", "r2", "edge", aws_last=True), Blame.AWS_EDGE),
        (path("r1", "r2", "edge", reached=True), None),
    ],
)
def test_the_blame_is_the_network_just_past_the_last_answer(
    v6: TracePath, blame: Blame | None
) -> None:
    v4 = path("r1", "r2", "edge", reached=True)
    assert judge(v6, v4) is blame


def test_the_vantage_is_its_first_hops_and_the_endpoint_needs_a_failing_service() -> None:
    v4 = path("r1", "r2", "edge", reached=True)
    assert judge(path("r1", None), v4, vantage_hops=2) is Blame.VANTAGE
    assert judge(path("r1", "r2", None), v4, vantage_hops=2) is Blame.TRANSIT
    assert judge(v4, v4, service_failed=True) is Blame.ENDPOINT
    # both stop at the same hop (an endpoint that answers no trace probe): not the network
    both = path("r1", "r2", "edge", None, aws_last=False)
    assert judge(both, both) is None
    assert judge(both, both, service_failed=True) is Blame.ENDPOINT
    # no other family to compare with: by the path alone
    assert judge(path("r1", None), None) is Blame.TRANSIT


class FakeProber:
    """Routers at hops 1..len(routers) (None: silent), then the destination (if reachable)."""

    def __init__(self, routers: Sequence[str | None], reachable: bool) -> None:
        self.routers, self.reachable = routers, reachable
        self.waiting: list[Answer] = []
        self.sent: list[int] = []
        self.event = asyncio.Event()

    def send(self, hop: int) -> tuple[int, int]:
        n = len(self.sent)
        self.sent.append(hop)
        now = time.time_ns()
        if hop <= len(self.routers):
            if self.routers[hop - 1] is not None:
                self.waiting.append(
                    Answer(
                        probe=n,
                        address=self.routers[hop - 1],
                        reply="time_exceeded",
                        received_ns=now,
                    )
                )
        elif self.reachable:
            self.waiting.append(Answer(probe=n, address="dst", reply="reached", received_ns=now))
        self.event.set()
        return n, now

    def poll(self) -> list[Answer]:
        out, self.waiting = self.waiting, []
        self.event.clear()
        return out

    async def wait(self) -> None:
        await self.event.wait()

    def close(self) -> None:
        pass


async def test_a_silent_hop_is_shown_and_the_walk_goes_on() -> None:
    prober = FakeProber(["r1", None, "r3"], reachable=True)
    settings = TraceSettings(max_hops=8, tries=2, hop_timeout=0.05)
    hops, complete, failed = await walk(prober, settings)
    assert [h.address for h in hops] == ["r1", None, "r3", "dst"]
    assert hops[1].rtts == (None, None) and complete and failed is None


async def test_silent_hops_end_the_walk_at_the_gap_limit_or_the_bound() -> None:
    settings = TraceSettings(max_hops=6, tries=1, hop_timeout=0.05, gap_limit=3)
    hops, _, _ = await walk(FakeProber(["r1"], reachable=False), settings)
    assert [h.address for h in hops] == ["r1", None, None, None]
    bound = TraceSettings(max_hops=6, tries=1, hop_timeout=0.05, gap_limit=64)
    t0 = time.monotonic()
    hops, complete, _ = await walk(FakeProber([], reachable=False), bound)
    took = time.monotonic() - t0
    assert len(hops) == 6 and complete
    # the bound, with room for a loaded machine's event loop (never the 64-hop gap limit's)
    assert bound.worst_case - 0.02 <= took <= bound.worst_case + 1.0, took


async def test_a_budget_cuts_the_walk_short_and_says_so() -> None:
    settings = TraceSettings(max_hops=30, tries=1, hop_timeout=0.05, gap_limit=64)
    hops, complete, _ = await walk(FakeProber([], reachable=False), settings, budget=0.12)
    assert not complete and 2 <= len(hops) <= 4


def test_trace_is_a_kind_but_not_a_default() -> None:
    for name in kinds.BUILTIN_MODULES:
        assert (name in kinds.OPT_IN) is (not kinds.get(name).default), name
    assert "trace" in kinds.names() and "trace" not in kinds.default_names()


def test_the_trace_details_fit_the_report_schema() -> None:
    schema = report_schema()
    details = details_json(path("r1", "edge", reached=True, aws_last=True))
    jsonschema.validate(details, {"$defs": schema["$defs"], "$ref": "#/$defs/trace_path"})
    assert details["hops"][1]["aws"]["region"] == "lab-1"


TARGET = Target(name="app", service="alb", region="us-east-1", host="app.example.com")


def result(family: Family, ok: bool, *addresses: str) -> ProbeResult:
    return ProbeResult(
        target="app",
        probe="tcp",
        family=family,
        address=addresses[0],
        success=ok,
        duration_seconds=0.01,
        started=0.0,
        error=None if ok else ProbeError(kind="timeout", message="no answer"),  # type: ignore[arg-type]
        addresses=tuple(
            AddressResult(
                address=a,
                success=ok or i == 0,  # the second address is the failing one
                error=None,
                duration_seconds=0.01,
                phases={},
            )
            for i, a in enumerate(addresses)
        ),
    )


FAILED: tuple[Family, ...] = ("ipv6",)


def fake_trace(seconds: float = 0.0) -> TargetTrace:
    v4 = path("r1", "r2", reached=True)
    v6 = path("r1", None)
    traces = judged(
        [
            ("ipv4", "198.51.100.9", Outcome(success=True, details=v4)),
            ("ipv6", "2001:db8::9", Outcome(success=False, details=v6)),
        ],
        vantage_hops=1,
        service_failed=FAILED,
    )
    return TargetTrace(
        target="app", started=0.0, seconds=seconds, settings=TraceSettings(), traces=traces
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def change(store: Store, previous: Verdict | None, verdict: Verdict) -> Any:
    return store.events.add(
        vantage="v",
        site="v",
        target=TARGET,
        parity=Parity(target="app", probe="tcp", verdict=verdict),
        previous=previous,
        results=[
            result("ipv4", True, "198.51.100.9"),
            result("ipv6", False, "2001:db8::1", "2001:db8::9"),
        ],
    )


async def test_serve_traces_within_the_budget_and_the_cooldown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[list[tuple[str, str]]] = []

    async def traced(name: str, pairs: list[tuple[str, str]], *a: Any, **k: Any) -> TargetTrace:
        asked.append(pairs)
        return fake_trace()

    monkeypatch.setattr(tracing, "trace_target", traced)
    store = Store(vantage="v")
    store.set_targets({"app": TARGET, "app2": TARGET})
    clock = Clock()
    tracer = tracing.Tracer(store, clock=clock)
    from monitor.config import TraceConfig

    tracer.configure(TraceConfig(budget=2, cooldown=300), tracer.env)
    tracer.on_event(change(store, Verdict.OK, Verdict.IPV6_FAILED), TARGET)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # the failing IPv6 address, not the first one; IPv4's first
    assert asked == [[("ipv4", "198.51.100.9"), ("ipv6", "2001:db8::9")]]
    tracer.on_event(change(store, Verdict.IPV6_FAILED, Verdict.IPV6_FAILED), TARGET)  # no change
    tracer.on_event(change(store, Verdict.OK, Verdict.IPV6_FAILED), TARGET)  # cooldown
    tracer.on_event(change(store, Verdict.IPV6_FAILED, Verdict.OK), TARGET)  # recovered: runs
    other = Target(name="app2", service="alb", region="us-east-1", host="b.example.com")
    tracer.on_event(change(store, Verdict.OK, Verdict.IPV6_FAILED), other)  # over budget
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert store.trace_runs == {"traced": 2, "cooldown": 1, "over_budget": 1}
    clock.now += 61  # a new minute
    tracer.on_event(change(store, Verdict.OK, Verdict.IPV6_FAILED), other)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert store.trace_runs["traced"] == 3 and tracer.running == 0
    assert store.path_blame == {
        (name, family): blame
        for name in ("app", "app2")
        for family, blame in (("ipv4", "none"), ("ipv6", "transit"))
    }
    [first, *_] = [e for e in store.events.events() if e.type == "trace"]
    doc = first.to_json()
    assert doc["type"] == "trace" and doc["about"] == 1 and doc["results"] == []
    assert doc["trace"]["blame"] == {"ipv4": "none", "ipv6": "transit"}
    assert doc["from"] == "ok" and doc["to"] == "ipv6_failed"


def test_the_blame_metric_is_one_hot() -> None:
    store = Store(vantage="v")
    store.set_targets({"app": TARGET})
    store.path_blame[("app", "ipv6")] = "aws_edge"
    [metric] = [m for m in metrics() if m.name == "dualstack_path_blame"]
    samples = {tuple(labels)[-1]: v for labels, v in metric.samples(store.snapshot())}
    assert samples == {b: float(b == "aws_edge") for b in BLAMES}
    store.set_targets({})
    assert store.path_blame == {}


def test_trace_events_are_numbered_and_point_at_their_change(tmp_path: Path) -> None:
    log = EventLog(file=str(tmp_path / "events.jsonl"), clock=lambda: 1_700_000_000.0)
    store = Store(vantage="v", events=log)
    store.set_targets({"app": TARGET})
    verdict_change = change(store, Verdict.OK, Verdict.IPV6_FAILED)
    log.add_trace(verdict_change, fake_trace())
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["seq"], e["type"], e.get("about")) for e in lines] == [
        (1, "verdict_change", None),
        (2, "trace", 1),
    ]


def test_probe_trace_a_name_that_does_not_resolve_is_one_line_and_exit_2(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", MISSING_HOST, "--config", str(lab_config_file)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"probe: {MISSING_HOST} has no ipv4 address (dns_nxdomain")


def test_probe_trace_no_address_of_the_family_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["trace", "127.0.0.1", "--family", "ipv6"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err
        == "probe: 127.0.0.1 has no ipv6 address (dns_no_address: 127.0.0.1 is an ipv4 address)\n"
    )


def test_probe_trace_on_loopback_reaches_in_one_hop(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "::1", "--family", "ipv6", "--max-hops", "3"]) == 0
    out = capsys.readouterr().out
    assert "trace ::1 over udp: at most 3 hops, 3 tries a hop" in out
    assert "(worst case 3 s)" in out and "  reached ::1 at hop 1\n" in out

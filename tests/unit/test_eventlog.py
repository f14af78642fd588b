"""The events kept at verdict changes (monitor/serve/events.py): the ring's limit and what it
counts, the JSON Lines file and its rotation, a file that cannot be written, which verdicts
make an event. The clock is injected: no sleeps."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from monitor.engine.parity import Thresholds, Verdict, judge
from monitor.engine.schema import report_schema
from monitor.serve.events import EventLog, is_event
from probes.base import ErrorKind, Family, ProbeError, ProbeResult, Target

TARGET = Target(name="s3-apne1", service="s3", region="ap-northeast-1", host="s3.example.com")
SCHEMA = report_schema()
RESULT_SCHEMA = {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/result"}
PARITY_SCHEMA = {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/parity"}


def result(family: Family, error: ProbeError | None = None) -> ProbeResult:
    return ProbeResult(
        target=TARGET.name,
        probe="tcp",
        family=family,
        address="::1" if family == "ipv6" else "127.0.0.1",  # routes the self-check finds
        success=error is None,
        duration_seconds=0.01,
        started=1_700_000_000.0,
        phases={"connect": 0.01},
        error=error,
    )


REFUSED = ProbeError(kind=ErrorKind.CONNECT_REFUSED, message="connection refused by [::1]")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def add(log: EventLog, *, broken: bool, previous: Verdict | None) -> None:
    v4, v6 = result("ipv4"), result("ipv6", REFUSED if broken else None)
    log.add(
        vantage="unit",
        site="lab",
        target=TARGET,
        parity=judge(TARGET, "tcp", v4, v6, thresholds=Thresholds()),
        previous=previous,
        results=(v4, v6),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_event_has_the_time_verdicts_and_both_results_as_probe_run_has_them(
    clock: Clock,
) -> None:
    log = EventLog(clock=clock)
    add(log, broken=True, previous=Verdict.OK)
    (event,) = log.events()
    doc: dict[str, Any] = event.to_json()
    assert doc["time"] == "2027-01-15T08:00:01.000Z"
    assert (doc["vantage"], doc["site"], doc["target"], doc["probe"]) == (
        "unit",
        "lab",
        "s3-apne1",
        "tcp",
    )
    assert (doc["from"], doc["to"]) == ("ok", "ipv6_failed")
    assert doc["reason"] == REFUSED.message
    assert [r["family"] for r in doc["results"]] == ["ipv4", "ipv6"]
    for r in doc["results"]:
        jsonschema.validate(r, RESULT_SCHEMA)
    jsonschema.validate(doc["parity"], PARITY_SCHEMA)
    assert doc["results"][1]["error"] == {
        "kind": "connect_refused",
        "message": REFUSED.message,
        "phase": REFUSED.phase,
    }
    assert doc["results"][1]["region"] == "ap-northeast-1"  # the target as configured


def test_the_ring_at_its_limit_drops_the_oldest_and_counts_it(clock: Clock) -> None:
    log = EventLog(keep=3, clock=clock)
    for i in range(5):
        add(log, broken=i % 2 == 0, previous=None)
    assert (log.total, log.dropped) == (5, 2)
    assert [e.time for e in log.events()] == [clock.now - 2, clock.now - 1, clock.now]
    log.configure(keep=2, file=None, max_bytes=1024)  # a reload keeping fewer: the newest stay
    assert [e.time for e in log.events()] == [clock.now - 1, clock.now]
    assert (log.total, log.dropped) == (5, 3)


def test_a_snapshot_of_the_ring_does_not_change_when_events_are_added(clock: Clock) -> None:
    log = EventLog(keep=2, clock=clock)
    add(log, broken=True, previous=None)
    before = log.events()
    add(log, broken=False, previous=Verdict.IPV6_FAILED)
    assert len(before) == 1 and len(log.events()) == 2


@pytest.mark.parametrize(
    ("previous", "new", "kept"),
    [
        (None, Verdict.OK, False),  # a healthy start is no news
        (None, Verdict.SKIPPED, False),  # nothing compared (families: [ipv4])
        (None, Verdict.IPV6_FAILED, True),  # a fresh vantage with a broken target
        (Verdict.OK, Verdict.IPV6_FAILED, True),
        (Verdict.IPV6_FAILED, Verdict.OK, True),
        (Verdict.IPV6_FAILED, Verdict.IPV6_FAILED, False),
    ],
)
def test_which_verdicts_are_events(previous: Verdict | None, new: Verdict, kept: bool) -> None:
    assert is_event(previous, new) is kept


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_file_holds_the_events_and_rotates_at_its_size(clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(file=str(path), clock=clock)
    try:
        add(log, broken=True, previous=Verdict.OK)
        assert lines(path) == [log.events()[0].to_json()]
        one = path.stat().st_size  # every event of this test is as long (the same texts)
        limit = 3 * one + one // 2
        log.configure(keep=100, file=str(path), max_bytes=limit)
        for _ in range(3):  # fills the first file (3 lines) and starts a second
            add(log, broken=True, previous=None)
        rotated = Path(f"{path}.1")
        assert rotated.stat().st_size <= limit and path.stat().st_size <= limit
        assert len(lines(rotated)) == 3 and len(lines(path)) == 1
        assert lines(rotated) + lines(path) == [e.to_json() for e in log.events()]
        for _ in range(3):  # a second rotation: one old file only, the oldest lines gone
            add(log, broken=True, previous=None)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "events.jsonl.1"]
        assert lines(rotated) == [e.to_json() for e in log.events()[3:6]]
        assert lines(path) == [log.events()[6].to_json()]
        assert log.write_errors == 0
    finally:
        log.close()


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="dualstack.vantage"):
        yield caplog


def test_an_unwritable_file_is_logged_once_and_counted(
    clock: Clock, tmp_path: Path, errors_logged: pytest.LogCaptureFixture
) -> None:
    a_file = tmp_path / "plain-file"
    a_file.write_text("")
    path = a_file / "events.jsonl"  # its parent is a file: ENOTDIR, even for root
    log = EventLog(keep=10, file=str(path), clock=clock)
    try:
        for _ in range(3):
            add(log, broken=True, previous=None)
        assert (log.total, log.write_errors, len(log.events())) == (3, 3, 3)
        failed = [r for r in errors_logged.records if "cannot write the events file" in r.message]
        assert len(failed) == 1
        log.configure(keep=10, file=str(tmp_path / "events.jsonl"), max_bytes=1 << 20)
        add(log, broken=False, previous=Verdict.IPV6_FAILED)  # reloaded to a good path: written
        assert len(lines(tmp_path / "events.jsonl")) == 1 and log.write_errors == 3
    finally:
        log.close()


def test_the_vantage_keeps_changes_and_its_external_url(tmp_path: Path) -> None:
    """Through `Vantage._record` as a job would: a healthy first verdict is no event, a change
    is; the snapshot carries what the metrics need; `external_url` falls back to the listen
    address the process gives."""
    from monitor.config import build, validate
    from monitor.serve.vantage import Vantage

    # a second target that works over IPv6: one failing is the target's, not the vantage's
    targets = [{"name": TARGET.name, "host": TARGET.host}, {"name": "fine", "host": "fine.test"}]
    model = validate({"vantage": "unit", "targets": targets}, "x")
    cfg = build(model, "x", base_dir=tmp_path)
    vantage = Vantage(cfg, default_external_url="http://127.0.0.1:9851")
    asyncio.run(vantage.apply(cfg))
    assert vantage.store.external_url == "http://127.0.0.1:9851"
    target = vantage.store.targets[TARGET.name]
    fine = vantage.store.targets["fine"]
    vantage._record(fine, "tcp", [replace(result(f), target="fine") for f in ("ipv4", "ipv6")])
    for broken in (False, True, True, False):
        vantage._record(
            target, "tcp", [result("ipv4"), result("ipv6", REFUSED if broken else None)]
        )
    snap = vantage.store.snapshot()
    assert [(e.previous, e.parity.verdict) for e in snap.events] == [
        (Verdict.OK, Verdict.IPV6_FAILED),
        (Verdict.IPV6_FAILED, Verdict.OK),
    ]
    assert (snap.events_total, snap.events_dropped, snap.events_write_errors) == (2, 0, 0)
    assert [r.family for r in snap.events[0].results] == ["ipv4", "ipv6"]
    assert snap.external_url == "http://127.0.0.1:9851"

    configured = build(
        validate(
            {"vantage": "unit", "external_url": "https://v.example.net/", "events": {"keep": 1}},
            "x",
        ),
        "x",
        base_dir=tmp_path,
    )
    asyncio.run(vantage.apply(configured))  # a reload
    snap = vantage.store.snapshot()
    assert snap.external_url == "https://v.example.net"
    assert (len(snap.events), snap.events_dropped) == (1, 1)

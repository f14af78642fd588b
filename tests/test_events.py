"""Events at verdict changes, end to end: a real `probe serve` on the lab, an IPv6 fault switched
on and off at run time (tests/faultproxy.py resets IPv6 connections, forwards IPv4). The API,
the status page and the JSON Lines file hold the `ok -> ipv6_failed` and `ipv6_failed -> ok`
events with both families' results; a file that cannot be written stops nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultproxy import fault_proxy
from polling import wait
from serving import Served, serve

from monitor.lab.loopback import LabFacts

Event = dict[str, Any]


def lab_vantage(lab: LabFacts, targets: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A small, fast configuration on the lab's DNS server and CA."""
    return {
        "vantage": "events",
        "interval": "1s",
        "timeout": "2s",
        "resolver": {"nameservers": ["::1"], "port": lab.dns_port},
        "tls": {"ca_file": str(lab.ca_file)},
        "targets": targets,
        # The trace a change to or from ipv6_failed starts follows it as an event of its own:
        # tests/test_trace_netns.py has those; here only the verdict changes.
        "trace": {"on_verdict_change": False},
        **extra,
    }


def events(served: Served, query: str) -> list[Event]:
    status, body = served.get(f"/api/v1/events?{query}")
    assert status == 200, body
    found: list[Event] = json.loads(body)["events"]
    return found


def change(found: list[Event], old: str | None, new: str) -> Event | None:
    """The newest event from `old` to `new`."""
    return next((e for e in found if (e["from"], e["to"]) == (old, new)), None)


def by_family(event: Event) -> dict[str, Event]:
    return {r["family"]: r for r in event["results"]}


def jsonl(path: Path) -> list[Event]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow(30)
def test_fault_on_and_off_leaves_both_events_in_the_api_the_page_and_the_file(
    lab_session: LabFacts, tmp_path: Path
) -> None:
    healthy = lab_session.endpoint("healthy")
    file = tmp_path / "events.jsonl"
    with fault_proxy(healthy.port) as proxy:
        target = {
            "name": "flaky",
            "service": "s3",
            "region": "ap-northeast-1",
            "host": healthy.host,  # ::1 and 127.0.0.1, both through the proxy's port
            "port": proxy.port,
            "probes": ["tls"],
        }
        config = tmp_path / "vantage.yml"
        # max_bytes below two events: the second rotates the first into events.jsonl.1
        cfg = lab_vantage(lab_session, [target], events={"file": str(file), "max_bytes": 1024})
        config.write_text(yaml.safe_dump(cfg))
        with serve(config) as served:
            served.wait_verdicts({("flaky", "tls"): "ok"})
            assert events(served, "target=flaky") == []  # a healthy start is no event

            proxy.ipv6_broken = True
            broke = wait(
                "ok -> ipv6_failed",
                lambda: change(events(served, "target=flaky&probe=tls"), "ok", "ipv6_failed"),
            )
            proxy.ipv6_broken = False
            mended = wait(
                "ipv6_failed -> ok",
                lambda: change(events(served, "target=flaky&probe=tls"), "ipv6_failed", "ok"),
            )
            newest = events(served, "target=flaky&probe=tls")
            page_status, page = served.get("/")
            metrics_status, _ = served.get("/metrics")

    assert newest[0] == mended and broke in newest  # newest first
    assert broke["time"] < mended["time"] and broke["time"].endswith("Z")
    assert (broke["vantage"], broke["site"], broke["target"], broke["probe"]) == (
        "events",
        "events",
        "flaky",
        "tls",
    )
    seen = by_family(broke)
    assert seen["ipv4"]["success"] is True and seen["ipv4"]["address"] == "127.0.0.1"
    assert seen["ipv6"]["success"] is False and seen["ipv6"]["address"] == "::1"
    assert seen["ipv6"]["error"]["kind"] == "connection_reset"  # the fault: RST on IPv6
    assert seen["ipv6"]["port"] == proxy.port and seen["ipv6"]["region"] == "ap-northeast-1"
    assert "phases" in seen["ipv6"] and "details" in seen["ipv6"]
    assert broke["parity"]["verdict"] == "ipv6_failed" == broke["to"]
    assert broke["reason"] == seen["ipv6"]["error"]["message"]
    after = by_family(mended)
    assert after["ipv6"]["success"] is True
    assert after["ipv6"]["details"]["certificate"]["sans"]  # what IPv6 presented once mended

    assert page_status == 200 and metrics_status == 200
    changes = page.split("<h2>Recent changes</h2>", 1)[1].split("</section>", 1)[0]
    assert 'data-target="flaky"' in changes
    assert 'data-probe="tls" data-from="ok" data-to="ipv6_failed"' in changes
    assert 'data-probe="tls" data-from="ipv6_failed" data-to="ok"' in changes
    assert "connection_reset" in changes
    assert "<script" not in page

    # The file holds the same events, the older ones rotated into events.jsonl.1 (one event
    # is over 1,024 bytes: each file holds one).
    written = jsonl(Path(f"{file}.1")) + jsonl(file)
    assert sorted(p.name for p in tmp_path.glob("events.jsonl*")) == [
        "events.jsonl",
        "events.jsonl.1",
    ]
    assert written[-1] == newest[0]
    assert written == list(reversed(newest))[-len(written) :]


@pytest.mark.slow(20)
def test_an_unwritable_events_file_stops_neither_probing_nor_metrics(
    lab_session: LabFacts, tmp_path: Path
) -> None:
    broken = lab_session.endpoint("v4_only")  # nothing listens on ::1: ipv6_failed from the start
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    config = tmp_path / "vantage.yml"
    target = {"name": "v4only", "host": broken.host, "port": broken.port, "probes": ["tls"]}
    cfg = lab_vantage(lab_session, [target], events={"file": str(a_file / "events.jsonl")})
    config.write_text(yaml.safe_dump(cfg))
    with serve(config) as served:
        served.wait_verdicts({("v4only", "tls"): "ipv6_failed"})
        # A first verdict that is not ok is an event: a fresh vantage keeps its evidence.
        (first,) = wait("the first event", lambda: events(served, "target=v4only"))
        assert (first["from"], first["to"]) == (None, "ipv6_failed")
        assert by_family(first)["ipv6"]["error"]["kind"] == "connect_refused"
        served.wait_event("events_write_failed")
        started = [r["started"] for r in json.loads(served.get("/api/v1/results")[1])["results"]]
        wait(  # probing goes on: newer results replace those
            "a later round",
            lambda: all(
                r["started"] not in started
                for r in json.loads(served.get("/api/v1/results")[1])["results"]
            ),
        )
        status, metrics = served.get("/metrics")
        assert status == 200 and "dualstack_probe_success" in metrics
        assert served.get("/readyz")[0] == 200
        assert len(served.events("events_write_failed")) == 1  # logged once
        assert not a_file.read_text()

"""End to end: the lab with an IPv6 fault injected on one endpoint, `probe serve` scraped by a
real Prometheus loaded with the shipped rules (only `for:` shortened), a real Alertmanager
delivering to a webhook sink on loopback. DualstackIPv6Down fires for exactly the faulty
target, the notification arrives, a vantage without IPv6 inhibits its per-target alerts,
and clearing the fault resolves the alert."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from faultproxy import fault_proxy
from promstack import alertmanager, prometheus, write_scrape_config
from serving import serve
from webhook import webhook_sink

from monitor.lab import Lab

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "configs" / "prometheus" / "rules"
SHORT_FOR = "5s"


def shortened_rules(dest: Path) -> list[Path]:
    """The shipped rule files with every `for:` set to SHORT_FOR; nothing else changes."""
    dest.mkdir()
    out = []
    for path in sorted(RULES.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = SHORT_FOR
        target = dest / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(target)
    return out


def wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_ipv6_down_fires_notifies_inhibits_and_resolves(lab_session: Lab, tmp_path: Path) -> None:
    healthy = lab_session.endpoint("healthy")
    with fault_proxy(healthy.port) as proxy, webhook_sink() as sink:
        proxy.ipv6_broken = True  # the fault: IPv6 connections reset, IPv4 forwarded
        config = tmp_path / "vantage.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "vantage": "e2e",
                    "interval": "2s",
                    "timeout": "2s",
                    "resolver": {"nameservers": ["::1"], "port": lab_session.dns_port},
                    "tls": {"ca_file": str(lab_session.ca_file)},
                    "targets": [
                        {
                            "name": "faulty",
                            "service": "alb",
                            "region": "us-east-1",
                            "host": healthy.host,
                            "port": proxy.port,
                            "probes": ["tcp", "tls", "http2"],
                        },
                        {
                            "name": "healthy",
                            "service": "alb",
                            "region": "us-east-1",
                            "host": healthy.host,
                            "port": healthy.port,
                            "probes": ["tcp", "tls", "http2"],
                        },
                    ],
                }
            )
        )
        am_config = tmp_path / "alertmanager.yml"
        am = yaml.safe_load((ROOT / "configs" / "alertmanager.yml").read_text())
        for receiver in am["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = f"http://127.0.0.1:{sink.port}/alerts"
        am_config.write_text(yaml.safe_dump(am))
        rules = shortened_rules(tmp_path / "rules")
        with serve(config) as served, alertmanager(am_config, tmp_path) as am_proc:
            prom_config = write_scrape_config(
                tmp_path / "prometheus.yml",
                [served.port],
                job="whatever",
                rule_files=[str(r) for r in rules],
                alerting={
                    "alertmanagers": [
                        {"static_configs": [{"targets": [f"127.0.0.1:{am_proc.port}"]}]}
                    ]
                },
            )
            with prometheus(prom_config, tmp_path) as prom:
                firing = wait(
                    "DualstackIPv6Down firing",
                    lambda: prom.query('ALERTS{alertname="DualstackIPv6Down",alertstate="firing"}'),
                    90,
                )
                time.sleep(5)  # let every probe of both targets be judged and evaluated
                firing = prom.query('ALERTS{alertstate="firing"}')
                names = {(a["metric"]["alertname"], a["metric"].get("target")) for a in firing}
                assert ("DualstackIPv6Down", "faulty") in names
                assert not [n for n in names if n[1] == "healthy"], names
                assert {
                    a["metric"]["probe"]
                    for a in firing
                    if a["metric"]["alertname"] == "DualstackIPv6Down"
                } == {"tls", "http2"}
                assert {n[0] for n in names} == {"DualstackIPv6Down"}, names

                # The notification arrives at the webhook (after the shipped group_wait).
                delivered = wait(
                    "the webhook notification",
                    lambda: [
                        a for a in sink.alerts() if a["labels"]["alertname"] == "DualstackIPv6Down"
                    ],
                    90,
                )
                assert {a["labels"]["target"] for a in delivered} == {"faulty"}
                assert delivered[0]["status"] == "firing"
                assert "faulty" in delivered[0]["annotations"]["description"]
                assert delivered[0]["annotations"]["runbook"].endswith("#dualstackipv6down")

                # A vantage without IPv6: its per-target alerts are inhibited in Alertmanager.
                now = datetime.now(UTC)
                ends = (now + timedelta(minutes=5)).isoformat()
                am_proc.post(
                    [
                        {
                            "labels": {
                                "alertname": "DualstackVantageIPv6Lost",
                                "vantage": "no-v6",
                                "severity": "warning",
                            },
                            "endsAt": ends,
                        },
                        {
                            "labels": {
                                "alertname": "DualstackIPv6Down",
                                "vantage": "no-v6",
                                "target": "faulty",
                                "probe": "tls",
                                "severity": "warning",
                            },
                            "endsAt": ends,
                        },
                    ],
                )
                suppressed = wait(
                    "the no-v6 vantage's DualstackIPv6Down to be inhibited",
                    lambda: [
                        a
                        for a in am_proc.alerts()
                        if a["labels"].get("vantage") == "no-v6"
                        and a["labels"]["alertname"] == "DualstackIPv6Down"
                        and a["status"]["inhibitedBy"]
                    ],
                    30,
                )
                assert suppressed[0]["status"]["state"] == "suppressed"
                ours = [a for a in am_proc.alerts() if a["labels"].get("vantage") == "e2e"]
                assert ours and all(a["status"]["state"] == "active" for a in ours)

                # Clear the fault: the alert resolves within about two minutes.
                proxy.ipv6_broken = False
                cleared_at = time.monotonic()
                wait(
                    "DualstackIPv6Down to resolve in Prometheus and Alertmanager",
                    lambda: (
                        not prom.query('ALERTS{alertname="DualstackIPv6Down"}')
                        and not [
                            a
                            for a in am_proc.alerts()
                            if a["labels"].get("vantage") == "e2e"
                            and a["labels"]["alertname"] == "DualstackIPv6Down"
                        ]
                    ),
                    120,
                )
                assert time.monotonic() - cleared_at < 120
                ok = prom.query('dualstack_parity{target="faulty",verdict="ok"} == 1')
                assert {s["metric"]["probe"] for s in ok} == {"tcp", "tls", "http2"}

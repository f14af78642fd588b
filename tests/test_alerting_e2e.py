"""End to end with the shipped rules and Alertmanager configuration, real Prometheus and
Alertmanager processes, and only `for:`, `keep_firing_for:` and Alertmanager's group timings
shortened.

- On loopback: the lab with an IPv6 fault injected on one endpoint, one `probe serve`.
  DualstackIPv6Down fires for exactly the faulty target, the notification arrives, a vantage
  without IPv6 inhibits its per-target alerts, and clearing the fault resolves the alert.
- In network namespaces (root): a site of two `probe serve` vantages behind a router, six
  dual-stack endpoints one hop beyond it, the webhook sink of docker-compose.yml counting the
  distinct notification groups each receiver gets. Three of the six endpoints' IPv6
  blackholed (an AWS incident: the other three prove the site's IPv6) is one notification
  group of per-target alerts and no site-wide alert; then the site's IPv6 broken at the
  router (every target fails at both vantages) is exactly one more; no warning reaches
  `pager`; the Watchdog reaches `deadman`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultproxy import fault_proxy
from lab.netns import inside, ip, namespace, python_in, veth
from polling import wait
from promstack import alertmanager, prometheus, write_scrape_config
from serving import serve
from webhook import webhook_sink

from monitor.lab.loopback import LabFacts

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "configs" / "prometheus" / "rules"
SHORT_FOR = "5s"
AS_SHIPPED = ("DualstackIPv6LatencyRegression",)
"""Alerts whose `for:` is never shortened. The latency one compares the p95 of a 10 m window,
which stays as shipped: shortened, one slow minute of IPv6 handshakes fires it, and on a machine
the suite loads, a lab where both families are one loopback server has such minutes (TLS and
HTTP phases are timed on the event loop). As shipped, its `for:` (15 m) outlasts its window and
every test; configs/prometheus/tests/latency.yml tests it."""


def seconds(text: str) -> float:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return float(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", text)))


def shortened_rules(dest: Path, *, scale: float | None = None) -> list[Path]:
    """The shipped rule files with every `for:` and `keep_firing_for:` shortened (but those of
    AS_SHIPPED): set to SHORT_FOR, or (with `scale`) multiplied by it, which keeps their order;
    nothing else changes."""
    dest.mkdir()
    out = []
    for path in sorted(RULES.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in AS_SHIPPED:
                    continue
                for key in ("for", "keep_firing_for"):
                    if key in rule:
                        short = max(1, round(seconds(rule[key]) * scale)) if scale else None
                        rule[key] = f"{short}s" if short else SHORT_FOR
        target = dest / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(target)
    return out


@pytest.mark.slow(50)
def test_ipv6_down_fires_notifies_inhibits_and_resolves(
    lab_session: LabFacts, tmp_path: Path
) -> None:
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
                firing = prom.query('ALERTS{alertstate="firing",alertname!="DualstackWatchdog"}')
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
                assert delivered[0]["annotations"]["runbook_url"].endswith("#dualstackipv6down")

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


# --- one site, two vantages, in network namespaces ----------------------------------------------

SINK = ROOT / "configs" / "compose" / "webhook-sink.py"
SITE = "lab-site"
VANTAGES = ("e2e-a", "e2e-b")
# Six dual-stack endpoints beyond the router: name -> (IPv4, IPv6).
ENDPOINTS = {
    f"ep{i}.example.com": (f"198.51.100.{10 + i}", f"2001:db8:1::{10 + i}") for i in range(1, 7)
}
BLACKHOLED = ("ep1.example.com", "ep2.example.com", "ep3.example.com")
"""Half the site's endpoints lose IPv6 (an AWS incident): per-target pages, never the site."""
DOWN = {"ep1", "ep2", "ep3"}
DNS_ADDR = "198.51.100.53"
# for: and keep_firing_for: x 1/20 (5m -> 15s, 2m -> 6s): their order is kept, which is what
# the inhibitions rely on. Windows of the expressions (last_over_time, ratios) stay as shipped.
SCALE = 1 / 20
GROUP_WAIT, GROUP_INTERVAL = "1s", "2s"
SETTLE = 8.0  # seconds of quiet (4 group intervals) before a count is taken as final

SERVERS = """
import asyncio, json, sys
from monitor.lab.dnsserver import DnsRecord, DnsServer

ENDPOINTS = json.loads(sys.argv[1])

async def accept(reader, writer):
    writer.close()

async def main():
    soa = "ns.example.com. h.example.com. 1 1 1 1 1"
    records = {"example.com": [DnsRecord(rtype="SOA", value=soa)]}
    for name, (v4, v6) in ENDPOINTS.items():
        records[name] = [DnsRecord(rtype="A", value=v4, ttl=5),
                         DnsRecord(rtype="AAAA", value=v6, ttl=5)]
    async with DnsServer(records, ["example.com"], hosts=(sys.argv[2],), port=53):
        servers = [await asyncio.start_server(accept, host, 443)
                   for pair in ENDPOINTS.values() for host in pair]
        print("ready", flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


def nft(ns: str, script: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )


def short_alertmanager_config(dest: Path, sink_port: int) -> Path:
    """The shipped configuration, every receiver posting to the sink (same path), group_wait
    and group_interval shortened (0s stays 0s); nothing else changes."""
    doc = yaml.safe_load((ROOT / "configs" / "alertmanager.yml").read_text())

    def shorten(route: dict[str, Any]) -> None:
        if route.get("group_wait", "0s") != "0s":
            route["group_wait"] = GROUP_WAIT
        if "group_interval" in route:
            route["group_interval"] = GROUP_INTERVAL
        for child in route.get("routes", []):
            shorten(child)

    shorten(doc["route"])
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            path = hook["url"].split("/", 3)[3]
            hook["url"] = f"http://127.0.0.1:{sink_port}/{path}"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def vantage_config(path: Path, name: str) -> Path:
    targets = [
        {
            "name": host.split(".")[0],
            "service": "alb",
            "region": "us-east-1",
            "host": host,
            "port": 443,
            "probes": ["tcp"],
        }
        for host in ENDPOINTS
    ]
    doc = {
        "vantage": name,
        "site": SITE,
        "interval": "2s",
        "timeout": "1s",
        "resolver": {"nameservers": [DNS_ADDR]},
        "targets": targets,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def site_scenario(tmp_path: Path, router: str) -> dict[str, Any]:
    """Runs inside the site's namespace: the vantages, Prometheus, Alertmanager and the sink
    all live on its loopback. Returns what it measured."""
    figures: dict[str, Any] = {}
    sink_proc = subprocess.Popen(
        [sys.executable, str(SINK), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sink_proc.stdout is not None
        sink_port = json.loads(sink_proc.stdout.readline())["port"]

        def groups(receiver: str) -> list[str]:
            summary = get_json(f"http://127.0.0.1:{sink_port}/")
            return list(summary.get(receiver, {}).get("group_keys", []))

        am_config = short_alertmanager_config(tmp_path / "alertmanager.yml", sink_port)
        rules = shortened_rules(tmp_path / "rules", scale=SCALE)
        configs = [vantage_config(tmp_path / f"{v}.yml", v) for v in VANTAGES]
        with (
            serve(configs[0]) as va,
            serve(configs[1]) as vb,
            alertmanager(am_config, tmp_path) as am,
        ):
            prom_config = tmp_path / "prometheus.yml"
            doc: dict[str, Any] = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(r) for r in rules],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am.port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "dualstack",
                        "static_configs": [
                            {"targets": [f"127.0.0.1:{va.port}", f"127.0.0.1:{vb.port}"]}
                        ],
                    },
                    {"job_name": "alertmanager", "static_configs": [{"targets": [am.url[7:]]}]},
                ],
            }
            # Firing alerts are re-sent every 2 s instead of every minute: the Watchdog fires at
            # the first evaluation, before Prometheus has found its Alertmanager.
            with prometheus(
                write_scrape_config(prom_config, [], **doc),
                tmp_path,
                "--rules.alert.resend-delay=2s",
            ) as prom:
                # Prometheus scrapes itself too, as configs/prometheus/prometheus.yml does.
                doc["scrape_configs"].append(
                    {"job_name": "prometheus", "static_configs": [{"targets": [prom.url[7:]]}]}
                )
                prom_config.write_text(yaml.safe_dump(doc))
                urllib.request.urlopen(
                    urllib.request.Request(f"{prom.url}/-/reload", method="POST"), timeout=10
                ).close()
                started = time.monotonic()

                def detail() -> str:
                    return (
                        f"sink: {get_json(f'http://127.0.0.1:{sink_port}/')}\n"
                        f"alertmanager: {am.alerts()}\n{am.log.read_text()[-3000:]}\n"
                        f"prometheus: {prom.query('ALERTS')}\n"
                        f"{prom.get('/api/v1/alertmanagers')}\n{prom.log.read_text()[-1500:]}"
                    )

                # Baseline: all six endpoints ok at both vantages, both of one site.
                prom.wait_for('dualstack_parity{verdict="ok"} == 1', timeout=60, min_results=12)
                info = prom.wait_for("dualstack:vantage_site:info", min_results=2)
                assert {(r["metric"]["vantage"], r["metric"]["site"]) for r in info} == {
                    (v, SITE) for v in VANTAGES
                }
                watchdog = wait("the Watchdog at deadman", lambda: groups("deadman"), 30, detail)
                assert len(watchdog) == 1 and "DualstackWatchdog" in watchdog[0], watchdog
                assert groups("ticket") == [] and groups("pager") == []

                # Phase 1: three of the six endpoints' IPv6 blackholed (dropped at the router),
                # as in an AWS incident: the three others prove the site's IPv6 works.
                drops = "".join(f"    ip6 daddr {ENDPOINTS[h][1]} drop\n" for h in BLACKHOLED)
                nft(
                    router,
                    "table inet e2e {\n"
                    "  chain breakage { type filter hook forward priority 0; policy accept;\n"
                    f"{drops}"
                    "  }\n}\n",
                )
                phase1 = time.monotonic()
                wait(
                    "DualstackIPv6Down for ep1, ep2 and ep3 at both vantages",
                    lambda: (
                        len(prom.query('ALERTS{alertname="DualstackIPv6Down",alertstate="firing"}'))
                        >= 2 * len(BLACKHOLED)
                    ),
                    60,
                )
                first = wait("a ticket notification", lambda: groups("ticket"), 30)
                time.sleep(SETTLE)
                firing = prom.query('ALERTS{alertstate="firing",alertname!="DualstackWatchdog"}')
                # Per target, and nothing site-wide: no DownEverywhere, no Degraded, no Lost.
                assert {(a["metric"]["alertname"], a["metric"].get("target")) for a in firing} == {
                    ("DualstackIPv6Down", t) for t in DOWN
                }, firing
                figures["phase1_ticket_groups"] = groups("ticket")
                figures["phase1_seconds"] = round(time.monotonic() - phase1, 1)
                assert figures["phase1_ticket_groups"] == first and len(first) == 1, first
                assert 'alertname="DualstackIPv6Down"' in first[0], first
                assert groups("pager") == []

                # Phase 2: the site's IPv6 breaks one hop away: every target fails at both.
                nft(router, "add rule inet e2e breakage meta nfproto ipv6 drop\n")
                phase2 = time.monotonic()
                wait(
                    "DualstackIPv6DownEverywhere",
                    lambda: prom.query(
                        'ALERTS{alertname="DualstackIPv6DownEverywhere",alertstate="firing"}'
                    ),
                    60,
                )
                wait("a second ticket group", lambda: len(groups("ticket")) >= 2, 30)
                # Each vantage judges itself: every target with native IPv6 fails over IPv6
                # while IPv4 works, so its IPv6 is broken here, not AWS's (issue 10).
                for served in (va, vb):
                    wait(
                        f"{served.url}: vantage_ipv6_reason ipv6_broken",
                        lambda s=served: (
                            json.loads(s.get("/api/v1/results")[1])["vantage_ipv6_reason"]
                            == "ipv6_broken"
                        ),
                        30,
                    )
                lost = wait(
                    "DualstackVantageIPv6Lost at both vantages",
                    lambda: (
                        len(
                            prom.query(
                                'ALERTS{alertname="DualstackVantageIPv6Lost",alertstate="firing"}'
                            )
                        )
                        == 2
                    ),
                    60,
                )
                assert lost
                # The per-target alerts stay silent: no endpoint but those blackholed before
                # the site broke (their alerts still in keep_firing_for) ever fires.
                downs = prom.query('ALERTS{alertname="DualstackIPv6Down"}')
                assert {a["metric"]["target"] for a in downs} <= DOWN, downs
                # probe run from the site: exit 3, IPv6 broken here, no per-target failure.
                run = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "monitor.cli",
                        "run",
                        "--config",
                        str(configs[0]),
                        "--format",
                        "json",
                        "--samples",
                        "1",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert run.returncode == 3, run.stdout + run.stderr
                report = json.loads(run.stdout)
                assert report["vantage_ipv6"] is False
                assert report["vantage_ipv6_reason"] == "ipv6_broken"
                assert {p["verdict"] for p in report["parity"]} == {"skipped"}
                time.sleep(SETTLE)
                # Alertmanager mutes the vantage alerts with the one site-wide alert.
                vantage_alerts = [
                    a for a in am.alerts() if a["labels"]["alertname"] == "DualstackVantageIPv6Lost"
                ]
                assert len(vantage_alerts) == 2 and all(
                    a["status"]["state"] == "suppressed" for a in vantage_alerts
                ), vantage_alerts
                downs = prom.query('ALERTS{alertname="DualstackIPv6Down"}')
                assert {a["metric"]["target"] for a in downs} <= DOWN, downs
                tickets = groups("ticket")
                figures["phase2_ticket_groups"] = tickets
                figures["phase2_seconds"] = round(time.monotonic() - phase2, 1)
                assert len(tickets) == 2 and tickets[0] == first[0], tickets
                assert f'site="{SITE}"' in tickets[1], tickets
                assert groups("pager") == [], "a warning reached the pager"
                assert groups("deadman") == watchdog
                # The rules evaluate without error against real series.
                broken = [
                    (r["name"], r.get("lastError"))
                    for g in prom.get("/api/v1/rules")["data"]["groups"]
                    for r in g["rules"]
                    if r.get("health") == "err"
                ]
                assert broken == []

                # Phase 3: the site's IPv6 comes back: the vantages clear at once, and every
                # alert resolves (after its keep_firing_for), none of them per target.
                nft(router, "delete table inet e2e\n")
                phase3 = time.monotonic()
                for served in (va, vb):
                    wait(
                        f"{served.url}: IPv6 fine again",
                        lambda s=served: (
                            json.loads(s.get("/api/v1/results")[1])["vantage_ipv6"] is True
                        ),
                        30,
                    )
                wait(
                    "every alert but the Watchdog resolved",
                    lambda: (
                        not prom.query('ALERTS{alertstate="firing",alertname!="DualstackWatchdog"}')
                    ),
                    90,
                    detail,
                )
                downs = prom.query('ALERTS{alertname="DualstackIPv6Down"}')
                assert {a["metric"]["target"] for a in downs} <= DOWN, downs
                figures["phase3_seconds"] = round(time.monotonic() - phase3, 1)
                figures["scenario_seconds"] = round(time.monotonic() - started, 1)
    finally:
        sink_proc.terminate()
        sink_proc.wait(timeout=10)
        if sink_proc.stdout is not None:
            sink_proc.stdout.close()
    return figures


@pytest.mark.slow(100)
@pytest.mark.netns
def test_one_site_two_vantages_one_notification_per_incident(tmp_path: Path) -> None:
    with (
        namespace("ds-srv") as srv,
        namespace("ds-rtr") as rtr,
        namespace("ds-site") as site,
    ):
        veth(
            srv,
            [
                "198.51.100.2/24",
                f"{DNS_ADDR}/24",
                "2001:db8:1::2/64",
                *(f"{v4}/24" for v4, _ in ENDPOINTS.values()),
                *(f"{v6}/64" for _, v6 in ENDPOINTS.values()),
            ],
            rtr,
            ["198.51.100.1/24", "2001:db8:1::1/64"],
        )
        veth(
            site,
            ["203.0.113.2/24", "2001:db8:a::2/64"],
            rtr,
            ["203.0.113.1/24", "2001:db8:a::1/64"],
        )
        for ns, v4, v6 in (
            (srv, "198.51.100.1", "2001:db8:1::1"),
            (site, "203.0.113.1", "2001:db8:a::1"),
        ):
            ip("route", "add", "default", "via", v4, netns=ns.name)
            ip("-6", "route", "add", "default", "via", v6, netns=ns.name)
        subprocess.run(
            [
                *rtr.exec_prefix(),
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        with python_in(srv, SERVERS, json.dumps(ENDPOINTS), DNS_ADDR), inside(site) as there:
            figures = there.submit(site_scenario, tmp_path, rtr.name).result(timeout=400)
    print(f"\nfigures: {figures}")
    assert figures["scenario_seconds"] < 240

"""The central path of docs/scale.md natively on loopback (no Docker): one vantage in 2 shards x
2 replicas of `probe serve` against the lab, each replica with its own vmagent (the shipped
configs/central/vmagent.yml) remote-writing to one VictoriaMetrics with deduplication (and the
shipped -relabelConfig that drops the agents' `replica` label); vmalert evaluates the shipped
rules (the copy scripts/gen_central_rules.py makes for vmalert 1.79, from the shipped files,
with `for:` and `keep_firing_for:` shortened as in tests/test_alerting_e2e.py) and notifies the
shipped Alertmanager configuration, which posts to the compose stack's webhook sink.

- An IPv6 fault on one target fires DualstackIPv6Down once per probe, not once per replica,
  in one notification group.
- Every series is in the central store once: what one replica of each shard exposes, no more.
- Killing one replica of a shard changes nothing: no gap in the shard's series, no alert.
- Killing the other one too fires DualstackVantageDown for that shard, and no IPv6 alert.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboards import panel_queries
from faultproxy import fault_proxy
from polling import wait
from prometheus_client.parser import text_string_to_metric_families
from promstack import alertmanager
from serving import Served, serve
from test_alerting_e2e import (
    AS_SHIPPED,
    SINK,
    short_alertmanager_config,
    shortened_rules,
)
from vmstack import VictoriaMetrics, stop, victoria_metrics, vmagent, vmalert

from monitor.lab.loopback import Lab
from monitor.sharding import shard_of

ROOT = Path(__file__).resolve().parents[1]
CENTRAL = ROOT / "configs" / "central"
GENERATOR = ROOT / "scripts" / "gen_central_rules.py"
VANTAGE = "lab-central"
SHARDS = 2
SCRAPE = 2  # seconds: the agents' scrape interval, the store's dedup interval, vmalert's
TARGETS = ("faulty", "ok-a", "ok-b", "ok-c", "ok-d", "ok-e")
PROBES = ["tcp", "tls"]
SCALE = 1 / 20  # for: and keep_firing_for: x 1/20, as in tests/test_alerting_e2e.py


def vantage_config(path: Path, lab: Lab, proxy_port: int) -> Path:
    healthy = lab.endpoint("healthy")
    targets = [
        {
            "name": name,
            "service": "alb",
            "region": "us-east-1",
            "host": healthy.host,
            "port": proxy_port if name == "faulty" else healthy.port,
            # The faulty one: tls only, which its IPv6 fault fails (its tcp connects, then is
            # reset: a success whose latency means nothing).
            "probes": ["tls"] if name == "faulty" else PROBES,
        }
        for name in TARGETS
    ]
    doc = {
        "vantage": VANTAGE,
        "interval": f"{SCRAPE}s",
        "timeout": "1s",
        "resolver": {"nameservers": ["::1"], "port": lab.dns_port},
        "tls": {"ca_file": str(lab.ca_file)},
        "sharding": {"count": SHARDS, "index": 0},  # each process: --shard I/2
        # Replicas behind one address (docs/scale.md): one external_url, so that the replicas
        # of a shard expose the same series (the default is each process's own --listen).
        "external_url": "http://vantage.example.com:9851",
        "targets": targets,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def agent_config(dest: Path, replica: Served, number: int) -> Path:
    """The shipped vmagent config, scraping this replica (and nothing else) every SCRAPE s, at
    its own offset in the interval as docs/scale.md says: replica 1 a quarter, replica 0 three
    quarters (the later one wins every interval of the store's deduplication)."""
    doc = yaml.safe_load((CENTRAL / "vmagent.yml").read_text())
    doc["global"].update(scrape_interval=f"{SCRAPE}s", scrape_timeout=f"{SCRAPE / 4}s")
    [job] = doc["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{replica.port}"]}]
    job["scrape_offset"] = f"{int(SCRAPE * 1000 * (0.75 if number == 0 else 0.25))}ms"
    dest.write_text(yaml.safe_dump(doc))
    return dest


def central_rules(workdir: Path) -> list[Path]:
    short = shortened_rules(workdir / "short", scale=SCALE)
    out = workdir / "central-rules"
    subprocess.run(
        [sys.executable, str(GENERATOR), "--rules-dir", str(short[0].parent), "--output", str(out)],
        check=True,
        timeout=60,
    )
    return sorted(out.glob("*.yml"))


@contextmanager
def webhook_sink() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(SINK), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield int(json.loads(proc.stdout.readline())["port"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def exposed(replica: Served) -> set[tuple[tuple[str, str], ...]]:
    """Every series one replica exposes, as the agent sends it (no `instance`, job added)."""
    status, text = replica.get("/metrics")
    assert status == 200
    out = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            labels = {**s.labels, "__name__": s.name, "job": "dualstack"}
            out.add(tuple(sorted(labels.items())))
    return out


def stored(vm: VictoriaMetrics) -> list[tuple[tuple[str, str], ...]]:
    """Every dualstack_* series the store has had today (not the rules' dualstack:...)."""
    vm.flush()
    rows = vm.series('{__name__=~"dualstack_[a-z0-9_]+"}')
    return [tuple(sorted(r.items())) for r in rows]


def samples(vm: VictoriaMetrics, match: str, start: float) -> list[tuple[float, float]]:
    vm.flush()
    [series] = vm.export(match, start=start)
    return [
        (t / 1000, float(v)) for t, v in zip(series["timestamps"], series["values"], strict=True)
    ]


def firing(vm: VictoriaMetrics, name: str) -> list[dict[str, str]]:
    return [r["metric"] for r in vm.query(f'ALERTS{{alertname="{name}",alertstate="firing"}}')]


def latency_p95(vm: VictoriaMetrics, target: str) -> dict[str, list[str]]:
    """(probe, family) -> the recorded 10m p95 and the successes behind it, for a failure's
    report."""
    out: dict[str, list[str]] = {}
    for expr in (
        f'dualstack:probe_latency_seconds:p95_10m{{target="{target}"}}',
        "sum by (probe, family) ("
        f'increase(dualstack_probe_latency_seconds_count{{target="{target}"}}[10m]))',
    ):
        for r in vm.query(expr):
            key = f"{r['metric'].get('probe')}/{r['metric'].get('family')}"
            out.setdefault(key, []).append(r["value"][1])
    return out


NOT_HERE = ("DualstackWatchdog", *AS_SHIPPED)
"""Alerts `active` leaves out: the Watchdog always fires, and the latency comparison (its `for:`
as shipped, see AS_SHIPPED) can be pending here after one slow minute of IPv6 handshakes, as a
CI run saw for ok-d, but cannot fire within the test."""


def active(vm: VictoriaMetrics) -> set[tuple[str, str, str]]:
    """(alertname, target or shard, state) of every pending or firing alert but NOT_HERE."""
    names = "|".join(NOT_HERE)
    rows = vm.query(f'ALERTS{{alertname!~"{names}"}}')
    return {
        (
            r["metric"]["alertname"],
            r["metric"].get("target") or r["metric"].get("shard", ""),
            r["metric"]["alertstate"],
        )
        for r in rows
    }


@pytest.mark.slow(110)
def test_two_shards_two_replicas_one_central_store(lab_session: Lab, tmp_path: Path) -> None:
    with ExitStack() as stack:
        proxy = stack.enter_context(fault_proxy(lab_session.endpoint("healthy").port))
        config = vantage_config(tmp_path / "vantage.yml", lab_session, proxy.port)
        owner = {name: shard_of(name, SHARDS) for name in TARGETS}
        assert set(owner.values()) == set(range(SHARDS)), owner
        faulty_shard = owner["faulty"]
        other = 1 - faulty_shard

        vm = stack.enter_context(
            victoria_metrics(
                tmp_path,
                f"-dedup.minScrapeInterval={SCRAPE}s",
                f"-relabelConfig={CENTRAL / 'victoria-metrics-relabel.yml'}",
            )
        )
        sink_port = stack.enter_context(webhook_sink())
        am = stack.enter_context(
            alertmanager(short_alertmanager_config(tmp_path / "am.yml", sink_port), tmp_path)
        )

        def groups(receiver: str) -> list[str]:
            got = get_json(f"http://127.0.0.1:{sink_port}/").get(receiver, {})
            return list(got.get("group_keys", []))

        replicas: dict[tuple[int, int], Served] = {}
        agents = {}
        for shard in range(SHARDS):
            for r in range(2):
                served = stack.enter_context(serve(config, "--shard", f"{shard}/{SHARDS}"))
                replicas[(shard, r)] = served
                agents[(shard, r)] = stack.enter_context(
                    vmagent(
                        agent_config(tmp_path / f"agent-{shard}-{r}.yml", served, r),
                        tmp_path,
                        vm.url,
                        f"-remoteWrite.label=replica=shard{shard}-r{r}",
                        "-promscrape.noStaleMarkers",
                    )
                )
        rules = central_rules(tmp_path)
        alerter = stack.enter_context(
            vmalert(
                rules,
                tmp_path,
                vm.url,
                am.url,
                f"-evaluationInterval={SCRAPE}s",
                f"-datasource.queryStep={SCRAPE}s",
                "-remoteWrite.flushInterval=1s",
            )
        )

        def detail() -> str:
            return (
                f"sink: {get_json(f'http://127.0.0.1:{sink_port}/')}\n"
                f"alerts: {sorted(active(vm))}\nalertmanager: {am.alerts()}\n"
                f"faulty p95: {latency_p95(vm, 'faulty')}\n"
                f"vmalert: {alerter.log.read_text()[-3000:]}"
            )

        # Baseline: every target judged ok, centrally; the Watchdog made it to `deadman`.
        wait(
            "every (target, probe) ok in the central store",
            lambda: (
                len(vm.query('dualstack_parity{verdict="ok"} == 1'))
                == (len(TARGETS) - 1) * len(PROBES) + 1
            ),
            90,
            detail,
        )
        wait("the Watchdog at deadman", lambda: groups("deadman"), 60, detail)
        assert not active(vm), detail()
        # Every rule of the copy evaluates without error against the real series.
        broken = [
            (r["name"], r["lastError"])
            for g in get_json(f"{alerter.url}/api/v1/rules")["data"]["groups"]
            for r in g["rules"]
            if r.get("health") == "err" or r.get("lastError")
        ]
        assert broken == []

        # Every series once: the union of what one replica of each shard exposes.
        for served in replicas.values():
            served.wait_ready(timeout=30)
        time.sleep(3 * SCRAPE)
        steady = time.time()  # every replica has been pushing for a while
        expected = exposed(replicas[(0, 0)]) | exposed(replicas[(1, 0)])
        assert expected == exposed(replicas[(0, 1)]) | exposed(replicas[(1, 1)])
        rows = stored(vm)
        assert len(rows) == len(set(rows))
        assert set(rows) == expected, set(rows) ^ expected
        assert not [r for r in rows if {"replica", "instance"} & {k for k, _ in r}]
        # One sample per dedup interval, though two replicas push each series. The store's
        # intervals are discrete, (k-1)*SCRAPE < t <= k*SCRAPE in milliseconds, and it keeps the
        # latest sample of each; neighbours may sit closer than SCRAPE across a boundary.
        recent = samples(vm, f'dualstack_shard_info{{shard="{other}"}}', time.time() - 20)
        step = SCRAPE * 1000
        buckets = [-(-round(t * 1000) // step) for t, _ in recent]
        assert len(recent) >= 5 and len(buckets) == len(set(buckets)), recent

        # An IPv6 fault on one target: DualstackIPv6Down once per probe, one notification.
        proxy.ipv6_broken = True
        wait("DualstackIPv6Down", lambda: firing(vm, "DualstackIPv6Down"), 90, detail)
        wait("a ticket", lambda: groups("ticket"), 60, detail)
        time.sleep(4 * SCRAPE)
        downs = [a for a in am.alerts() if a["labels"]["alertname"] == "DualstackIPv6Down"]
        assert [(a["labels"]["target"], a["labels"]["probe"]) for a in downs] == [
            ("faulty", "tls")
        ], downs
        assert {(a, t) for a, t, _ in active(vm)} == {("DualstackIPv6Down", "faulty")}, detail()
        tickets = groups("ticket")
        assert len(tickets) == 1 and "DualstackIPv6Down" in tickets[0], tickets
        before = active(vm)

        # The dashboards read the central store: every panel query is valid MetricsQL, and the
        # parity matrix shows the fault.
        for q in panel_queries():
            vm.query(q.expr)  # asserts success
        [matrix] = [
            q
            for q in panel_queries()
            if q.panel == "Verdict per target and probe" and 'probe="tls"' in q.expr
        ]
        cells = {r["metric"]["target"]: r["value"][1] for r in vm.query(matrix.expr)}
        assert cells == {**dict.fromkeys(TARGETS, "0"), "faulty": "7"}, cells

        # One replica of the other shard gone (the one whose samples the store keeps): nothing
        # changes.
        stop(replicas[(other, 0)].proc)
        killed = time.time()
        time.sleep(10 * SCRAPE)
        assert active(vm) == before, detail()
        assert groups("ticket") == tickets
        for match in (
            f'dualstack_shard_info{{shard="{other}"}}',
            f'dualstack_build_info{{shard="{other}"}}',
            *(
                f'dualstack_probe_success{{target="{t}",probe="tcp",family="ipv6"}}'
                for t in TARGETS
                if owner[t] == other
            ),
        ):
            kept = samples(vm, match, killed - 4 * SCRAPE)
            times = [t for t, _ in kept]
            assert times[-1] > time.time() - 3 * SCRAPE, (match, kept)
            steps = [b - a for a, b in itertools.pairwise(times)]
            assert max(steps) <= 2 * SCRAPE + 0.5, (match, kept)  # no gap
            assert not [v for _, v in kept if math.isnan(v)], (match, kept)  # no stale marker

        # The pair's counters hardly interleave: the store keeps the last sample of each
        # interval, and one replica's agent scrapes later in the interval than the other's, so
        # one replica wins nearly every interval. A failover is one counter reset more. (Since
        # both were up: until then the first replica up wins, then the later-scraping one.) On
        # a loaded machine the agents' scrape times jitter and the order can flip once: one
        # reset (seen at load 4), which docs/scale.md states.
        def resets(shard: int) -> float:
            names = "|".join(t for t in TARGETS if owner[t] == shard)
            since = f"{int(time.time() - steady)}s"
            expr = f'max(resets(dualstack_probe_runs_total{{target=~"{names}"}}[{since}]))'
            return float(vm.query(expr)[0]["value"][1])

        figures: dict[str, float] = {
            "resets_pair": resets(faulty_shard),
            "resets_failover": resets(other),
        }
        assert figures["resets_pair"] <= 1 and figures["resets_failover"] <= 2, figures

        # Both replicas of that shard gone: the shard is down, and nothing else is said.
        stop(replicas[(other, 1)].proc)
        gone = time.monotonic()
        down = wait(
            "DualstackVantageDown for the shard",
            lambda: firing(vm, "DualstackVantageDown"),
            120,
            detail,
        )
        assert [(d["vantage"], d["shard"], d["shards"]) for d in down] == [
            (VANTAGE, str(other), str(SHARDS))
        ]
        wait("the vantage-down notification", lambda: len(groups("ticket")) == 2, 60, detail)
        time.sleep(4 * SCRAPE)
        # Firing ones (a pending one may come and go on a loaded machine); nothing but these
        # two is notified, checked below.
        names = {(a, t) for a, t, state in active(vm) if state == "firing"}
        assert names == {("DualstackIPv6Down", "faulty"), ("DualstackVantageDown", str(other))}, (
            detail()
        )
        assert groups("pager") == []
        assert len(groups("ticket")) == 2
        figures["shard_down_seconds"] = round(time.monotonic() - gone, 1)
        print(f"figures: {figures}")

"""Capacity of the central path (docs/scale.md), run by hand (never part of the test suite).

N synthetic vantages' worth of series go through the central path: vmagent scrapes them every
--scrape seconds and remote-writes to one VictoriaMetrics (the flags of the compose profile
`central`), vmalert evaluates configs/central/rules every --scrape seconds. The series are the
real exporter's (monitor.serve.exporter.StoreCollector over a monitor.serve.state.Store): each
synthetic vantage's store is fed, every --interval seconds, results copied from one real
`probe run` round against the lab (its `healthy` endpoint, and `v4_only` for a --failing share
of the targets), renamed to --targets synthetic targets with --probes each, timings jittered.
One Python process cannot render 50 vantages' pages every 15 s, so --distinct (5) stores are
fed and rendered, and vantage i is served the page of store i % 5 with its own `vantage` and
`site` values: every series is still the exporter's, with the same values as its store's.

For each N (--vantages, default 1 10 50), on a fresh store: --warmup seconds, then --measure
seconds over which it takes the store's ingest (rows inserted per second), vmagent's
remote-write bytes per second, the store's series, resident memory and CPU, vmalert's mean
evaluation time per rule group, and then the latency of every query of the parity dashboard
(instant, and over the data the run has, uncached).

    python benchmarks/central_bench.py                                   # N = 1, 10, 50
    python benchmarks/central_bench.py --vantages 1 --targets 10 --warmup 30 --measure 30

Traffic: loopback only (the lab, the synthetic exporter, the VictoriaMetrics processes). The
Python processes refuse anything else with an audit hook (benchmarks/scheduler_bench.py's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import pickle
import platform
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

import yaml  # noqa: E402
from scheduler_bench import (  # noqa: E402
    git_state,
    install_loopback_guard,
    proc_cpu_seconds,
    proc_status_kib,
)

PROBES = ("dns", "tcp", "tls", "http2", "http3")  # the catalog's richest target
REGIONS = 30
SERVICES = ("alb", "nlb", "cloudfront", "s3", "apigateway", "ec2", "sts", "lambda")
Templates = dict[str, dict[str, Any]]


# -- one real round against the lab: the templates ---------------------------------------------


def capture_templates(workdir: Path) -> Templates:
    """kind -> {"ok": (ipv4, ipv6, parity), "failing": (...)} from one `probe run` round."""
    from lab.thread import LabThread

    from monitor.config import build, validate
    from monitor.engine.round import run_round
    from monitor.lab.run import lab_config

    with LabThread(workdir / "lab") as lab:
        doc = lab_config(lab, vantage="bench")
        doc["targets"] = [t for t in doc["targets"] if t["name"] in ("healthy", "v4_only")]
        doc["route53"] = {"zones": []}
        cfg = build(validate(doc, "bench"), "bench", base_dir=workdir)
        report = asyncio.run(run_round(cfg, cfg.targets, samples=1))
    by = {(r.target, r.probe, r.family): r for r in report.results}
    parity = {(p.target, p.probe): p for p in report.parity}
    out: Templates = {}
    for kind in PROBES:
        out[kind] = {
            role: (by[(name, kind, "ipv4")], by[(name, kind, "ipv6")], parity[(name, kind)])
            for role, name in (("ok", "healthy"), ("failing", "v4_only"))
        }
        verdicts = {role: str(t[2].verdict) for role, t in out[kind].items()}
        if verdicts["ok"] != "ok":
            raise SystemExit(f"the lab's healthy {kind} probe is {verdicts['ok']}: {report}")
    return out


# -- the synthetic vantages (a child process) --------------------------------------------------


def synthetic_main(args: dict[str, Any], templates_file: str, port_file: str) -> None:
    """N stores fed every `interval` s, each served at /v/<i>/metrics by the real exporter."""
    install_loopback_guard()
    from prometheus_client import generate_latest

    from monitor.engine.vantage import VantageCheck
    from monitor.serve.exporter import make_registry
    from monitor.serve.state import Store
    from probes.base import Target

    templates: Templates = pickle.loads(Path(templates_file).read_bytes())
    rng = random.Random(14)
    targets = {
        f"t{j:04d}": Target(
            name=f"t{j:04d}",
            service=SERVICES[j % len(SERVICES)],
            region=f"region-{j % REGIONS:02d}",
            host=f"t{j:04d}.example.com",
            probes=PROBES[: args["probes"]],
        )
        for j in range(args["targets"])
    }
    failing = set(rng.sample(sorted(targets), round(args["failing"] * len(targets))))
    # One Python process cannot render 50 vantages' pages every scrape interval: `distinct`
    # stores are fed and rendered by the exporter, and vantage i is page i % distinct with its
    # own vantage and site label values (the same length, so nothing else moves).
    distinct = min(args["vantages"], args["distinct"])
    stores, registries = [], []
    for i in range(distinct):
        store = Store(vantage=f"sim-{i:02d}", site=f"site-{i:02d}")
        store.set_targets(targets)
        store.vantage_check = VantageCheck(ipv6=True)
        stores.append(store)
        registries.append(make_registry(store))
    pages: list[bytes] = [b""] * distinct
    lock = threading.Lock()

    def render() -> None:
        for k, registry in enumerate(registries):
            page = generate_latest(registry)
            with lock:
                pages[k] = page

    def page_of(i: int) -> bytes:
        k = i % distinct
        with lock:
            page = pages[k]
        if k == i:
            return page
        return page.replace(b'vantage="sim-%02d"' % k, b'vantage="sim-%02d"' % i).replace(
            b'site="site-%02d"' % k, b'site="site-%02d"' % i
        )

    def round_once() -> None:
        now = time.time()
        # Only this thread touches the stores; the pages are swapped under the lock.
        for store in stores:
            for name, target in targets.items():
                for kind in target.probes:
                    v4, v6, parity = templates[kind]["failing" if name in failing else "ok"]
                    results = [
                        dataclasses.replace(
                            r,
                            target=name,
                            started=now,
                            duration_seconds=r.duration_seconds * rng.lognormvariate(0, 0.3),
                        )
                        for r in (v4, v6)
                    ]
                    store.record(results, dataclasses.replace(parity, target=name))
        render()

    def feeder() -> None:
        while True:
            started = time.monotonic()
            round_once()
            time.sleep(max(0.0, args["interval"] - (time.monotonic() - started)))

    round_once()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            m = re.fullmatch(r"/v/(\d+)/metrics", self.path)
            if not m or int(m.group(1)) >= args["vantages"]:
                self.send_error(404)
                return
            body = page_of(int(m.group(1)))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=feeder, daemon=True).start()
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


# -- measuring ---------------------------------------------------------------------------------


def get(url: str, timeout: float = 120) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: bytes = resp.read()
        return data


def scrape(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in get(url + "/metrics").decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key.replace(", ", ",")] = float(value)
    return out


def total(metrics: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        v
        for k, v in metrics.items()
        if (k == name or k.startswith(name + "{")) and all(w in k for w in want)
    )


def group_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """vmalert's mean evaluation time per group between two scrapes of its /metrics."""
    out = {}
    for key, value in after.items():
        m = re.fullmatch(r'vmalert_iteration_duration_seconds_sum\{group="([^"]+)".*', key)
        if not m:
            continue
        count_key = key.replace("_sum{", "_count{")
        runs = after.get(count_key, 0) - before.get(count_key, 0)
        if runs > 0:
            out[m.group(1)] = (value - before.get(key, 0)) / runs
    return out


def timed_query(base: str, path: str, params: dict[str, Any]) -> tuple[float, str | None]:
    """Seconds the query took, and the store's error if it refused it (a limit hit)."""
    q = urllib.parse.urlencode({**params, "nocache": "1"})
    started = time.perf_counter()
    try:
        doc = json.loads(get(f"{base}{path}?{q}"))
    except urllib.error.HTTPError as exc:
        return time.perf_counter() - started, exc.read().decode(errors="replace")[:300]
    elapsed = time.perf_counter() - started
    return elapsed, None if doc.get("status") == "success" else str(doc)[:300]


def dashboard_latency(base: str, since: float) -> dict[str, Any]:
    from dashboards import panel_queries

    queries = [q for q in panel_queries() if q.dashboard == "Dualstack parity"]
    now = time.time()
    span = now - since
    step = max(15, round(span / 300))
    instant, ranged, errors = [], [], []
    for q in queries:
        window = {"query": q.expr, "start": since, "end": now, "step": step}
        for path, params, into in (
            ("/api/v1/query", {"query": q.expr}, instant),
            ("/api/v1/query_range", window, ranged),
        ):
            seconds, error = timed_query(base, path, params)
            into.append(seconds)
            if error:
                errors.append(f"{q.panel} ({path}, {seconds:.1f} s): {error}")
    return {
        "errors": errors,
        "queries": len(queries),
        "range_seconds": round(span),
        "instant_p50_ms": statistics.median(instant) * 1000,
        "instant_max_ms": max(instant) * 1000,
        "range_p50_ms": statistics.median(ranged) * 1000,
        "range_max_ms": max(ranged) * 1000,
        "range_sum_ms": sum(ranged) * 1000,
    }


def vm_flags(scrape: int) -> list[str]:
    """The compose profile `central`'s store flags, as far as they matter here."""
    return [
        f"-dedup.minScrapeInterval={scrape}s",
        "-search.latencyOffset=5s",
        # Above the default 300,000: a rule over every vantage's histogram buckets reads more.
        "-search.maxUniqueTimeseries=5000000",
    ]


def measure(args: argparse.Namespace, n: int, templates_file: Path, work: Path) -> dict[str, Any]:
    from vmstack import victoria_metrics, vmagent, vmalert

    run_dir = work / f"n{n}"
    run_dir.mkdir()
    port_file = run_dir / "port"
    child_args = {
        "vantages": n,
        "targets": args.targets,
        "probes": args.probes,
        "interval": args.interval,
        "failing": args.failing,
        "distinct": args.distinct,
    }
    child = multiprocessing.get_context("spawn").Process(
        target=synthetic_main, args=(child_args, str(templates_file), str(port_file)), daemon=True
    )
    child.start()
    try:
        deadline = time.monotonic() + 300
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or not child.is_alive():
                raise SystemExit("the synthetic exporter did not start")
            time.sleep(0.2)
        port = int(port_file.read_text())
        one = get(f"http://127.0.0.1:{port}/v/0/metrics").decode()
        series_per_vantage = sum(
            1 for line in one.splitlines() if line and not line.startswith("#")
        )
        agent_cfg = yaml.safe_load((REPO / "configs" / "central" / "vmagent.yml").read_text())
        agent_cfg["global"].update(
            scrape_interval=f"{args.scrape}s", scrape_timeout=f"{args.scrape}s"
        )
        [job] = agent_cfg["scrape_configs"]
        job["metrics_path"] = "/metrics"
        job["static_configs"] = []
        job["relabel_configs"] = [
            {"source_labels": ["__address__"], "target_label": "__metrics_path__",
             "regex": r".*#(\d+)", "replacement": "/v/$1/metrics"},
            {"source_labels": ["__address__"], "target_label": "__address__",
             "regex": r"(.*)#\d+", "replacement": "$1"},
        ]  # fmt: skip
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}#{i}" for i in range(n)]}]
        (run_dir / "vmagent.yml").write_text(yaml.safe_dump(agent_cfg))
        rules = sorted((REPO / "configs" / "central" / "rules").glob("*.yml"))
        with (
            victoria_metrics(run_dir, *vm_flags(args.scrape)) as vm,
            vmagent(run_dir / "vmagent.yml", run_dir, vm.url) as agent,
            vmalert(
                rules,
                run_dir,
                vm.url,
                None,
                f"-evaluationInterval={args.scrape}s",
                f"-datasource.queryStep={args.scrape}s",
            ) as alerter,
        ):
            since = time.time()
            time.sleep(args.warmup)
            t0 = time.monotonic()
            vm0, ag0, al0 = scrape(vm.url), scrape(agent.url), scrape(alerter.url)
            cpu0 = proc_cpu_seconds(vm.proc.pid)
            time.sleep(args.measure)
            elapsed = time.monotonic() - t0
            vm1, ag1, al1 = scrape(vm.url), scrape(agent.url), scrape(alerter.url)
            cpu1 = proc_cpu_seconds(vm.proc.pid)
            count = json.loads(get(f"{vm.url}/api/v1/series/count"))["data"][0]
            rows = total(vm1, "vm_rows_inserted_total") - total(vm0, "vm_rows_inserted_total")
            sent = total(ag1, "vmagent_remotewrite_bytes_sent_total") - total(
                ag0, "vmagent_remotewrite_bytes_sent_total"
            )
            means = group_means(al0, al1)
            missed = total(al1, "vmalert_iteration_missed_total") - total(
                al0, "vmalert_iteration_missed_total"
            )
            errors = total(al1, "vmalert_alerting_rules_error") + total(
                al1, "vmalert_recording_rules_error"
            )
            rss_kib = proc_status_kib(vm.proc.pid, "VmRSS") or 0
            figures = {
                "vantages": n,
                "jobs_per_vantage": args.targets * args.probes,
                "series_per_vantage": series_per_vantage,
                "series_per_job": series_per_vantage / (args.targets * args.probes),
                "store_series": count,
                "ingest_samples_per_s": rows / elapsed,
                "remote_write_bytes_per_s": sent / elapsed,
                "store_rss_mib": rss_kib / 1024,
                "store_cpu_cores": (cpu1 - cpu0) / elapsed,
                "rule_eval_ms": {g: round(v * 1000, 1) for g, v in sorted(means.items())},
                "rule_eval_ms_total": round(sum(means.values()) * 1000, 1),
                "rules_failing": errors,
                "rule_iterations_missed": missed,
            }
            print(json.dumps(figures), flush=True)  # before the queries, which may hit limits
            figures["dashboard"] = dashboard_latency(vm.url, since)
            return figures
    finally:
        child.terminate()
        child.join(10)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"nproc {os.cpu_count()}, {platform.system()} {platform.release()}, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start"
    )


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> Iterator[str]:
    yield "dualstack-monitor central-path capacity benchmark"
    yield f"machine : {machine()}"
    yield f"code    : {git_state()}"
    yield (
        f"workload: {args.targets} targets x {args.probes} probes per vantage, results every "
        f"{args.interval}s, scraped and evaluated every {args.scrape}s, warmup {args.warmup}s, "
        f"measured {args.measure}s"
    )
    header = (
        "N   series/job  store series  samples/s  RW bytes/s  store RSS MiB  store cores  "
        "rules ms  dash p50/max ms (range)"
    )
    yield header
    for r in results:
        d = r["dashboard"]
        failed = f" ({len(d['errors'])} refused)" if d["errors"] else ""
        yield (
            f"{r['vantages']:<3} {r['series_per_job']:>10.1f}  {r['store_series']:>12}  "
            f"{r['ingest_samples_per_s']:>9.0f}  {r['remote_write_bytes_per_s']:>10.0f}  "
            f"{r['store_rss_mib']:>13.0f}  {r['store_cpu_cores']:>11.2f}  "
            f"{r['rule_eval_ms_total']:>8.0f}  "
            f"{d['range_p50_ms']:.0f}/{d['range_max_ms']:.0f}{failed}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vantages", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--targets", type=int, default=40, help="per vantage (default 40)")
    parser.add_argument("--probes", type=int, default=len(PROBES), choices=range(1, 6))
    parser.add_argument("--interval", type=float, default=30.0, help="probe interval (30)")
    parser.add_argument("--scrape", type=int, default=15, help="scrape/eval interval (15)")
    parser.add_argument("--failing", type=float, default=0.03, help="share of targets (0.03)")
    parser.add_argument(
        "--distinct", type=int, default=5, help="stores fed and rendered; the rest relabelled (5)"
    )
    parser.add_argument("--warmup", type=float, default=180.0)
    parser.add_argument("--measure", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    install_loopback_guard()
    work = Path(tempfile.mkdtemp(prefix="central-bench-"))
    templates_file = work / "templates.pickle"
    templates_file.write_bytes(pickle.dumps(capture_templates(work)))
    results = []
    for n in args.vantages:
        results.append(measure(args, n, templates_file, work))
        print(json.dumps(results[-1]), flush=True)
    print("\n".join(report(results, args)))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "results": results}))
    if args.keep:
        print(f"work folder: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

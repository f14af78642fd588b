"""Scheduler benchmark for `probe serve`'s vantage, run by hand (never part of the test suite).

Fixed workload: --jobs (target, probe) jobs, half tcp and half tls (targets = jobs / 2, each with
probes [tcp, tls]; every job probes both families in one tick, as the product does) against the
lab's `healthy` endpoint on loopback, --interval (60 s) apart, for --duration seconds per run,
--runs times. Each run is a fresh vantage process (so its peak RSS is its own) that drives
`monitor.serve.vantage.Vantage` directly: `scheduler.run()` plus `housekeeping()`, no HTTP
server, logs as `probe serve` writes them (text, info) to a file. The lab (`probe lab up`) runs
in one separate process for all runs.

Scrapes (`--scrapes`, default all three cases in every run, interleaved): `none` (the web
server up, nobody scraping), `prometheus` (one scraper every 15 s, as Prometheus would) and
`loop4` (4 clients scraping `/metrics` back to back). The vantage process then also serves
`probe serve`'s web app on 127.0.0.1 (kernel port), and a scraper process (started by the
vantage, never counted as the vantage) asks for `/metrics` with Prometheus's `Accept` and
`Accept-Encoding: gzip` over kept-alive connections.

Prints, as median and min/max across runs: scheduler start lateness p50/p99 (every sample of
`Scheduler.stats.take_lateness()`), vantage CPU seconds per probe (one probe = one target x kind
x family attempt), peak RSS; and per run the probes completed, failures by error kind, the lab's
CPU, event-loop lag and peak jobs in flight. Per scrape case: scrape duration p50/p99/max (as the
scraper saw it, body read), render time in the render thread, the p99 of the loopback TCP
connect latency the monitor reports (`phases.connect` of every successful tcp result) and its
difference from the `none` case of the same run, the vantage's CPU (every thread: the render
thread is one) and peak RSS (VmHWM; the vantage is one process, renders included).

Traffic: loopback only. Both processes install an audit hook that refuses any connect, sendto,
sendmsg or getaddrinfo to anything but 127.0.0.0/8 and ::1. Every run is bounded in time: the
vantage process is killed if it overruns, the lab is stopped at the end.

    python benchmarks/scheduler_bench.py                                  # 3 x 300 s, 10,000 jobs
    python benchmarks/scheduler_bench.py --runs 1 --duration 20 --jobs 200  # quick check
    python benchmarks/scheduler_bench.py --scrapes none,loop4 --duration 180   # scrape cases
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import ipaddress
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROBE_KINDS = ("tcp", "tls")
LAB_READY = "lab ready: config written to "
LAB_START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 10.0
# A vantage process gets this much on top of --duration + drain to start and report.
CHILD_SLACK = 120.0
SAMPLE_EVERY = 0.1  # event-loop lag and in-flight sampling period (s)
SCRAPE_CASES = ("none", "prometheus", "loop4")
PROMETHEUS_EVERY = 15.0
LOOP_CLIENTS = 4
# What Prometheus 3 sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "application/openmetrics-text;version=0.0.1;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


# -- shared helpers ----------------------------------------------------------------------------


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit: thousands of sockets may be open at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@functools.lru_cache(maxsize=64)
def _loopback(host: object) -> bool:
    if host is None or host in ("", b"", "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def install_loopback_guard() -> None:
    """Refuse (before the system call) any traffic or name lookup that is not loopback."""

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            addr = args[1] if len(args) > 1 else None
            if isinstance(addr, tuple) and addr and not _loopback(addr[0]):
                raise PermissionError(f"scheduler_bench: {event} to {addr!r} refused (loopback)")
        elif event == "socket.getaddrinfo" and not _loopback(args[0]):
            raise PermissionError(f"scheduler_bench: getaddrinfo({args[0]!r}) refused")

    sys.addaudithook(hook)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..1)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def proc_status_kib(pid: int | str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# -- the lab process ---------------------------------------------------------------------------


def lab_main(workdir: str) -> int:
    """`probe lab up --dir workdir`, with the loopback guard installed first."""
    raise_nofile()
    install_loopback_guard()
    sys.path.insert(0, str(REPO))
    from monitor.cli import main

    return main(["lab", "up", "--dir", workdir])


class LabProcess:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "lab.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path: Path | None = None

    def start(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--_lab", str(self.workdir / "lab")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + LAB_START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith(LAB_READY):
                    self.config_path = Path(line[len(LAB_READY) :].strip())
                    return self.config_path
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise SystemExit(
            f"the lab did not get ready within {LAB_START_TIMEOUT:g} s; its output:\n"
            + self.log_path.read_text(errors="replace")
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def bench_config(
    lab_yml: Path, jobs: int, interval: int, timeout: int, concurrency: int
) -> dict[str, Any]:
    """`jobs` (target, probe) jobs: jobs/2 targets bench-0000... on the lab's healthy endpoint."""
    import yaml

    lab = yaml.safe_load(lab_yml.read_text())
    healthy = next(t for t in lab["targets"] if t["name"] == "healthy")
    n = jobs // len(PROBE_KINDS)
    width = max(4, len(str(n - 1)))
    return {
        "vantage": "bench",
        "interval": f"{interval}s",
        "timeout": f"{timeout}s",
        "concurrency": concurrency,
        "resolver": lab["resolver"],
        "tls": {"ca_file": lab["tls"]["ca_file"]},
        "parity": lab["parity"],
        "targets": [
            {
                "name": f"bench-{i:0{width}d}",
                "service": "alb",
                "region": "us-east-1",
                "host": healthy["host"],
                "port": healthy["port"],
                "probes": list(PROBE_KINDS),
            }
            for i in range(n)
        ],
    }


# -- the scraper process -----------------------------------------------------------------------


def scraper_main(url: str, case: str, duration: float, out: str) -> int:
    """`case` prometheus: one scrape every 15 s; loop4: 4 clients back to back. Kept-alive
    connections, Prometheus's Accept and gzip; a scrape's duration includes reading the body."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    install_loopback_guard()
    parts = urlsplit(url)
    deadline = time.monotonic() + duration
    durations: list[float] = []
    sizes: list[int] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def client(every: float | None, offset: float) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        time.sleep(offset)
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                conn.request(
                    "GET",
                    parts.path,
                    headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
                )
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
                with lock:
                    errors[type(exc).__name__] += 1
                continue
            took = time.monotonic() - t0
            with lock:
                if status == 200:
                    durations.append(took)
                    sizes.append(len(body))
                else:
                    errors[f"HTTP {status}"] += 1
            if every is not None:
                time.sleep(max(0.0, every - (time.monotonic() - t0)))
        conn.close()

    if case == "prometheus":
        threads = [threading.Thread(target=client, args=(PROMETHEUS_EVERY, 1.0))]
    else:
        threads = [threading.Thread(target=client, args=(None, 0.0)) for _ in range(LOOP_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 120)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(out).write_text(
        json.dumps(
            {
                "durations": sorted(durations),
                "in_order": durations,
                "bytes": statistics.median(sizes) if sizes else 0,
                "errors": dict(errors),
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
            }
        )
    )
    return 0


# -- one run: the vantage process -------------------------------------------------------------


def vantage_main(config: str, duration: float, out: str, case: str) -> int:
    nofile = raise_nofile()
    install_loopback_guard()
    sys.path.insert(0, str(REPO))
    from monitor.cli import run_async  # the loop `probe serve` runs on (uvloop where installed)
    from monitor.serve import logs

    logs.setup("info", "text")  # as `probe serve` (stderr is a file the parent reads)
    result = run_async(_vantage_run(config, duration, case, out))
    result["nofile"] = list(nofile)
    result["case"] = case
    Path(out).write_text(json.dumps(result))
    return 0


async def _start_web(vantage: Any) -> tuple[Any, int]:
    """`probe serve`'s web app for the vantage's store, on 127.0.0.1 (kernel port)."""
    from aiohttp import web

    from monitor.serve.exporter import Exposition
    from monitor.web.server import make_app

    app = make_app(vantage.store, Exposition())
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


async def _vantage_run(config: str, duration: float, case: str, out: str) -> dict[str, Any]:
    from monitor.config import load_config
    from monitor.serve.vantage import Vantage
    from monitor.web import render as render_mod

    cfg = load_config(config)
    for t in cfg.targets:  # the generated config only: never anything but the lab
        if not t.name.startswith("bench-") or not t.host.endswith(".amazonaws.com"):
            raise SystemExit(f"unexpected target {t.name} {t.host}")
    vantage = Vantage(cfg)
    scheduler = vantage.scheduler
    lateness: list[float] = []
    product_sync = vantage._sync_scheduler_stats

    def sync() -> None:
        """Keep every lateness sample, and still feed the product's lag histogram."""
        taken = scheduler.stats.take_lateness()
        lateness.extend(taken)
        scheduler.stats.lateness.extend(taken)
        product_sync()

    vantage._sync_scheduler_stats = sync  # type: ignore[method-assign]

    # The loopback TCP connect latency the monitor reports: every successful tcp result.
    from monitor.serve.state import Store

    connects: list[float] = []

    class CountingStore(Store):
        __slots__ = ()  # the same layout: the live store can take this class

        def record(self, results: list[Any], parity: Any) -> Any:
            for r in results:
                if r.probe == "tcp" and r.success and not r.skipped:
                    connects.append(r.phases.get("connect", r.duration_seconds))
            return Store.record(self, results, parity)

    vantage.store.__class__ = CountingStore

    # Render time in the render thread (render + gzip), every render.
    renders: list[float] = []
    product_make = render_mod._make

    def make(*args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return product_make(*args)
        finally:
            renders.append(time.perf_counter() - t0)

    render_mod._make = make

    runner, port = await _start_web(vantage)
    await vantage.apply(cfg)
    rss_before_kib = proc_status_kib("self", "VmRSS")

    loop_lag: list[float] = []

    async def sampler() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(SAMPLE_EVERY)
            loop_lag.append(max(0.0, time.perf_counter() - t0 - SAMPLE_EVERY))

    # Jobs in flight (inside the concurrency bound) and how long each job takes, per kind.
    in_flight = [0, 0]  # now, peak
    job_seconds: dict[str, list[float]] = {k: [] for k in PROBE_KINDS}
    product_run_job = scheduler._run_job

    async def counted_run_job(target: Any, probe: Any) -> None:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        t0 = time.perf_counter()
        try:
            await product_run_job(target, probe)
        finally:
            in_flight[0] -= 1
            job_seconds.setdefault(probe, []).append(time.perf_counter() - t0)

    scheduler._run_job = counted_run_job

    gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_pauses.setdefault(info["generation"], []).append(time.perf_counter() - gc_start[0])

    loop = asyncio.get_running_loop()
    gc.callbacks.append(on_gc)
    cpu0, wall0 = time.process_time(), time.monotonic()
    run_task = loop.create_task(scheduler.run(), name="scheduler")
    hk_task = loop.create_task(vantage.housekeeping(), name="housekeeping")
    sample_task = loop.create_task(sampler(), name="sampler")
    scraper: subprocess.Popen[bytes] | None = None
    scrape_out = Path(out + f".{case}.scrapes.json")
    if case != "none":
        scraper = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--_scraper",
                f"http://127.0.0.1:{port}/metrics",
                case,
                str(duration),
                str(scrape_out),
            ],
            stdin=subprocess.DEVNULL,
        )
    await asyncio.sleep(duration)
    scrapes: dict[str, Any] = {"durations": [], "bytes": 0, "errors": {}, "cpu_seconds": 0.0}
    if scraper is not None:
        # The scraper stops by itself at `duration`; a scrape in progress may take a moment.
        while scraper.poll() is None:
            await asyncio.sleep(0.1)
        if scrape_out.exists():
            scrapes = json.loads(scrape_out.read_text())
    cpu_scraped, wall_scraped = time.process_time(), time.monotonic()
    cancelled = await scheduler.drain(DRAIN_TIMEOUT)
    hk_task.cancel()
    sample_task.cancel()
    await asyncio.gather(run_task, hk_task, sample_task, return_exceptions=True)
    await runner.cleanup()
    sync()
    cpu1, wall1 = time.process_time(), time.monotonic()
    gc.callbacks.remove(on_gc)

    probes: Counter[str] = Counter()
    for (_target, kind, family), n in vantage.store.runs.items():
        probes[f"{kind}/{family}"] += n
    failures: Counter[str] = Counter()
    for (_target, kind, family, err), n in vantage.store.errors.items():
        failures[f"{err} ({kind}/{family})"] += n
    examples = sorted(
        {
            f"{r.probe}/{r.family}: {r.error.kind}: {r.error.message}"
            for r in vantage.store.latest.values()
            if r.error is not None and not r.skipped
        }
    )[:5]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    lateness.sort()
    loop_lag.sort()
    return {
        "jobs": len(scheduler.jobs),
        "job_runs": sum(vantage.store.runs.values()) // 2,
        "skipped": sum(scheduler.stats.skipped.values()),
        "hung": scheduler.stats.hung,
        "crashed": scheduler.stats.crashed,
        "cancelled": cancelled,
        "probes": dict(probes),
        "failures": dict(failures),
        "failure_examples": examples,
        "cpu_seconds": cpu1 - cpu0,
        "wall_seconds": wall1 - wall0,
        "lateness_n": len(lateness),
        "lateness_p50": percentile(lateness, 0.50),
        "lateness_p99": percentile(lateness, 0.99),
        "lateness_max": lateness[-1] if lateness else math.nan,
        "loop_lag_p99": percentile(loop_lag, 0.99),
        "loop_lag_max": loop_lag[-1] if loop_lag else math.nan,
        "gc": {str(gen): [len(v), sum(v), max(v, default=0.0)] for gen, v in gc_pauses.items()},
        "peak_in_flight": in_flight[1],
        "job_seconds": {
            k: [percentile(sorted(v), 0.5), percentile(sorted(v), 0.99)]
            for k, v in job_seconds.items()
        },
        "concurrency": cfg.concurrency,
        "maxrss_mib": usage.ru_maxrss / 1024,
        "vmhwm_mib": (proc_status_kib("self", "VmHWM") or 0) / 1024,
        "rss_before_mib": (rss_before_kib or 0) / 1024,
        "connects_n": len(connects),
        "connect_p50": percentile(sorted(connects), 0.50),
        "connect_p99": percentile(sorted(connects), 0.99),
        "scrape_cpu_seconds": cpu_scraped - cpu0,
        "scrape_wall_seconds": wall_scraped - wall0,
        "renders": list(renders),
        "scrapes": scrapes,
    }


# -- the driver --------------------------------------------------------------------------------


def run_once(
    i: int, config: Path, workdir: Path, duration: float, lab: LabProcess, case: str
) -> dict[str, Any]:
    out = workdir / f"run-{i}-{case}.json"
    log_path = workdir / f"run-{i}-{case}.log"
    lab_cpu0 = proc_cpu_seconds(lab.pid)
    busy0, steal0 = machine_cpu_seconds()
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.run(
            [sys.executable, __file__, "--_vantage", str(config), str(duration), str(out), case],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=duration + DRAIN_TIMEOUT + CHILD_SLACK,
            check=False,
        )
    wall = time.monotonic() - wall0
    lab_cpu = proc_cpu_seconds(lab.pid) - lab_cpu0
    busy1, steal1 = machine_cpu_seconds()
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = sum(
        (b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)
        for a, b in ((own0, own1), (kids0, kids1))
    )
    if proc.returncode != 0 or not out.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"run {i} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    result: dict[str, Any] = json.loads(out.read_text())
    result["lab_cpu_seconds"] = lab_cpu
    # Everything else on the machine meanwhile (another test suite, ...): it competes for cores.
    result["other_cpu_seconds"] = max(0.0, (busy1 - busy0) - lab_cpu - ours)
    result["steal_seconds"] = steal1 - steal0
    result["process_wall_seconds"] = wall
    levels: Counter[str] = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 3)
        if len(parts) > 2 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
            levels[parts[2]] += 1
    result["log_levels"] = dict(levels)
    return result


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "monitor", "probes"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in monitor/ or probes/" if dirty else " (clean)")


def fmt(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}g}"


def report(args: argparse.Namespace, runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    targets = args.jobs // len(PROBE_KINDS)
    lines = [
        "dualstack-monitor scheduler benchmark",
        f"workload : {args.jobs} jobs = {targets} targets x [{', '.join(PROBE_KINDS)}], "
        "both families per job",
        f"           ({2 * args.jobs} probes per interval), interval {args.interval} s, "
        f"timeout {args.timeout} s, concurrency {args.concurrency}",
        f"           {args.duration:g} s per run, {args.runs} run(s), a fresh vantage process each",
        "vantage  : monitor.serve.vantage.Vantage: scheduler.run() + housekeeping(), probe",
        "           serve's web app on 127.0.0.1, text logs at info to a file, loopback-only",
        "           audit hook",
        "lab      : `probe lab up` in its own process (single-process hypercorn), `healthy`",
        f"           endpoint {meta['endpoint']} on 127.0.0.1 and ::1",
        f"machine  : nproc {os.cpu_count()}, {platform.system()} {platform.release()} "
        f"{platform.machine()},",
        f"           {platform.python_implementation()} {platform.python_version()}, "
        f"RLIMIT_NOFILE {runs[0]['nofile'][0]}/{runs[0]['nofile'][1]}",
        f"code     : {meta['git']}",
        "",
    ]

    def row(name: str, values: list[float], digits: int = 4) -> str:
        return (
            f"{name:<26} {fmt(statistics.median(values), digits):>10} "
            f"{fmt(min(values), digits):>10} {fmt(max(values), digits):>10}"
        )

    total = [sum(r["probes"].values()) for r in runs]
    failed = [sum(r["failures"].values()) for r in runs]
    lines += [
        f"{'across runs':<26} {'median':>10} {'min':>10} {'max':>10}",
        row("start lateness p50 (s)", [r["lateness_p50"] for r in runs]),
        row("start lateness p99 (s)", [r["lateness_p99"] for r in runs]),
        row(
            "CPU per probe (s)",
            [r["cpu_seconds"] / t if t else math.nan for r, t in zip(runs, total, strict=True)],
        ),
        row("peak RSS (MiB)", [r["maxrss_mib"] for r in runs]),
        row("probes completed", [float(t) for t in total], 9),
        row("failed probes", [float(f) for f in failed], 9),
        "",
        "run   probes  tcp / tls      late max  CPU s  CPU%  lab CPU%  loop lag p99/max  in flight",
    ]
    for i, (r, t) in enumerate(zip(runs, total, strict=True), 1):
        tcp = sum(n for k, n in r["probes"].items() if k.startswith("tcp/"))
        tls = sum(n for k, n in r["probes"].items() if k.startswith("tls/"))
        lag = f"{r['loop_lag_p99'] * 1000:.0f}/{r['loop_lag_max'] * 1000:.0f} ms"
        lines.append(
            f"{i:<5} {t:>6}  {f'{tcp} / {tls}':<13} {r['lateness_max']:>7.3f}s "
            f"{r['cpu_seconds']:>6.1f} {100 * r['cpu_seconds'] / r['wall_seconds']:>4.0f}% "
            f"{100 * r['lab_cpu_seconds'] / r['process_wall_seconds']:>7.0f}%  "
            f"{lag:<17} {r['peak_in_flight']:>4}/{r['concurrency']}"
        )
    lines.append("")
    for i, r in enumerate(runs, 1):
        jobs = ", ".join(
            f"{k} {v[0] * 1000:.1f}/{v[1] * 1000:.1f} ms" for k, v in r["job_seconds"].items()
        )
        gen2 = r["gc"]["2"]
        wall = r["process_wall_seconds"]
        lines += [
            f"run {i}: {r['job_runs']} job runs ({r['lateness_n']} lateness samples), "
            f"skipped {r['skipped']}, hung {r['hung']}, crashed {r['crashed']}, "
            f"cancelled at drain {r['cancelled']}",
            f"       job duration p50/p99: {jobs}",
            f"       other processes' CPU {100 * r['other_cpu_seconds'] / wall:.0f}% of one core, "
            f"steal {100 * r['steal_seconds'] / wall:.0f}%; full GCs {gen2[0]}, longest "
            f"{gen2[2] * 1000:.0f} ms, all GC pauses {sum(g[1] for g in r['gc'].values()):.1f} s",
            f"       RSS {r['rss_before_mib']:.0f} MiB after loading the config, peak "
            f"{r['vmhwm_mib']:.0f} MiB (VmHWM); warnings logged: "
            + (", ".join(f"{k} {n}" for k, n in r["log_levels"].items()) or "none"),
        ]
        if r["failures"]:
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(r["failures"].items()))
            lines.append(f"       failures by kind: {kinds}")
            lines += [f"       e.g. {e}" for e in r["failure_examples"]]
        else:
            lines.append("       failures by kind: none")
    return "\n".join(lines)


def scrape_report(runs: list[dict[str, Any]], cases: list[str]) -> str:
    """The scrape cases side by side: median over runs, then every run."""

    def ms(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value * 1000:.2f}"

    lines = [
        "",
        "scrapes: /metrics with Prometheus's Accept and gzip; `none`: web server up, no scrape",
        f"{'case':<11} {'run':>3} {'scrapes':>7} {'scrape p50/p99/max s':>21} "
        f"{'render p50/max s':>16} {'gzip MB':>7} {'tcp p99 ms':>10} {'vs none':>8} "
        f"{'CPU %':>5} {'RSS MiB':>7} {'failed':>6} {'lag p99':>7}",
    ]
    for case in cases:
        group = [r for r in runs if r["case"] == case]
        for r in [*group, {"run": "med"}]:
            if r["run"] == "med":
                if len(group) < 2:
                    continue
                keys = (
                    "connect_p99",
                    "cpu_pct",
                    "vmhwm_mib",
                    "failed",
                    "delta",
                    "loop_lag_p99",
                )
                r = {"run": "med", "case": case, "scrapes": {"durations": [], "bytes": 0}}
                for k in keys:
                    values = [g[k] for g in group if not math.isnan(g[k])]
                    r[k] = statistics.median(values) if values else math.nan
                durations = sorted(d for g in group for d in g["scrapes"]["durations"])
                r["scrapes"] = {"durations": durations, "bytes": group[0]["scrapes"]["bytes"]}
                r["renders"] = [x for g in group for x in g["renders"]]
            d = r["scrapes"]["durations"]
            rd = sorted(r["renders"])
            scrape = f"{percentile(d, 0.5):.3f}/{percentile(d, 0.99):.3f}/{d[-1]:.3f}" if d else "-"
            render = f"{percentile(rd, 0.5):.3f}/{rd[-1]:.3f}" if rd else "-"
            lines.append(
                f"{case:<11} {r['run']:>3} {len(d):>7} {scrape:>21} {render:>16} "
                f"{r['scrapes']['bytes'] / 1e6:>7.2f} {ms(r['connect_p99']):>10} "
                f"{ms(r['delta']):>8} {r['cpu_pct']:>5.0f} {r['vmhwm_mib']:>7.0f} "
                f"{r['failed']:>6.0f} {ms(r['loop_lag_p99']):>7}"
            )
    for r in runs:
        # The first two scrapes of a key are rendered on request: its period is not known yet.
        first, rest = (
            r["scrapes"].get("in_order", [])[:2],
            sorted(r["scrapes"].get("in_order", [])[2:]),
        )
        if rest:
            lines.append(
                f"{r['case']} run {r['run']}: first two scrapes "
                + "/".join(f"{x:.3f}" for x in first)
                + f" s; the {len(rest)} after them p50/p99/max "
                f"{percentile(rest, 0.5):.3f}/{percentile(rest, 0.99):.3f}/{rest[-1]:.3f} s"
            )
    errors = {f"{r['case']} run {r['run']}": r["scrapes"]["errors"] for r in runs}
    errors = {k: v for k, v in errors.items() if v}
    lines += [
        "",
        "tcp p99: p99 of phases.connect over every successful tcp result of the run (the",
        "kernel's TCP_INFO round trip where Linux gives it, else wall clock); vs none: its",
        "difference from the `none` case of the same run. lag p99: the event loop's (the",
        "overshoot of a 100 ms sleep, ms), which a render holding the GIL would show. CPU %:",
        "the vantage process (every thread, the render thread included) over the scraping",
        "window, % of one core. RSS: its VmHWM. Scrape: as the scraper saw it, body read.",
        "Render: render + gzip of /metrics in the render thread, p50 and max.",
        "Scrape errors: " + (json.dumps(errors) if errors else "none"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_lab"]:
        return lab_main(argv[1])
    if argv[:1] == ["--_vantage"]:
        return vantage_main(argv[1], float(argv[2]), argv[3], argv[4])
    if argv[:1] == ["--_scraper"]:
        return scraper_main(argv[1], argv[2], float(argv[3]), argv[4])

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--jobs", type=int, default=10_000, help="(target, probe) jobs, even")
    parser.add_argument("--interval", type=int, default=60, help="seconds")
    parser.add_argument("--timeout", type=int, default=5, help="probe timeout, seconds")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--scrapes",
        default=",".join(SCRAPE_CASES),
        help="scrape cases, each a fresh vantage per run: none, prometheus, loop4",
    )
    args = parser.parse_args(argv)
    cases = [c for c in args.scrapes.split(",") if c]
    if not cases or any(c not in SCRAPE_CASES for c in cases):
        parser.error(f"--scrapes takes a comma-separated list of {', '.join(SCRAPE_CASES)}")
    if args.jobs < 2 or args.jobs % len(PROBE_KINDS) or args.runs < 1 or args.duration <= 0:
        parser.error("--jobs must be an even number >= 2, --runs >= 1, --duration > 0")

    raise_nofile()
    install_loopback_guard()
    import yaml

    git_before = git_state()
    workdir = Path(tempfile.mkdtemp(prefix="scheduler-bench-"))
    lab = LabProcess(workdir)
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    try:
        lab_yml = lab.start()
        cfg = bench_config(lab_yml, args.jobs, args.interval, args.timeout, args.concurrency)
        config = workdir / "bench.yml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        endpoint = f"{cfg['targets'][0]['host']}\n           port {cfg['targets'][0]['port']}"
        for i in range(1, args.runs + 1):
            for case in cases:
                print(
                    f"run {i}/{args.runs}, scrapes {case}: {args.duration:g} s ...",
                    file=sys.stderr,
                    flush=True,
                )
                r = run_once(i, config, workdir, args.duration, lab, case)
                r["run"] = i
                runs.append(r)
    finally:
        lab.stop()
    git_after = git_state()
    git = (
        git_after
        if git_after == git_before
        else f"{git_before} at the start, {git_after} at the end"
    )
    for r in runs:
        none = [n for n in runs if n["case"] == "none" and n["run"] == r["run"]]
        r["delta"] = r["connect_p99"] - none[0]["connect_p99"] if none else math.nan
        r["cpu_pct"] = 100 * r["scrape_cpu_seconds"] / r["scrape_wall_seconds"]
        r["failed"] = float(sum(r["failures"].values()))
    quiet = [r for r in runs if r["case"] == cases[0]]
    print(f"(the figures below are the `{cases[0]}` case's; the scrape table has every case)")
    print(report(args, quiet, {"endpoint": endpoint, "git": git}))
    print(scrape_report(runs, cases))
    print(
        f"\ntook {time.monotonic() - started:.0f} s; work folder {workdir}"
        + ("" if args.keep else " (removed)")
    )
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""CPU per probe of `probe serve` against Prometheus blackbox_exporter, side by side in one run.

Everything runs in a private network namespace with only a loopback interface (deleted at the
end): NSD authoritative for bench.example (wildcard A 127.0.0.1 / AAAA ::1, TTL 300) on port 53,
nginx with TLS + HTTP/2 on 19443, blackbox_exporter (Debian; its Go resolver reads the
namespace's resolv.conf, so both tools ask the same server) and `probe serve` of this checkout.

Per kind: blackbox is driven by wrk (-c8) on /probe for S seconds, half per family; ours runs N
targets of that kind (both families per job) at a 1 s interval for S seconds. CPU per probe =
user+sys CPU of the process over the window / probes in the window (blackbox: requests wrk got
answered; ours: the increase of sum(dualstack_probe_runs_total), one family's result each).
ICMP is per echo: `icmp.count: 1` for ours, blackbox sends one.

    python benchmarks/compare_blackbox.py [--seconds 16] [--targets 50] [--kinds tcp,icmp,...]
        [--profile DIR]   # py-spy (pip install py-spy) of ours per kind, collapsed stacks
        [--paced]         # also blackbox driven at ours' rate, spread evenly (not flat out)

Needs root, and Debian nsd, nginx-light, prometheus-blackbox-exporter, wrk and curl.
Prints a table, then one line: the worst ratio against its goal (exit 1 when over it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NS = f"dscmp{os.getpid()}"
GOAL = {"tcp": 0.5, "icmp": 0.5, "dns": 0.5, "tls": 1.0, "http2": 1.0}
"""The largest ratio of our CPU per probe to blackbox's that meets issue 12, per kind."""
HZ = os.sysconf("SC_CLK_TCK")
BB_LISTEN = "127.0.0.1:19115"
OURS_LISTEN = "[::1]:19851"
APT = ("nsd", "nginx-light", "prometheus-blackbox-exporter", "wrk", "curl")


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, check=check)


def nsx(*cmd: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *cmd]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def ns_get(url: str) -> str:
    return subprocess.run(nsx("curl", "-s", "-g", url), text=True, capture_output=True).stdout


def setup(d: Path) -> None:
    import trustme  # the project's test extras have it

    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    # Root in a new namespace may use raw sockets anyway; ping sockets are allowed too, so the
    # monitor takes the path it takes unprivileged.
    sh(*nsx("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647"))
    etc = Path(f"/etc/netns/{NS}")
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("nameserver ::1\noptions timeout:1 attempts:1\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    ca = trustme.CA()
    cert = ca.issue_cert("bench.example", "*.bench.example")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    (d / "zones").mkdir()
    (d / "zones/bench.example.zone").write_text(
        "$ORIGIN bench.example.\n$TTL 300\n"
        "@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\n"
        "ns1 IN A 127.0.0.1\nns1 IN AAAA ::1\n"
        "@ IN A 127.0.0.1\n@ IN AAAA ::1\n* IN A 127.0.0.1\n* IN AAAA ::1\n"
    )
    (d / "nsd.conf").write_text(
        f"""server:
    ip-address: ::1
    ip-address: 127.0.0.1
    port: 53
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{d}/zones"
    database: ""
    zonelistfile: "{d}/nsd-zone.list"
    xfrdfile: "{d}/nsd-xfrd.state"
    xfrdir: "{d}"
    pidfile: "{d}/nsd.pid"
    logfile: "{d}/nsd.log"
    # No response rate limiting (Debian's NSD allows 200 answers a second per /24): under wrk,
    # blackbox's lookups were dropped or truncated, its probes waited 1 s or retried over TCP.
    rrl-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "bench.example"
    zonefile: "bench.example.zone"
"""
    )
    (d / "nginx.conf").write_text(
        f"""worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:19443 ssl http2; listen [::1]:19443 ssl http2;
    ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;
    location / {{ return 403 "denied"; }} }} }}
"""
    )
    modules: dict[str, object] = {}
    for fam, ipp in (("4", "ip4"), ("6", "ip6")):
        base = {"preferred_ip_protocol": ipp, "ip_protocol_fallback": False}
        tls = {"ca_file": str(d / "ca.pem")}
        modules[f"tcp{fam}"] = {"prober": "tcp", "timeout": "5s", "tcp": dict(base)}
        modules[f"tls{fam}"] = {
            "prober": "tcp",
            "timeout": "5s",
            "tcp": {**base, "tls": True, "tls_config": tls},
        }
        modules[f"http2{fam}"] = {
            "prober": "http",
            "timeout": "5s",
            "http": {
                **base,
                "valid_status_codes": [403],
                "valid_http_versions": ["HTTP/2.0"],
                "tls_config": tls,
            },
        }
        modules[f"icmp{fam}"] = {"prober": "icmp", "timeout": "5s", "icmp": dict(base)}
        modules[f"dns{fam}"] = {
            "prober": "dns",
            "timeout": "5s",
            "dns": {
                **base,
                "query_name": "t1.bench.example",
                "query_type": "AAAA" if fam == "6" else "A",
                "transport_protocol": "udp",
                "valid_rcodes": ["NOERROR"],
            },
        }
    (d / "bb.yml").write_text(json.dumps({"modules": modules}))


def blackbox_target(kind: str, fam: str) -> str:
    if kind in ("tcp", "tls"):
        return "t1.bench.example:19443"
    if kind == "http2":
        return "https://t1.bench.example:19443/"
    if kind == "icmp":
        return "t1.bench.example"
    return "[::1]:53" if fam == "6" else "127.0.0.1:53"


@contextmanager
def blackbox(d: Path) -> Iterator[subprocess.Popen[bytes]]:
    """blackbox_exporter in the namespace, up for the block (its log appended to bb.log)."""
    with (d / "bb.log").open("ab") as log:
        bb = subprocess.Popen(
            nsx(
                "prometheus-blackbox-exporter",
                f"--config.file={d / 'bb.yml'}",
                f"--web.listen-address={BB_LISTEN}",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(1.5)
        yield bb
    finally:
        bb.terminate()
        bb.wait()


def run_blackbox(d: Path, kind: str, seconds: int) -> tuple[float, float, bool]:
    """(CPU ms per probe, probes/s, sane: one probe of each family succeeded first)."""
    with blackbox(d) as bb:
        sane = True
        requests, cpu = 0, 0.0
        for fam in ("4", "6"):
            target = urllib.parse.quote(blackbox_target(kind, fam), safe="")
            url = f"http://{BB_LISTEN}/probe?module={kind}{fam}&target={target}"
            sane = sane and "probe_success 1" in ns_get(url)
            c0 = cpu_seconds(bb.pid)
            out = subprocess.run(
                nsx("wrk", "-t1", "-c8", f"-d{seconds // 2}s", url),
                text=True,
                capture_output=True,
            ).stdout
            cpu += cpu_seconds(bb.pid) - c0
            m = re.search(r"(\d+) requests in", out)
            requests += int(m.group(1)) if m else 0
        return 1000 * cpu / max(requests, 1), requests / seconds, sane


PACER = """
import asyncio, sys, time
import aiohttp
urls, rate, seconds = sys.argv[1:3], float(sys.argv[3]), float(sys.argv[4])
async def main():
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
        async def one(url):
            nonlocal done
            async with s.get(url) as r:
                await r.read()
                done += r.status == 200
        start, tasks, i = time.monotonic(), [], 0
        while (due := start + i / rate) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(urls[i % 2])))
            i += 1
        await asyncio.gather(*tasks)
    print(done)
asyncio.run(main())
"""
"""Requests to blackbox's /probe at a fixed rate, spread evenly, the families alternating (as
ours probes: 50 jobs x 2 families at 1 s): prints how many were answered 200."""


def run_blackbox_paced(d: Path, kind: str, seconds: int, rate: float) -> float:
    """Blackbox's CPU ms per probe when driven at `rate` probes a second (not flat out)."""
    with blackbox(d) as bb:
        urls = [
            f"http://{BB_LISTEN}/probe?module={kind}{fam}&target="
            + urllib.parse.quote(blackbox_target(kind, fam), safe="")
            for fam in ("4", "6")
        ]
        c0 = cpu_seconds(bb.pid)
        out = subprocess.run(
            nsx(sys.executable, "-c", PACER, *urls, str(rate), str(seconds)),
            text=True,
            capture_output=True,
        ).stdout
        cpu = cpu_seconds(bb.pid) - c0
        answered = int(out.strip() or 0)
        return 1000 * cpu / max(answered, 1)


def runs_total(text: str) -> float:
    pattern = r"^dualstack_probe_runs_total\{[^}]*\}\s+(\S+)"
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))


def our_config(d: Path, kind: str, n: int) -> Path:
    targets: list[dict[str, object]] = []
    for i in range(n):
        t: dict[str, object] = {
            "name": f"{kind}-{i}",
            "host": f"t{i}.bench.example",
            "port": 19443,
            "probes": [kind],
        }
        if kind == "http2":
            t["http"] = {"expect_status": [403]}
        if kind == "icmp":  # per echo: blackbox sends one
            t["icmp"] = {"count": 1}
        targets.append(t)
    cfg = {
        "vantage": "bench",
        "interval": "1s",
        "timeout": "5s",
        "concurrency": 64,
        "resolver": {"nameservers": ["::1"], "port": 53},
        "tls": {"ca_file": str(d / "ca.pem")},
        "targets": targets,
    }
    path = d / f"ours-{kind}.yml"
    path.write_text(json.dumps(cfg))
    return path


def run_ours(
    d: Path, kind: str, n: int, seconds: int, profile: Path | None = None
) -> tuple[float, float, bool, float]:
    """(CPU ms per probe, probes/s, sane: no failed probe, median reported duration ms).
    With `profile`, py-spy samples ours over the window into PROFILE/<kind>.txt (collapsed
    stacks; py-spy's own sampling adds a little to the CPU measured)."""
    path = our_config(d, kind, n)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "monitor.cli", "serve", "--config", str(path)]
    cmd += ["--listen", OURS_LISTEN, "--log-format", "json"]
    with (d / f"ours-{kind}.log").open("wb") as log:
        p = subprocess.Popen(nsx(*cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        time.sleep(8)  # start-up and the first rounds
        m0 = runs_total(ns_get(f"http://{OURS_LISTEN}/metrics"))
        c0 = cpu_seconds(p.pid)
        if profile is None:
            time.sleep(seconds)
        else:
            profile.mkdir(parents=True, exist_ok=True)
            spy = ["py-spy", "record", "--pid", str(p.pid), "--duration", str(seconds)]
            spy += ["--rate", "250", "--format", "raw", "--nonblocking"]
            subprocess.run([*spy, "--output", str(profile / f"{kind}.txt")], capture_output=True)
        c1 = cpu_seconds(p.pid)
        text = ns_get(f"http://{OURS_LISTEN}/metrics")
        m1 = runs_total(text)
        fails = [
            line
            for line in text.splitlines()
            if line.startswith("dualstack_probe_success{") and line.rstrip().endswith(" 0.0")
        ]
        doc = json.loads(ns_get(f"http://{OURS_LISTEN}/api/v1/results") or "{}")
        durations = sorted(
            r.get("duration_seconds", 0) * 1000 for r in doc.get("results", []) if r.get("success")
        )
        median = durations[len(durations) // 2] if durations else float("nan")
        probes = m1 - m0
        return 1000 * (c1 - c0) / max(probes, 1), probes / seconds, not fails and probes > 0, median
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--seconds", type=int, default=16, help="window per kind and tool")
    ap.add_argument("--targets", type=int, default=50, help="our targets per kind (1 s interval)")
    ap.add_argument("--kinds", default="tcp,icmp,dns,tls,http2")
    ap.add_argument("--profile", type=Path, help="py-spy ours into DIR/<kind>.txt (collapsed)")
    ap.add_argument(
        "--paced",
        action="store_true",
        help="also blackbox driven at ours' rate (2 x targets probes a second, spread evenly)",
    )
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (ip netns)")
        return 2
    for tool in ("nsd", "nginx", "prometheus-blackbox-exporter", "wrk", "curl", "ip"):
        if not shutil.which(tool):
            print(f"missing {tool}: apt-get install {' '.join(APT)}")
            return 2
    kinds = a.kinds.split(",")
    unknown = [k for k in kinds if k not in GOAL]
    if unknown:
        print(f"unknown kinds {unknown}; known: {', '.join(GOAL)}")
        return 2
    d = Path(tempfile.mkdtemp(prefix="dscmp-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        setup(d)
        procs.append(
            subprocess.Popen(
                nsx("nsd", "-d", "-c", str(d / "nsd.conf")),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        sh(*nsx("nginx", "-c", str(d / "nginx.conf")))
        time.sleep(1)
        print(
            f"{a.targets} targets x 2 families at 1 s for ours; wrk -c8 for blackbox; "
            f"{a.seconds} s each; load average {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'kind':6} {'blackbox ms/probe':>18} {'bb probes/s':>12} {'ours ms/probe':>14} "
            f"{'ours probes/s':>14} {'ratio':>6} {'goal':>5} {'ours median ms':>15} sane"
        )
        worst: tuple[float, str, float] | None = None
        for kind in kinds:
            bb_ms, bb_rate, bb_ok = run_blackbox(d, kind, a.seconds)
            our_ms, our_rate, our_ok, med = run_ours(d, kind, a.targets, a.seconds, a.profile)
            ratio = our_ms / bb_ms if bb_ms else float("inf")
            print(
                f"{kind:6} {bb_ms:18.3f} {bb_rate:12.0f} {our_ms:14.3f} {our_rate:14.0f} "
                f"{ratio:6.2f} {GOAL[kind]:5.2f} {med:15.2f} "
                f"bb={'y' if bb_ok else 'N'} ours={'y' if our_ok else 'N'}",
                flush=True,
            )
            if a.paced:
                paced = run_blackbox_paced(d, kind, a.seconds, 2.0 * a.targets)
                print(
                    f"{'':6} blackbox paced at {2 * a.targets} probes/s: {paced:.3f} ms/probe, "
                    f"ratio {our_ms / paced if paced else float('inf'):.2f}",
                    flush=True,
                )
            over = ratio / GOAL[kind]
            if worst is None or over > worst[0]:
                worst = (over, kind, ratio)
        if worst is None:
            return 2
        over, kind, ratio = worst
        print(f"worst: {kind} at {ratio:.2f}x blackbox CPU/probe (goal {GOAL[kind]:.2f}x)")
        return 0 if over <= 1.0 else 1
    finally:
        subprocess.run(nsx("nginx", "-c", str(d / "nginx.conf"), "-s", "quit"), capture_output=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        time.sleep(1)
        sh("ip", "netns", "del", NS, check=False)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(f"/etc/netns/{NS}", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

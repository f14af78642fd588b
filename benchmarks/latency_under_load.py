"""Do the icmp and dns latencies `probe run` reports stay the network's under load? Run by hand.

One lab (`probe lab up`) on loopback, and the lab's DNS data served once more by a process of
its own (monitor/lab/dnsserver.py, real-time priority as root), so that what is measured is
the probe's clock, not a server late for serving the lab's TLS load or queueing a burst.
Idle: the lab's `healthy` endpoint with `icmp`, and --dns name-server targets (`zone` set:
each one's dns probe asks that server for the zone's SOA over each family). Loaded: the same
plus --targets copies of the endpoint with icmp, tcp, tls and http2, so the event loop is busy
with TLS and HTTP/2 while the echoes and queries are in flight. Each run is `probe run
--format json` in a fresh process; prints p50, p99 and max of the reported icmp `rtt` (every
address) and dns `query`, both loopbacks together, over --runs runs per case. Traffic stays
on loopback (scheduler_bench.py's audit hook in every process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_bench import ca_file, probe_run_json
from scheduler_bench import REPO, LabProcess, percentile

LOADED_KINDS = ["icmp", "tcp", "tls", "http2"]


DNS_CHILD = (
    "import asyncio, sys; sys.path.insert(0, {bench!r}); import scheduler_bench as b; "
    "b.install_loopback_guard(); sys.path.insert(0, {repo!r})\n"
    "from monitor.lab.loopback import SERVED_ZONES, lab_records\n"
    "from monitor.lab.dnsserver import DnsServer\n"
    "import dns.message, dns.query, os\n"
    "if os.geteuid() == 0:\n"
    "    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))\n"
    "async def main():\n"
    "    async with DnsServer(lab_records(), SERVED_ZONES) as server:\n"
    "        for address in ('127.0.0.1', '::1'):  # warm: its first answer imports code\n"
    "            query = dns.message.make_query(SERVED_ZONES[0], 'SOA')\n"
    "            await asyncio.to_thread(dns.query.udp, query, address, 2, server.port)\n"
    "        print(server.port, flush=True)\n"
    "        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)\n"
    "asyncio.run(main())\n"
)


class DnsProcess:
    """The lab's DNS data on ::1 and 127.0.0.1 (a kernel port), in a process of its own;
    it ends when its standard input closes."""

    def __enter__(self) -> int:
        code = DNS_CHILD.format(bench=str(Path(__file__).resolve().parent), repo=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise SystemExit("the DNS server did not start")
        return int(line)

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def config(lab_yml: Path, dns_port: int, n: int, dns: int) -> dict[str, Any]:
    import yaml

    lab = yaml.safe_load(lab_yml.read_text())
    healthy = next(t for t in lab["targets"] if t["name"] == "healthy")
    route53 = lab["route53"]
    endpoint = {
        "service": "alb",
        "region": "us-east-1",
        "host": healthy["host"],
        "port": healthy["port"],
        "probes": LOADED_KINDS,
    }
    nameserver = {
        "service": "route53",
        "region": "us-east-1",
        "host": "ns-1.awsdns-01.org",  # on both loopbacks
        "port": dns_port,
        "zone": route53["zones"][0],
        "probes": ["dns"],
    }
    return {
        "vantage": "latency-under-load",
        "timeout": "5s",
        "resolver": lab["resolver"],
        "tls": {"ca_file": ca_file(lab_yml, lab["tls"]["ca_file"])},
        "targets": [
            {"name": "probed", **endpoint, "probes": ["icmp"]},
            *({"name": f"ep{i:03d}", **endpoint} for i in range(n)),
            *({"name": f"ns{i:03d}", **nameserver} for i in range(dns)),
        ],
    }


def one_run(cfg: Path) -> tuple[dict[str, list[float]], int]:
    """The reported latencies per kind (every address, both families), and the jobs run."""
    doc = probe_run_json(cfg)
    got: dict[str, list[float]] = {"icmp": [], "dns": []}
    for r in doc["results"]:
        if r["probe"] == "icmp" and r["success"]:  # every address's median of its samples
            got["icmp"].extend(a["phases"]["rtt"] for a in r["addresses"])
        elif r["probe"] == "dns" and r["success"]:  # one SOA query to the server's address
            got["dns"].append(r["phases"]["query"])
    jobs = len({(r["target"], r["probe"]) for r in doc["results"]})
    return got, jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=40, help="copies of each target loaded (40)")
    ap.add_argument("--dns", type=int, default=2, help="name-server targets (2)")
    ap.add_argument("--runs", type=int, default=10, help="fresh probe run processes per case (10)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="latency-under-load-") as tmp:
        work = Path(tmp)
        lab = LabProcess(work)
        lab_yml = lab.start()
        try:
            with DnsProcess() as dns_port:
                import yaml

                for case, n in (("idle", 0), ("loaded", args.targets)):
                    cfg = work / f"{case}.yml"
                    cfg.write_text(yaml.safe_dump(config(lab_yml, dns_port, n, args.dns)))
                    samples: dict[str, list[float]] = {"icmp": [], "dns": []}
                    jobs = 0
                    for i in range(args.runs):
                        print(f"{case} run {i + 1}/{args.runs} ...", file=sys.stderr, flush=True)
                        got, jobs = one_run(cfg)
                        for kind, values in got.items():
                            samples[kind].extend(values)
                    rows.append((case, jobs, samples))
        finally:
            lab.stop()
    print(
        f"probe run on the lab (loopback), {args.runs} runs per case; {args.dns} name-server "
        f"targets (dns SOA) and one endpoint (icmp), loaded: and {args.targets} endpoints "
        f"({' '.join(LOADED_KINDS)}); cpus {os.cpu_count()}"
    )
    print(f"{'case':7} {'jobs':>5} {'kind':5} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for case, jobs, samples in rows:
        for kind, values in samples.items():
            values.sort()
            if not values:
                print(f"{case:7} {jobs:5d} {kind:5} no successful result")
                continue
            print(
                f"{case:7} {jobs:5d} {kind:5} {len(values):5d} "
                f"{percentile(values, 0.5) * 1000:8.3f} {percentile(values, 0.99) * 1000:8.3f} "
                f"{values[-1] * 1000:8.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

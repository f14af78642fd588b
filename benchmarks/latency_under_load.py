"""Do the icmp and dns latencies `probe run` reports stay the network's under load? Run by hand.

One lab (`probe lab up`) on loopback. Idle: a config of two targets, the lab's `healthy`
endpoint with `icmp` and one name-server target (`zone` set: its dns probe asks the lab DNS
server for the zone's SOA over each family). Loaded: --targets copies of each, the endpoint
with every kind but http3 (so the event loop is busy with TLS and HTTP/2 while echoes and
queries are in flight). Each run is `probe run --format json` in a fresh process; prints
p50 and p99 of the reported icmp `rtt` and dns `query` (both loopbacks together) over --runs
runs. Traffic stays on loopback (scheduler_bench.py's audit hook in every process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_bench import CHILD, ca_file
from scheduler_bench import REPO, LabProcess, percentile

LOADED_KINDS = ["dns", "icmp", "tcp", "tls", "http2"]


def config(lab_yml: Path, n: int, loaded: bool) -> dict[str, Any]:
    import yaml

    lab = yaml.safe_load(lab_yml.read_text())
    healthy = next(t for t in lab["targets"] if t["name"] == "healthy")
    route53 = lab["route53"]
    endpoint = {
        "service": "alb",
        "region": "us-east-1",
        "host": healthy["host"],
        "port": healthy["port"],
        "probes": LOADED_KINDS if loaded else ["icmp"],
    }
    nameserver = {
        "service": "route53",
        "region": "us-east-1",
        "host": "ns-1.awsdns-01.org",  # the lab DNS server itself, on both loopbacks
        "port": route53["port"],
        "zone": route53["zones"][0],
        "probes": ["dns"],
    }
    return {
        "vantage": "latency-under-load",
        "timeout": "5s",
        "resolver": lab["resolver"],
        "tls": {"ca_file": ca_file(lab_yml, lab["tls"]["ca_file"])},
        "targets": [
            *({"name": f"ep{i:03d}", **endpoint} for i in range(n)),
            *({"name": f"ns{i:03d}", **nameserver} for i in range(n)),
        ],
    }


def one_run(cfg: Path) -> tuple[dict[str, list[float]], int]:
    """The reported latencies per kind (every address, both families), and the jobs run."""
    child = CHILD.format(bench=str(Path(__file__).resolve().parent), repo=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", child, "run", "--config", str(cfg), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode not in (0, 1):
        raise SystemExit(f"probe run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout)
    got: dict[str, list[float]] = {"icmp": [], "dns": []}
    for r in doc["results"]:
        if r["probe"] in got and r["success"]:
            phase = "rtt" if r["probe"] == "icmp" else "query"
            got[r["probe"]].extend(a["phases"][phase] for a in r["addresses"])
    jobs = len({(r["target"], r["probe"]) for r in doc["results"]})
    return got, jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=40, help="copies of each target loaded (40)")
    ap.add_argument("--runs", type=int, default=5, help="fresh probe run processes per case (5)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="latency-under-load-") as tmp:
        work = Path(tmp)
        lab = LabProcess(work)
        lab_yml = lab.start()
        try:
            import yaml

            for case, n, loaded in (("idle", 1, False), ("loaded", args.targets, True)):
                cfg = work / f"{case}.yml"
                cfg.write_text(yaml.safe_dump(config(lab_yml, n, loaded)))
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
        f"probe run on the lab (loopback), {args.runs} runs per case; loaded: {args.targets} "
        f"endpoints ({' '.join(LOADED_KINDS)}) and {args.targets} name-server targets (dns "
        f"SOA); cpus {os.cpu_count()}"
    )
    print(f"{'case':7} {'jobs':>5} {'kind':5} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for case, jobs, samples in rows:
        for kind, values in samples.items():
            values.sort()
            print(
                f"{case:7} {jobs:5d} {kind:5} {len(values):5d} "
                f"{percentile(values, 0.5) * 1000:8.3f} {percentile(values, 0.99) * 1000:8.3f} "
                f"{values[-1] * 1000:8.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

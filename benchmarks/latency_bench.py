"""Is the latency `probe run` reports the network's, or its event loop's? Run by hand.

One lab (`probe lab up`) on loopback; a config of --targets targets (default 100) all on the
lab's `healthy` endpoint with every probe kind but http3 (so the loop is busy with DNS, ICMP,
TLS and HTTP/2 while TCP connects are timed); `probe run --format json` in a fresh process.
Its reported TCP `connect` phases (every address, both families) are compared with a bare
measurement of the same address and port: one blocking socket, connect() timed with
perf_counter, --bare times per family. Prints p50 and p90 of each, and their difference, per
run and as the median over --runs runs. The same for the tls probe's `handshake` phase against
a blocking handshake of Python's ssl on the same server (which includes this end's
cryptography, as the reported figure does not). Traffic stays on loopback (the same audit hook as
scheduler_bench.py in every process it starts).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduler_bench import REPO, LabProcess, percentile

CHILD = (
    "import sys; sys.path.insert(0, {bench!r}); import scheduler_bench as b; "
    "b.install_loopback_guard(); sys.path.insert(0, {repo!r}); "
    "from monitor.cli import main; sys.exit(main(sys.argv[1:]))"
)


def config(lab_yml: Path, n: int) -> dict[str, Any]:
    import yaml

    lab = yaml.safe_load(lab_yml.read_text())
    healthy = next(t for t in lab["targets"] if t["name"] == "healthy")
    return {
        "vantage": "latency-bench",
        "timeout": "5s",
        "resolver": lab["resolver"],
        "tls": {"ca_file": ca_file(lab_yml, lab["tls"]["ca_file"])},
        "targets": [
            {
                "name": f"t{i:03d}",
                "service": "alb",
                "region": "us-east-1",
                "host": healthy["host"],
                "port": healthy["port"],
                "probes": ["dns", "icmp", "tcp", "tls", "http2"],
            }
            for i in range(n)
        ],
    }


def ca_file(lab_yml: Path, written: str) -> str:
    """The lab's CA, wherever `probe lab up` said it is (next to lab.yml or as written)."""
    beside = lab_yml.parent / written
    return str(beside.resolve()) if beside.is_file() else str(Path(written).resolve())


def bare(address: str, port: int, times: int) -> list[float]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    out = []
    for _ in range(times):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            t0 = time.perf_counter()
            sock.connect((address, port))
            out.append(time.perf_counter() - t0)
        time.sleep(0.002)
    return sorted(out)


def bare_tls(address: str, port: int, server_name: str, cafile: str, times: int) -> list[float]:
    """Blocking handshakes (connect first, not timed), perf_counter around do_handshake."""
    ctx = ssl.create_default_context(cafile=cafile)
    out = []
    for _ in range(times):
        with socket.create_connection((address, port)) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(
                raw, server_hostname=server_name, do_handshake_on_connect=False
            ) as tls:
                t0 = time.perf_counter()
                tls.do_handshake()
                out.append(time.perf_counter() - t0)
        time.sleep(0.002)
    return sorted(out)


def probe_run_json(cfg: Path, *args: str) -> Any:
    """`probe run --config CFG --format json ARGS` of this checkout, in a child process that
    may reach loopback only; its report (exit 0 or 1), else SystemExit with its stderr."""
    child = CHILD.format(bench=str(Path(__file__).resolve().parent), repo=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", child, "run", "--config", str(cfg), "--format", "json", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode not in (0, 1):
        raise SystemExit(f"probe run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


PHASES = (("tcp", "connect"), ("tls", "handshake"))


def one_run(cfg: Path, bare_times: int, samples: int) -> dict[str, dict[str, float]]:
    """Per `<phase> <family>`: the reported and the bare p50 and p90, in ms."""
    import yaml

    doc = probe_run_json(cfg, "--samples", str(samples))
    target = yaml.safe_load(cfg.read_text())
    [port] = {t["port"] for t in target["targets"]}
    [host] = {t["host"] for t in target["targets"]}
    figures: dict[str, dict[str, float]] = {}
    for (kind, phase), (family, address) in itertools.product(
        PHASES, (("ipv4", "127.0.0.1"), ("ipv6", "::1"))
    ):
        reported = sorted(
            a["phases"][phase]
            for r in doc["results"]
            if r["probe"] == kind and r["family"] == family and r["success"]
            for a in r["addresses"]
        )
        if kind == "tcp":
            base = bare(address, port, bare_times)
        else:
            base = bare_tls(address, port, host, target["tls"]["ca_file"], bare_times)
        figures[f"{phase} {family}"] = {
            "reported_p50_ms": percentile(reported, 0.5) * 1000,
            "reported_p90_ms": percentile(reported, 0.9) * 1000,
            "bare_p50_ms": percentile(base, 0.5) * 1000,
            "bare_p90_ms": percentile(base, 0.9) * 1000,
            "n": len(reported),
        }
        f = figures[f"{phase} {family}"]
        f["delta_p50_ms"] = f["reported_p50_ms"] - f["bare_p50_ms"]
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=100, help="targets in the config (100)")
    ap.add_argument("--runs", type=int, default=3, help="fresh probe run processes (3)")
    ap.add_argument("--bare", type=int, default=300, help="bare connects per family (300)")
    ap.add_argument("--samples", type=int, default=3, help="probe run --samples (3)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        work = Path(tmp)
        lab = LabProcess(work)
        lab_yml = lab.start()
        try:
            import yaml

            doc = config(lab_yml, args.targets)
            cfg = work / "bench.yml"
            cfg.write_text(yaml.safe_dump(doc))
            runs = []
            for i in range(args.runs):
                print(f"run {i + 1}/{args.runs} ...", file=sys.stderr, flush=True)
                runs.append(one_run(cfg, args.bare, args.samples))
        finally:
            lab.stop()
    print(
        f"probe run on {args.targets} lab targets (dns icmp tcp tls http2), --samples "
        f"{args.samples}; bare: {args.bare} blocking connects and handshakes per family; "
        f"cpus {os.cpu_count()}"
    )
    print(
        f"{'phase':14} {'reported p50':>13} {'bare p50':>9} {'delta p50':>10} "
        f"{'reported p90':>13} {'bare p90':>9}   (ms, median of {args.runs} runs)"
    )
    for key in runs[0]:
        med = {k: statistics.median(r[key][k] for r in runs) for k in runs[0][key]}
        print(
            f"{key:14} {med['reported_p50_ms']:13.3f} {med['bare_p50_ms']:9.3f} "
            f"{med['delta_p50_ms']:10.3f} {med['reported_p90_ms']:13.3f} "
            f"{med['bare_p90_ms']:9.3f}"
        )
    for i, r in enumerate(runs, 1):
        print(
            f"run {i}: "
            + "; ".join(
                f"{fam} {v['reported_p50_ms']:.3f} vs {v['bare_p50_ms']:.3f} ms (n={v['n']:.0f})"
                for fam, v in r.items()
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ip-ranges benchmark, run by hand (never part of the test suite): the cost of attributing
addresses to AWS's published ranges with `probes.ipranges` on the full shipped snapshot.

Each run is a fresh Python process (so its load time and memory are its own) that measures:
- load: `probes.ipranges.load()` of the shipped snapshot (read, JSON, checks, tables), wall time;
- memory: the RSS growth across that load (VmRSS after it and a gc.collect(), and VmHWM, the
  peak during it, each minus VmRSS before), then tracemalloc of a second build from the same
  bytes: what the loaded table keeps (traced after gc.collect()) and the peak while building;
- lookups per second (wall clock, and per CPU second of this process, which a busy machine
  changes less), `IpRanges.lookup(str)`, for four sets built from the table itself:
  IPv4 and IPv6 addresses inside a published prefix (random addresses of random prefixes) and
  outside every prefix (the addresses just before and just after random prefixes that no prefix
  holds: the worst case, every prefix length is probed), then all four shuffled together.

No network at all: each run installs an audit hook that refuses to create any socket.

    python benchmarks/ipranges_bench.py              # 3 runs
    python benchmarks/ipranges_bench.py --runs 1 --addresses 5000 --seconds 0.5   # quick check
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SETS = ("ipv4 inside", "ipv4 outside", "ipv6 inside", "ipv6 outside", "mix")
CHILD_TIMEOUT = 600.0


def refuse_sockets() -> None:
    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.__new__":
            raise RuntimeError("ipranges_bench: no socket may be created")

    sys.addaudithook(hook)


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def addresses(
    doc: dict[str, Any], lookup: Any, count: int, rng: random.Random
) -> dict[str, list[str]]:
    """`count` addresses per set, built from the file's own prefixes."""
    sets: dict[str, list[str]] = {}
    for family, list_key, key in (
        ("ipv4", "prefixes", "ip_prefix"),
        ("ipv6", "ipv6_prefixes", "ipv6_prefix"),
    ):
        nets = [ipaddress.ip_network(item[key]) for item in doc[list_key]]
        inside = []
        for _ in range(count):
            net = rng.choice(nets)
            inside.append(str(net.network_address + rng.randrange(net.num_addresses)))
        outside: list[str] = []
        tries = 0
        while len(outside) < count and tries < count * 100:
            tries += 1
            net = rng.choice(nets)
            edge = (
                int(net.network_address) - 1
                if rng.random() < 0.5
                else int(net.broadcast_address) + 1
            )
            if 0 <= edge < 2**net.max_prefixlen:
                text = str(
                    ipaddress.IPv4Address(edge) if family == "ipv4" else ipaddress.IPv6Address(edge)
                )
                if lookup(text) is None:
                    outside.append(text)
        assert all(lookup(a) is not None for a in inside), "inside address not found"
        sets[f"{family} inside"] = inside
        sets[f"{family} outside"] = outside
    mix = [a for name in SETS[:4] for a in sets[name]]
    rng.shuffle(mix)
    sets["mix"] = mix
    return sets


def rate(lookup: Any, addrs: list[str], seconds: float) -> tuple[float, float]:
    """Lookups per second over whole passes of `addrs`, for at least `seconds`, and the share
    of that wall time this process had a CPU (below 1: others took the core, the rate is low)."""
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        for address in addrs:
            lookup(address)
        done += len(addrs)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, (time.process_time() - cpu) / elapsed


def child(count: int, seconds: float, seed: int) -> dict[str, Any]:
    refuse_sockets()
    sys.path.insert(0, str(REPO))
    t = time.perf_counter()
    from monitor import ipranges

    import_s = time.perf_counter() - t
    gc.collect()
    rss_before = status_kib("VmRSS")
    t, cpu = time.perf_counter(), time.process_time()
    ranges = ipranges.load()
    load_s, load_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    gc.collect()
    rss_after, hwm = status_kib("VmRSS"), status_kib("VmHWM")

    data = Path(ipranges.__file__).with_name("data").joinpath("aws-ip-ranges.json").read_bytes()
    gc.collect()
    tracemalloc.start()
    again = ipranges.parse(data, "again")
    gc.collect()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del again

    doc = json.loads(data)
    sets = addresses(doc, ranges.lookup, count, random.Random(seed))
    timed = {name: rate(ranges.lookup, sets[name], seconds) for name in SETS}
    distinct = {
        family: len({item[key] for item in doc[list_key]})
        for family, list_key, key in (
            ("ipv4", "prefixes", "ip_prefix"),
            ("ipv6", "ipv6_prefixes", "ipv6_prefix"),
        )
    }
    lengths = {
        family: len({item[key].partition("/")[2] for item in doc[list_key]})
        for family, list_key, key in (
            ("ipv4", "prefixes", "ip_prefix"),
            ("ipv6", "ipv6_prefixes", "ipv6_prefix"),
        )
    }
    return {
        "import_s": import_s,
        "load_s": load_s,
        "load_cpu_s": load_cpu_s,
        "rss_delta_mib": (rss_after - rss_before) / 1024,
        "hwm_delta_mib": (hwm - rss_before) / 1024,
        "kept_mib": kept / 2**20,
        "peak_mib": peak / 2**20,
        "rates": {name: r for name, (r, _) in timed.items()},
        "cpu_share": {name: share for name, (_, share) in timed.items()},
        "set_sizes": {name: len(sets[name]) for name in SETS},
        "file": {
            "sync_token": ranges.sync_token,
            "create_date": ranges.create_date,
            "listings": len(ranges),
            "bytes": len(data),
            "distinct": distinct,
            "lengths": lengths,
        },
    }


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "probes/ipranges.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in probes/ipranges.py" if dirty else " (clean)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes (default 3)")
    parser.add_argument(
        "--addresses", type=int, default=20_000, help="addresses per set (default 20000)"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time each lookup set at least this long (2)"
    )
    parser.add_argument("--seed", type=int, default=1, help="address sets' random seed (1)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.addresses, args.seconds, args.seed)))
        return 0

    load_before = Path("/proc/loadavg").read_text().split()[0]
    runs = []
    for i in range(args.runs):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--addresses",
                str(args.addresses),
                "--seconds",
                str(args.seconds),
                "--seed",
                str(args.seed + i),
            ],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            print(f"run {i + 1} failed:\n{proc.stderr}", file=sys.stderr)
            return 1
        runs.append(json.loads(proc.stdout))

    f = runs[0]["file"]
    print("dualstack-monitor ip-ranges benchmark")
    print(
        f"snapshot : shipped aws-ip-ranges.json, syncToken {f['sync_token']} "
        f"({f['create_date']}), {f['bytes']:,} bytes\n"
        f"           {f['listings']:,} listings = {f['distinct']['ipv4']:,} distinct IPv4 "
        f"prefixes ({f['lengths']['ipv4']} lengths) + {f['distinct']['ipv6']:,} IPv6 "
        f"({f['lengths']['ipv6']} lengths)"
    )
    sizes = runs[0]["set_sizes"]
    print(
        f"lookups  : {', '.join(f'{sizes[n]:,} {n}' for n in SETS[:4])}; the mix is all "
        f"of them shuffled; each set timed >= {args.seconds:g} s"
    )
    print(
        f"machine  : nproc {os.cpu_count()}, {platform.system()} {platform.release()} "
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    load_after = Path("/proc/loadavg").read_text().split()[0]
    print(f"           load average (1 min) {load_before} before the runs, {load_after} after")
    print(f"code     : {git_state()}; {args.runs} fresh process(es)\n")

    def row(name: str, values: list[float], spec: str) -> str:
        cells = [format(v, spec) for v in (statistics.median(values), min(values), max(values))]
        return f"{name:<34} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12}"

    print(f"{'across runs':<34} {'median':>12} {'min':>12} {'max':>12}")
    print(row("load() of the snapshot (s)", [r["load_s"] for r in runs], ".3f"))
    print(row("  CPU seconds of that load", [r["load_cpu_s"] for r in runs], ".3f"))
    print(row("RSS growth after load (MiB)", [r["rss_delta_mib"] for r in runs], ".1f"))
    print(row("RSS peak during load (MiB)", [r["hwm_delta_mib"] for r in runs], ".1f"))
    print(row("table kept, tracemalloc (MiB)", [r["kept_mib"] for r in runs], ".1f"))
    print(row("peak while building, tracemalloc", [r["peak_mib"] for r in runs], ".1f"))
    for name in SETS:
        print(row(f"lookups/s, {name}", [r["rates"][name] for r in runs], ",.0f"))
    # Per CPU second: what the lookups cost, however busy the machine was.
    for name in SETS:
        per_cpu = [r["rates"][name] / r["cpu_share"][name] for r in runs]
        print(row(f"lookups/CPU-s, {name}", per_cpu, ",.0f"))
    print(row("import probes.ipranges (s)", [r["import_s"] for r in runs], ".3f"))
    print()
    for i, r in enumerate(runs, 1):
        shares = ", ".join(f"{r['cpu_share'][n]:.0%}" for n in SETS)
        print(f"run {i}: load {r['load_s']:.3f} s; CPU share while timing each set: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

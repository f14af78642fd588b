"""`probe trace` on a real routed path in network namespaces (tests/lab/routed.py): vantage -
vantage router - transit router - AWS edge router - endpoint, with IPv6 dropped at each router
in turn, for each method. The blame must name the router's network; hops that never answer
show as such, and a trace ends within max_hops x hop_timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab.netns import inside, project_env, python_in
from lab.routed import (
    AWS_EDGE_ROUTER,
    ENDPOINT,
    TRANSIT_ROUTER,
    VANTAGE_ROUTER,
    Fault,
    Path4,
    routed_path,
    set_fault,
)
from polling import wait

HOP_TIMEOUT = 0.3
MAX_HOPS = 8
METHODS = ("udp", "icmp", "icmp-ping", "tcp")
"""icmp: a raw socket (root, ping sockets not allowed); icmp-ping: the unprivileged ping socket."""


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path4]:
    with routed_path(tmp_path_factory.mktemp("routed")) as p:
        yield p


def config(folder: Path, ranges: Path, **trace: Any) -> Path:
    doc = {
        "vantage": "trace-lab",
        "ip_ranges": {"file": str(ranges)},
        "trace": {"hop_timeout": f"{HOP_TIMEOUT:g}s", "max_hops": MAX_HOPS, **trace},
    }
    out = folder / "trace.yml"
    out.write_text(yaml.safe_dump(doc))
    return out


def probe_trace(p: Path4, cfg: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    command = ["-m", "monitor.cli", "trace", "endpoint", "--config", str(cfg), "--format", "json"]
    run = subprocess.run(
        [*p.vantage.exec_prefix(), sys.executable, *command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=project_env(),
        check=False,
    )
    return run.returncode, json.loads(run.stdout) if run.stdout else {}, run.stderr


def traced(p: Path4, tmp_path: Path, fault: Fault, method: str) -> tuple[int, dict[str, Any]]:
    set_fault(p, fault)
    ping = "0 2147483647" if method == "icmp-ping" else "1 0"
    subprocess.run(
        [*p.vantage.exec_prefix(), "sysctl", "-qw", f"net.ipv4.ping_group_range={ping}"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    addresses = [a for address in ENDPOINT for a in ("--address", address)]
    rc, doc, err = probe_trace(
        p, config(tmp_path, p.ranges), "--method", method.split("-")[0], *addresses
    )
    assert doc, err
    assert [t["family"] for t in doc["traces"]] == ["ipv4", "ipv6"], doc
    return rc, doc


def by_family(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["family"]: t for t in doc["traces"]}


def hops(trace: dict[str, Any]) -> list[str | None]:
    return [h["address"] for h in trace["path"]["hops"]]


@pytest.mark.netns
@pytest.mark.parametrize("method", METHODS)
def test_no_fault_both_reach_and_nothing_is_blamed(
    path: Path4, tmp_path: Path, method: str
) -> None:
    rc, doc = traced(path, tmp_path, "none", method)
    t = by_family(doc)
    assert rc == 0, doc
    assert doc["blame"] == {"ipv4": "none", "ipv6": "none"}
    assert hops(t["ipv6"]) == [
        VANTAGE_ROUTER[1],
        TRANSIT_ROUTER[1],
        AWS_EDGE_ROUTER[1],
        ENDPOINT[1],
    ]
    assert hops(t["ipv4"]) == [
        VANTAGE_ROUTER[0],
        TRANSIT_ROUTER[0],
        AWS_EDGE_ROUTER[0],
        ENDPOINT[0],
    ]
    for family in ("ipv4", "ipv6"):
        assert t[family]["reached"] and t[family]["line"].endswith("at hop 4"), t[family]
        edge = t[family]["path"]["hops"][2]
        assert edge["reply"] == "time_exceeded" and edge["aws"]["region"] == "lab-1", edge
        assert t[family]["path"]["hops"][1]["aws"] is None  # the transit router is not AWS
        assert all(r is not None for h in t[family]["path"]["hops"] for r in h["rtts"])


@pytest.mark.netns
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("fault", "last", "blame"),
    [
        ("vantage", None, "vantage"),
        ("transit", VANTAGE_ROUTER[1], "transit"),
        ("aws_edge", AWS_EDGE_ROUTER[1], "aws_edge"),
    ],
)
def test_ipv6_dropped_at_a_router_is_blamed_on_its_network(
    path: Path4, tmp_path: Path, method: str, fault: Fault, last: str | None, blame: str
) -> None:
    rc, doc = traced(path, tmp_path, fault, method)
    t = by_family(doc)
    assert rc == 1, doc
    assert t["ipv4"]["reached"] and t["ipv4"]["blame"] == "none", t["ipv4"]
    v6 = t["ipv6"]
    assert not v6["reached"] and v6["path"]["last_address"] == last, v6
    assert doc["blame"] == {"ipv4": "none", "ipv6": blame}
    if last is None:
        assert v6["line"] == "no hop answered"
    else:
        assert v6["line"] == f"stopped after hop {v6['path']['last_hop']} at {last}"
    # silent hops after the break, until the gap limit (5) ends the trace
    assert hops(v6)[v6["path"]["last_hop"] :] == [None] * 5, hops(v6)


@pytest.mark.netns
def test_a_hop_that_never_answers_is_shown_and_the_path_goes_on(
    path: Path4, tmp_path: Path
) -> None:
    rc, doc = traced(path, tmp_path, "silent_hop", "udp")
    t = by_family(doc)
    assert rc == 0 and doc["blame"] == {"ipv4": "none", "ipv6": "none"}, doc
    for family, index in (("ipv4", 0), ("ipv6", 1)):
        silent = t[family]["path"]["hops"][1]
        assert silent == {
            "hop": 2,
            "address": None,
            "rtts": [None] * 3,
            "reply": "none",
            "aws": None,
        }
        assert hops(t[family])[2:] == [AWS_EDGE_ROUTER[index], ENDPOINT[index]]


@pytest.mark.netns
def test_a_silent_path_ends_within_max_hops_times_the_hop_timeout(
    path: Path4, tmp_path: Path
) -> None:
    set_fault(path, "vantage")
    cfg = config(tmp_path, path.ranges, gap_limit=64)  # no early end: the bound itself
    rc, doc, err = probe_trace(path, cfg, "--address", ENDPOINT[1], "--max-hops", "6")
    assert rc == 1, err
    [v6] = doc["traces"]
    assert hops(v6) == [None] * 6
    assert 6 * HOP_TIMEOUT - 0.05 <= doc["seconds"] <= 6 * HOP_TIMEOUT + 0.5, doc["seconds"]


@pytest.mark.netns
def test_the_tcp_method_without_raw_sockets_names_the_privilege(
    path: Path4, tmp_path: Path
) -> None:
    set_fault(path, "none")
    cfg = config(tmp_path, path.ranges)
    # uid 0 stripped of every capability (CAP_NET_RAW included), as tests/test_lab_up.py does:
    # the interpreter lives under /root, which `nobody` may not read.
    unprivileged = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"]
    unprivileged += ["--no-new-privs", "--", sys.executable]
    command = ["-m", "monitor.cli", "trace", "--config", str(cfg), "--format", "json"]
    run = subprocess.run(
        [*path.vantage.exec_prefix(), *unprivileged, *command, "--method=tcp", ENDPOINT[0]],
        capture_output=True,
        text=True,
        timeout=60,
        env=project_env(),
        check=False,
    )
    assert run.returncode == 1, run.stderr
    [v4] = json.loads(run.stdout)["traces"]
    assert v4["error"]["kind"] == "icmp_not_permitted", v4
    assert "root or grant CAP_NET_RAW" in v4["error"]["message"], v4
    assert v4["path"] is None and v4["line"] == v4["error"]["message"]


SERVER = """
import asyncio, sys
from monitor.lab.dnsserver import DnsRecord, DnsServer

v4, v6 = sys.argv[1:3]

async def main():
    records = {
        "example.com": [DnsRecord(rtype="SOA", value="ns.example.com. h.example.com. 1 1 1 1 1")],
        **{
            f"{name}.example.com": [
                DnsRecord(rtype="A", value=v4, ttl=1), DnsRecord(rtype="AAAA", value=v6, ttl=1)
            ]
            for name in ("app", "app2")
        },
    }
    async with DnsServer(records, ["example.com"], hosts=(v4,), port=53):
        servers = [await asyncio.start_server(lambda r, w: w.close(), a, 443) for a in (v4, v6)]
        print("ready", flush=True)
        await asyncio.sleep(300)

asyncio.run(main())
"""


OVER_BUDGET = 'dualstack_trace_runs_total{result="over_budget",vantage="trace-lab"}'


def fetch(url: str) -> tuple[int, str]:
    """GET on the loopback of the namespace this runs in (`inside`)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


@pytest.mark.netns
def test_serve_traces_a_verdict_that_turns_ipv6_failed_within_the_budget(
    path: Path4, tmp_path: Path
) -> None:
    """Two targets turn ipv6_failed together with the transit fault; the budget (1 a minute)
    lets one trace run, which blames transit, and counts the other as over budget."""
    set_fault(path, "none")
    doc = {
        "vantage": "trace-lab",
        "interval": "1s",
        "timeout": "1s",
        "resolver": {"nameservers": [ENDPOINT[0]]},
        "ip_ranges": {"file": str(path.ranges)},
        "trace": {"hop_timeout": f"{HOP_TIMEOUT:g}s", "max_hops": MAX_HOPS, "budget": 1},
        "targets": [
            {"name": name, "host": f"{name}.example.com", "probes": ["tcp"]}
            for name in ("app", "app2")
        ],
    }
    cfg = tmp_path / "serve.yml"
    cfg.write_text(yaml.safe_dump(doc))
    base = "http://127.0.0.1:9851"
    serve_command = ["-m", "monitor.cli", "serve", "--config", str(cfg), "--listen", base[7:]]
    with (
        python_in(path.endpoint, SERVER, *ENDPOINT),
        inside(path.vantage) as ex,
    ):
        serve = subprocess.Popen(
            [*path.vantage.exec_prefix(), sys.executable, *serve_command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=project_env(),
        )
        try:

            def get(url: str) -> tuple[int, str]:
                return ex.submit(fetch, base + url).result(10)

            wait("ready", lambda: get("/readyz")[0] == 200, 30)
            set_fault(path, "transit")
            switched = time.monotonic()

            def traced() -> list[dict[str, Any]]:
                events = json.loads(get("/api/v1/events")[1] or '{"events": []}')["events"]
                return events if any(e["type"] == "trace" for e in events) else []

            events = wait("a trace event", traced, 60)
            assert time.monotonic() - switched < 60
            metrics = wait(
                "the second change counted over budget",
                lambda: (m := get("/metrics")[1]) and f"{OVER_BUDGET} 1.0" in m and m,
                30,
            )
            events = json.loads(get("/api/v1/events")[1])["events"]
        finally:
            serve.terminate()
            _, err = serve.communicate(timeout=30)
    changes = {e["seq"]: e for e in events if e["type"] == "verdict_change"}
    assert sorted((e["target"], e["from"], e["to"]) for e in changes.values()) == [
        ("app", "ok", "ipv6_failed"),
        ("app2", "ok", "ipv6_failed"),
    ], err
    [trace_event] = [e for e in events if e["type"] == "trace"]
    change = changes[trace_event["about"]]
    assert trace_event["target"] == change["target"] and trace_event["probe"] == "tcp"
    trace = trace_event["trace"]
    assert change["trace"] == trace  # the verdict change carries its trace
    assert trace["blame"] == {"ipv4": "none", "ipv6": "transit"}, trace
    v4, v6 = trace["traces"]
    assert v4["reached"] and v6["address"] == ENDPOINT[1]
    assert v6["line"] == f"stopped after hop 1 at {VANTAGE_ROUTER[1]}"
    assert 'dualstack_trace_runs_total{result="traced",vantage="trace-lab"} 1.0' in metrics
    target = trace_event["target"]
    blame = (
        f'dualstack_path_blame{{blame="transit",family="ipv6",region="none",service="custom",'
        f'target="{target}",vantage="trace-lab"}} 1.0'
    )
    assert blame in metrics, [line for line in metrics.splitlines() if "path_blame" in line]

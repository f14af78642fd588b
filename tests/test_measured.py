"""Measured right, said right: every error says the phase it happened in (a blackholed IPv6
connect is `connect`, a ClientHello never answered is `tls`), and a run where nothing works
over either family blames the vantage in one line and exits 4."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from monitor.cli import main
from monitor.engine.schema import report_schema
from monitor.lab.loopback import LabFacts, endpoint_host
from probes.base import Family, ProbeEnv, ProbeResult, Resolution, Target
from probes.handler import run_probe

BLACKHOLED = "2001:db8:1::10"


def _probe(kind: str, address: str, port: int, timeout: float = 1.0) -> ProbeResult:
    target = Target(
        name="t", service="s", region="none", host="t.example", port=port, timeout=timeout
    )
    res = Resolution(family="ipv6", addresses=(address,))
    return asyncio.run(run_probe(kind, target, "ipv6", res, ProbeEnv()))


PROBE_IT = """
import asyncio, json, sys
from probes.base import ProbeEnv, Resolution, Target
from probes.handler import run_probe

target = Target(name="t", service="s", region="none", host="t.example", timeout=0.5)
res = Resolution(family="ipv6", addresses=(sys.argv[1],))
result = asyncio.run(run_probe("tcp", target, "ipv6", res, ProbeEnv()))
print(json.dumps(result.error.to_json() if result.error else None))
"""


@pytest.mark.netns
def test_blackholed_ipv6_connect_says_connect() -> None:
    from lab.netns import ip, namespace, nft, project_env

    with namespace("ds-bh") as ns:
        ip("addr", "add", f"{BLACKHOLED}/128", "dev", "lo", "nodad", netns=ns.name)
        # Its SYNs vanish: no RST, no ICMP, the connect waits until the deadline.
        nft(
            ns,
            "table inet t {\n  chain bh {\n    type filter hook input priority 0;\n"
            f"    ip6 daddr {BLACKHOLED} tcp dport 443 drop\n  }}\n}}\n",
        )
        # A child born in the namespace: the network guard allows the lab prefixes there only.
        run = subprocess.run(
            [*ns.exec_prefix(), sys.executable, "-c", PROBE_IT, BLACKHOLED],
            capture_output=True,
            text=True,
            timeout=60,
            env=project_env(),
            check=True,
        )
    err = json.loads(run.stdout)
    assert (err["kind"], err["phase"]) == ("timeout", "connect"), err


@pytest.fixture
def mute_server() -> Iterator[int]:
    """A ::1 port that accepts TCP and never says a word (the ClientHello goes unanswered)."""
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def test_unanswered_client_hello_says_tls(mute_server: int) -> None:
    result = _probe("tls", "::1", mute_server, 0.5)
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == ("timeout", "handshake")


def test_refused_connect_says_connect() -> None:
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        port = int(s.getsockname()[1])  # bound, never listening: refused
        result = _probe("tls", "::1", port)
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == ("connect_refused", "connect")


def _errors(doc: Any) -> Iterator[dict[str, Any]]:
    """Every error object anywhere in a report."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "error" and isinstance(value, dict):
                yield value
            yield from _errors(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _errors(item)


def test_every_error_of_a_lab_run_has_a_phase(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["run", "--config", str(lab_config_file), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, report_schema())
    errors = list(_errors(doc))
    assert errors and all(e["phase"] for e in errors), [e for e in errors if not e["phase"]]
    by = {(r["target"], r["probe"], r["family"]): r for r in doc["results"]}
    # the lab's v6_timeout blackholes ::1 for that endpoint: its SYNs go unanswered
    assert by["v6_timeout", "tcp", "ipv6"]["error"]["phase"] == "connect"
    assert by["v4_only", "tcp", "ipv6"]["error"]["phase"] == "connect"


def _config(tmp_path: Path, port: int, hosts: dict[str, str]) -> Path:
    path = tmp_path / "cfg.yml"
    doc = {
        "vantage": "nothing-works",
        "timeout": "2s",
        "resolver": {"nameservers": ["127.0.0.1"], "port": port},
        "targets": [
            {"name": name, "host": host, "probes": ["dns", "tcp", "tls"]}
            for name, host in hosts.items()
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_nxdomain_for_everything_blames_the_vantage(
    lab_session: LabFacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = lab_session.dns_port
    hosts = {n: f"{n}.nowhere.example.com" for n in ("a", "b", "c")}
    path = _config(tmp_path, port, hosts)
    assert main(["run", "--config", str(path)]) == 4
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err
    assert "every target failed over both families" in err
    assert "dns_nxdomain in resolve, 18 of 18" in err and f"resolver 127.0.0.1:{port}" in err
    assert "no IPv6 regression" not in out + err
    assert main(["run", "--config", str(path), "--format", "json"]) == 4
    out, err = capsys.readouterr()
    assert json.loads(out)["vantage_offline"] == err.strip().removeprefix("probe: ")


def test_one_working_target_keeps_the_status(
    lab_session: LabFacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = {n: f"{n}.nowhere.example.com" for n in ("a", "b", "c")}
    hosts["ok"] = endpoint_host("healthy")
    path = _config(tmp_path, lab_session.dns_port, hosts)
    assert main(["run", "--config", str(path), "--ca-file", str(lab_session.ca_file)]) != 4
    assert "every target failed" not in capsys.readouterr().err


def test_snapshot_says_when_nothing_works() -> None:
    """`Snapshot.vantage_probing_ok` (dualstack_vantage_probing_ok): False only when the
    latest result of every job failed over both families."""
    from monitor.serve.state import Store
    from probes.base import ErrorKind, ProbeError

    def result(target: str, family: Family, ok: bool) -> ProbeResult:
        err = ProbeError(kind=ErrorKind.DNS_NXDOMAIN, message="x", phase="resolve")
        return ProbeResult(
            target=target,
            probe="tcp",
            family=family,
            address=None,
            success=ok,
            duration_seconds=0.0,
            started=0.0,
            error=None if ok else err,
        )

    store = Store(vantage="v")
    assert store.snapshot().vantage_probing_ok  # no result yet: nothing to blame
    store.latest[("a", "tcp", "ipv4")] = result("a", "ipv4", False)
    assert store.snapshot().vantage_probing_ok  # one target failing blames no vantage
    for t in ("a", "b", "c"):
        for fam in ("ipv4", "ipv6"):
            store.latest[(t, "tcp", fam)] = result(t, fam, False)
    assert not store.snapshot().vantage_probing_ok
    store.latest[("b", "tcp", "ipv4")] = result("b", "ipv4", True)  # one family of one job
    assert store.snapshot().vantage_probing_ok


def test_family_ipv4_race_claims_no_ipv6_cost(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """IPv6 never tried: not "IPv4 won ... IPv6 cost this client 0 ms"."""
    args = ["run", "--config", str(lab_config_file), "--target", "healthy", "--probe", "race"]
    main([*args, "--family", "ipv4", "--no-progress"])
    out = capsys.readouterr().out
    assert "race healthy: IPv4 won (127.0.0.1)" in out and "IPv6 not tried" in out
    assert "IPv6 cost this client" not in out
    main([*args, "--family", "ipv4", "--format", "json"])
    [race] = json.loads(capsys.readouterr().out)["results"]
    assert (race["probe"], race["family"]) == ("race", "ipv4")
    details = race["details"]
    assert details["ipv6_penalty_seconds"] is None and details["direct_ipv4_seconds"] is None

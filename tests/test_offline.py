"""A vantage that cannot probe at all (issue 13, finding 11): when no DNS server answered any
query, `probe run` says so in one line (which servers, what error, "is this machine online?")
and exits 4, and a resolver that cannot be reached is `network_unreachable` (or the kind of its
socket error), not `dns_bad_response`. `probe serve` logs it once per change of state, and its
/readyz says why."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import pytest
import yaml
from serving import serve

from monitor.cli import main
from monitor.engine.schema import report_schema
from monitor.lab.loopback import LabFacts, endpoint_host
from monitor.lab.run import write_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = report_schema()
RESOLVERS = ("2001:db8::53", "198.51.100.53")


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")])
    return out


@contextmanager
def offline_namespace() -> Iterator[list[str]]:
    """A network namespace with only its loopback interface, down: no route anywhere. Its
    resolv.conf (`ip netns exec` mounts /etc/netns/<name>/resolv.conf) names documentation
    addresses, which could go nowhere anyway. Yields the command prefix to run inside."""
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns)")
    name = f"ds-off-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("".join(f"nameserver {a}\n" for a in RESOLVERS))
        yield ["ip", "netns", "exec", name]
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)


@pytest.mark.netns
def test_offline_vantage_exits_4_in_one_line() -> None:
    """The shipped default config, in a namespace with only a loopback that is down."""
    with offline_namespace() as inside:
        proc = subprocess.run(
            [*inside, sys.executable, "-m", "monitor.cli", "run"],
            capture_output=True,
            text=True,
            timeout=180,
            env=env(),
            check=False,
        )
        as_json = subprocess.run(
            [*inside, sys.executable, "-m", "monitor.cli", "run", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=180,
            env=env(),
            check=False,
        )
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert all(a in lines[0] for a in RESOLVERS) and "is this machine online?" in lines[0]
    assert "both_failed" not in proc.stdout  # not fifty rows that say nothing
    assert as_json.returncode == 4
    doc = json.loads(as_json.stdout)
    assert doc["vantage_offline"] == lines[0].removeprefix("probe: ")
    kinds = {r["error"]["kind"] for r in doc["results"] if r["probe"] == "dns"}
    assert kinds == {"network_unreachable"}, kinds


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback UDP port where nothing listens: the kernel answers a query with ICMP port
    unreachable, which the resolver reports as connect_refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback UDP port that takes every query and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "cfg.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "vantage": "offline",
                "interval": "1s",
                "timeout": "1s",
                "resolver": {"nameservers": ["127.0.0.1"], "port": port},
                "targets": [
                    {"name": "one", "host": "one.example", "probes": ["dns", "tcp"]},
                    {"name": "two", "host": "two.example", "probes": ["dns"]},
                ],
            }
        )
    )
    return path


def test_closed_resolver_port_is_exit_4(
    tmp_path: Path, dead_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(config(tmp_path, dead_port)), "--format", "json"]) == 4
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert {r["error"]["kind"] for r in doc["results"]} == {"connect_refused"}
    assert err.count("\n") == 1 and f"127.0.0.1 port {dead_port}: Connection refused" in err
    assert "is this machine online?" in err
    assert doc["vantage_offline"] == err.strip().removeprefix("probe: ")
    jsonschema.validate(doc, SCHEMA)


def test_silent_resolver_is_exit_4(
    tmp_path: Path, silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(config(tmp_path, silent_port))]) == 4
    err = capsys.readouterr().err
    assert "timed out" in err and "is this machine online?" in err


def test_any_answer_means_online(lab_session: LabFacts, tmp_path: Path) -> None:
    """A resolver that answers, even NXDOMAIN, is reachable: not exit 4. (One name that does
    not exist blames no vantage either: that takes every target of at least three failing,
    tests/test_measured.py.)"""
    path = config(tmp_path, lab_session.dns_port)
    doc = yaml.safe_load(path.read_text())
    doc["targets"] = [{"name": "missing", "host": "nowhere.example.com", "probes": ["dns"]}]
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", "--config", str(path)]) == 0


def test_precedence_usage_before_offline(tmp_path: Path, dead_port: int) -> None:
    assert main(["run", "--config", str(config(tmp_path, dead_port)), "--target", "nope"]) == 2


@pytest.mark.slow(30)
def test_serve_logs_and_readyz_say_why(
    lab_session: LabFacts, tmp_path: Path, dead_port: int
) -> None:
    path = config(tmp_path, dead_port)
    with serve(path, "--web.enable-lifecycle") as served:
        served.wait_event("dns_unreachable", timeout=40)
        status, body = served.get("/readyz")
        assert status == 503 and "no DNS server answered" in body and str(dead_port) in body
        api = json.loads(served.get("/api/v1/results")[1])
        assert "is this machine online?" in api["vantage_offline"]
        time.sleep(11)  # another housekeeping round, still offline: logged once, not again
        assert len(served.events("dns_unreachable")) == 1
        # The resolver comes back: logged once more, ready again.
        good = write_config(lab_session, tmp_path / "good.yml", vantage="offline", interval="1s")
        doc = yaml.safe_load(good.read_text())
        doc["targets"] = [
            {"name": "one", "host": endpoint_host("healthy"), "probes": ["dns", "tcp"]}
        ]
        doc["route53"] = {"zones": []}
        path.write_text(yaml.safe_dump(doc))
        assert served.post("/-/reload") == 200
        served.wait_event("dns_reachable", timeout=40)
        deadline = time.monotonic() + 30
        while served.get("/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert served.get("/readyz") == (200, "ready\n")
        assert len(served.events("dns_unreachable")) == 1


def test_status_page_says_why() -> None:
    from monitor.web.statuspage import render_status_page

    doc = json.loads((ROOT / "tests" / "testdata" / "status" / "report.json").read_text())
    doc["vantage_offline"] = "no DNS server answered any query (<x>): is this machine online?"
    page = render_status_page(doc, ready=True, now=time.time())
    assert 'id="offline"' in page and "is this machine online?" in page
    assert "<x>" not in page and "&lt;x&gt;" in page

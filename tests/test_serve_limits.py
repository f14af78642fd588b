"""Idle and half-sent clients cannot blind the vantage (issue 13, finding 2): `probe serve`
under `prlimit --nofile=256:256`, with 400 clients that connect and send nothing or half a
request (reconnecting as soon as they are closed), keeps every probe working and answers
/metrics; when the clients stop reconnecting, the server has closed them all within 30 s.
Also: the cap follows the descriptor limit, the soft limit is raised to the hard one, and the
timeouts have flags."""

from __future__ import annotations

import errno
import http.client
import selectors
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from serving import Served, serve

from monitor.lab.loopback import LabFacts
from monitor.lab.run import write_config
from monitor.web.limits import connection_cap, probe_reserve

PROBES = ["dns", "tcp", "tls", "http2", "http3"]
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: vantage\r\nX-Slow: "


class Flood:
    """`count` clients on 127.0.0.1:`port`, half idle and half sending a partial request; each
    one the server closes is replaced while `attacking` is set. Runs in its own thread."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.attacking = threading.Event()
        self.attacking.set()
        self.stop = threading.Event()
        self.opened = 0
        self.closed_by_server = 0
        self.open_now = 0
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def _connect(self, sel: selectors.BaseSelector, half: bool) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            return
        sel.register(s, selectors.EVENT_WRITE, ("connecting", half))
        self.opened += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for i in range(self.count):
            self._connect(sel, half=i % 2 == 1)
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                state, half = key.data
                if state == "connecting":
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        sel.unregister(s)
                        s.close()
                        if self.attacking.is_set():
                            self._connect(sel, half)
                        continue
                    if half:
                        s.send(HALF_REQUEST)
                    sel.modify(s, selectors.EVENT_READ, ("open", half))
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    continue  # an error response before the close: keep reading
                sel.unregister(s)
                s.close()
                self.closed_by_server += 1
                if self.attacking.is_set():
                    self._connect(sel, half)
            self.open_now = len(sel.get_map())
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(10)


def held_by(pid: int, port: int, *, peer: str) -> set[int]:
    """Client ports of the established connections process `pid` holds on `port` (ss -p),
    from client address `peer`: accepted ones, not those still in the kernel's queue."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if f"pid={pid}," not in line or len(fields) < 4:
            continue
        address, _, client_port = fields[3].rpartition(":")
        if address.strip("[]") == peer:
            ports.add(int(client_port))
    return ports


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(
    served: Served, timeout: float = 5.0
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape from 127.0.0.2, another client address than the flood's (127.0.0.1), as
    Prometheus would be."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", served.port, timeout=timeout, source_address=("127.0.0.2", 0)
    )
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        return samples(resp.read().decode())
    finally:
        conn.close()


def total(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


@pytest.fixture
def config(lab_session: LabFacts, tmp_path: Path) -> Path:
    path = write_config(lab_session, tmp_path / "lab.yml", vantage="limits", interval="1s")
    doc = yaml.safe_load(path.read_text())
    doc["targets"] = [{**t, "probes": PROBES} for t in doc["targets"] if t["name"] == "healthy"]
    doc["route53"] = {"zones": []}
    doc["timeout"] = "2s"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow(40)
def test_400_idle_clients_under_256_descriptors(config: Path) -> None:
    with serve(config, prefix=["prlimit", "--nofile=256:256", "--"]) as served:
        served.wait_ready()
        listening = served.events("listening")[0]
        assert listening["descriptor_limit"] == 256
        assert listening["max_connections"] == connection_cap(256, 32)
        before = scrape(served)
        with Flood(served.port, 400) as flood:
            deadline = time.monotonic() + 8
            scrapes = 0
            while time.monotonic() < deadline:
                during = scrape(served)  # answers, however many clients wait
                scrapes += 1
                time.sleep(0.5)
            assert flood.opened >= 400 and flood.closed_by_server > 0
            after = scrape(served)
            # Every probe kept working: each ran again, all succeeded, no error was counted.
            for probe in PROBES:
                for family in ("ipv4", "ipv6"):
                    labels = frozenset(
                        {
                            "vantage": "limits",
                            "target": "healthy",
                            "service": "alb",
                            "region": "us-east-1",
                            "probe": probe,
                            "family": family,
                        }.items()
                    )
                    runs = ("dualstack_probe_runs_total", labels)
                    assert after[runs] > before[runs] + 3, (probe, family)
                    assert after[("dualstack_probe_success", labels)] == 1.0, (probe, family)
            assert total(after, "dualstack_probe_errors_total") == total(
                before, "dualstack_probe_errors_total"
            ), {k: v for k, v in after.items() if k[0] == "dualstack_probe_errors_total"}
            assert scrapes >= 4 and during  # about 16 on a quiet machine
            # The clients stop coming back but stay open, as long as the server lets them: no
            # connection the server holds lives past the header deadline (10 s). Those the
            # kernel still queues are accepted (and timed) as their handshakes complete.
            flood.attacking.clear()
            first_seen: dict[int, float] = {}
            last_seen: dict[int, float] = {}
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:
                now = time.monotonic()
                for port in held_by(served.proc.pid, served.port, peer="127.0.0.1"):
                    first_seen.setdefault(port, now)
                    last_seen[port] = now
                time.sleep(0.5)
            lifetimes = [last_seen[p] - first_seen[p] for p in first_seen]
            assert first_seen, "ss saw no connection: the check would prove nothing"
            assert max(lifetimes) < 12, f"a connection was held {max(lifetimes):.1f} s"
            still = held_by(served.proc.pid, served.port, peer="127.0.0.1")
            assert all(now - first_seen.get(p, now) < 12 for p in still)
        assert served.events("connection_limit"), "reaching the cap was not logged"
        assert not [e for e in served.logs if "Too many open files" in str(e.get("msg", ""))]


def test_idle_and_header_timeouts_have_flags(config: Path) -> None:
    """--web.read-header-timeout closes a silent connection; --web.idle-timeout a kept-alive
    one after its request."""
    with serve(config, "--web.read-header-timeout", "1s", "--web.idle-timeout", "2s") as served:
        silent = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        kept = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: v\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert silent.recv(1) == b""
        silent_after = time.monotonic() - t0
        assert kept.recv(1) == b""
        kept_after = time.monotonic() - t0
        silent.close()
        kept.close()
    assert 0.5 < silent_after < 3.0
    assert 1.0 < kept_after < 4.0


def test_the_cap_follows_the_descriptor_limit() -> None:
    assert connection_cap(256, 32) == 256 - probe_reserve(32)
    assert connection_cap(1 << 20, 32) == 1024  # a ceiling: a metrics endpoint needs few
    assert connection_cap(64, 32) == 8  # a floor: the server still answers
    assert probe_reserve(64) > probe_reserve(32)


def test_soft_descriptor_limit_is_raised_to_the_hard_one(config: Path) -> None:
    with serve(config, prefix=["prlimit", "--nofile=300:600", "--"]) as served:
        assert served.events("listening")[0]["descriptor_limit"] == 600

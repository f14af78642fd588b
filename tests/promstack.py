"""Real Prometheus (and Alertmanager) processes for tests, on loopback, with their data in a
temporary folder. Both pick their listen port up front: neither reports a kernel-chosen port
back, so we take one the kernel just handed out and retry on the rare collision."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: ./scripts/test installs it (apt-get)")
    return path


def promtool_check_metrics(text: str) -> str:
    """What `promtool check metrics` says of an exposition: "" when it is clean."""
    proc = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    said = (proc.stdout + proc.stderr).strip()
    return said or ("" if proc.returncode == 0 else f"promtool exited {proc.returncode}")


def http_json(url: str, data: bytes | None = None, timeout: float = 10) -> Any:
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class Service:
    """A started binary: its process, its loopback port and its log file."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Prometheus(Service):
    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        doc = http_json(f"{self.url}/api/v1/query?{q}")
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def wait_for(self, expr: str, *, timeout: float = 60.0, min_results: int = 1) -> list[Any]:
        deadline = time.monotonic() + timeout
        result: list[Any] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if len(result) >= min_results:
                return result
            time.sleep(0.5)
        raise AssertionError(
            f"{expr!r}: {len(result)} results after {timeout} s\n" + self.log.read_text()[-3000:]
        )

    def get(self, path: str) -> Any:
        return http_json(self.url + path)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready: {log.read_text()[-3000:]}")


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_scrape_config(
    path: Path, ports: list[int], *, job: str = "dualstack", **extra: Any
) -> Path:
    """A Prometheus config scraping vantages on loopback every second (extra top-level keys
    such as rule_files or alerting are added as given)."""
    doc = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
        ],
        **extra,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@contextmanager
def prometheus(config: Path, workdir: Path, *extra: str) -> Iterator[Prometheus]:
    """A Prometheus server; with `--enable-feature=agent` in `extra`, an agent (which keeps a
    WAL in --storage.agent.path and refuses --storage.tsdb.path)."""
    port = free_port()
    log = workdir / f"prometheus-{port}.log"
    agent = "--enable-feature=agent" in extra
    storage = (
        f"--storage.agent.path={workdir / f'agent-wal-{port}'}"
        if agent
        else f"--storage.tsdb.path={workdir / f'tsdb-{port}'}"
    )
    args = [
        binary("prometheus"),
        f"--config.file={config}",
        storage,
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        *extra,
    ]
    with _process(args, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, log)
        yield Prometheus(proc=proc, port=port, log=log)


class Alertmanager(Service):
    def alerts(self) -> list[dict[str, Any]]:
        return list(http_json(f"{self.url}/api/v2/alerts"))

    def post(self, alerts: list[dict[str, Any]]) -> None:
        """Send alerts as Prometheus does (API v2)."""
        req = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


@contextmanager
def alertmanager(config: Path, workdir: Path) -> Iterator[Alertmanager]:
    port = free_port()
    log = workdir / f"alertmanager-{port}.log"
    args = [
        binary("prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={workdir / f'am-{port}'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip: a single instance on loopback
    ]
    with _process(args, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, log)
        yield Alertmanager(proc=proc, port=port, log=log)

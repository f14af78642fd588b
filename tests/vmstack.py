"""Real VictoriaMetrics processes for tests and benchmarks, on loopback, with their data in a
temporary folder: the single-node store, vmagent and vmalert of Debian's `victoria-metrics`
package (1.79). Like tests/promstack.py, each takes a port the kernel just handed out (none of
them reports a kernel-chosen port back)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from promstack import Service, binary, free_port, http_json

# Without it, VictoriaMetrics answers instant queries as of 30 s ago (-search.latencyOffset):
# vmalert would see every change half a minute late. docs/scale.md says the same.
LATENCY_OFFSET = "-search.latencyOffset=1s"


def wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.read().strip() == b"OK":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready: {log.read_text()[-3000:]}")


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class VictoriaMetrics(Service):
    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": str(at)} if at is not None else {})}
        doc = http_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
        doc = http_json(f"{self.url}/api/v1/query_range?{q}")
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def export(self, match: str, start: float | None = None) -> list[dict[str, Any]]:
        """Raw samples (after deduplication) of every series matching `match`."""
        params = {"match[]": match, **({"start": str(start)} if start is not None else {})}
        url = f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]

    def series(self, match: str) -> list[dict[str, str]]:
        q = urllib.parse.urlencode({"match[]": match, "start": time.time() - 86400})
        return list(http_json(f"{self.url}/api/v1/series?{q}")["data"])

    def flush(self) -> None:
        """Make what was ingested searchable now (it otherwise takes up to a second)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass

    def metrics(self) -> dict[str, float]:
        return scrape_values(f"{self.url}/metrics")


def scrape_values(url: str) -> dict[str, float]:
    """name{labels} -> value of a /metrics page (no parsing beyond what the tests need)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


@contextmanager
def victoria_metrics(workdir: Path, *extra: str) -> Iterator[VictoriaMetrics]:
    port = free_port()
    log = workdir / f"victoria-metrics-{port}.log"
    args = [
        binary("victoria-metrics"),
        f"-storageDataPath={workdir / f'vm-{port}'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=1d",
        LATENCY_OFFSET,
        *extra,
    ]
    with _process(args, log) as proc:
        wait_ok(f"http://127.0.0.1:{port}/health", proc, log)
        yield VictoriaMetrics(proc=proc, port=port, log=log)


@contextmanager
def vmagent(config: Path, workdir: Path, write_to: str, *extra: str) -> Iterator[Service]:
    """vmagent scraping what `config` says, remote-writing to `write_to` (a base URL)."""
    port = free_port()
    log = workdir / f"vmagent-{port}.log"
    args = [
        binary("vmagent"),
        f"-promscrape.config={config}",
        f"-remoteWrite.url={write_to}/api/v1/write",
        f"-remoteWrite.tmpDataPath={workdir / f'vmagent-{port}'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-remoteWrite.flushInterval=1s",
        *extra,
    ]
    with _process(args, log) as proc:
        wait_ok(f"http://127.0.0.1:{port}/health", proc, log)
        yield Service(proc=proc, port=port, log=log)


@contextmanager
def vmalert(
    rules: list[Path], workdir: Path, store: str, notifier: str | None, *extra: str
) -> Iterator[Service]:
    """vmalert evaluating `rules` against `store` (a base URL), writing recording rules and
    ALERTS back to it and restoring alert state from it; alerts go to `notifier`."""
    port = free_port()
    log = workdir / f"vmalert-{port}.log"
    args = [
        binary("vmalert"),
        *(f"-rule={r}" for r in rules),
        f"-datasource.url={store}",
        f"-remoteWrite.url={store}",
        f"-remoteRead.url={store}",
        f"-httpListenAddr=127.0.0.1:{port}",
        *([f"-notifier.url={notifier}"] if notifier else ["-notifier.url=http://127.0.0.1:1"]),
        *extra,
    ]
    with _process(args, log) as proc:
        wait_ok(f"http://127.0.0.1:{port}/health", proc, log)
        yield Service(proc=proc, port=port, log=log)

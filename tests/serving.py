"""Run `probe serve` as a real process for tests: start it, learn its port from its JSON log,
wait for readiness, scrape it, stop it with a signal and check it exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    logs: list[dict[str, object]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, *, headers: dict[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str) -> int:
        req = urllib.request.Request(self.url + path, data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError("probe serve was not ready in time")

    def wait_verdicts(self, want: dict[tuple[str, str], str], timeout: float = 30.0) -> None:
        """Until /api/v1/results gives each (target, probe) its verdict. A round that meets a
        machine busy starting Chromium may time a handshake out; the next one is judged."""
        deadline = time.monotonic() + timeout
        got: dict[tuple[str, str], str] = {}
        while time.monotonic() < deadline:
            status, body = self.get("/api/v1/results")
            if status == 200:
                got = {(p["target"], p["probe"]): p["verdict"] for p in json.loads(body)["parity"]}
                if all(got.get(key) == verdict for key, verdict in want.items()):
                    return
            time.sleep(0.5)
        missed = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
        raise AssertionError(f"verdicts (wanted, got) not reached in {timeout:g} s: {missed}")

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in list(self.logs) if e.get("event") == name]

    def wait_event(self, name: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events(name)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name!r} event in the log")
            time.sleep(0.1)


@contextmanager
def serve(
    config: Path,
    *extra: str,
    env_extra: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    listen: str = "127.0.0.1:0",
) -> Iterator[Served]:
    """`probe serve` on `listen`, JSON logs; `prefix` runs it under a wrapper (prlimit)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [
            *prefix,
            sys.executable,
            "-m",
            "monitor.cli",
            "serve",
            "--config",
            str(config),
            "--listen",
            listen,
            "--log-format",
            "json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    logs: list[dict[str, object]] = []
    port_seen = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"event": "raw", "msg": line.rstrip()}
            logs.append(entry)
            if entry.get("event") == "listening":
                port_seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not port_seen.wait(30):
            proc.kill()
            raise AssertionError(f"probe serve did not start: {logs}")
        port = next(int(str(e["port"])) for e in logs if e.get("event") == "listening")
        yield Served(proc=proc, port=port, logs=logs)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

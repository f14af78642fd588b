"""Soak test of `probe serve`, run by hand; bounded in time, it stops by itself. Its 2-minute
variant (correctness only: no timing, no memory) is tests/test_soak.py.

The vantage (`probe serve`, a real process) probes the lab (`probe lab up`, a real process)
while everything around it changes:

- faults switched every --fault-every seconds: a switch (a TCP proxy of this script, in front
  of the lab's healthy endpoint) turns its IPv6 side from ok to reset (RST after accept), to
  blackhole (accept, never answer), to refuse (nothing listens), and back to ok in between;
- servers restarted: the whole lab every --restart-every seconds (new ports, a new CA written
  to the same file), after which the vantage's config is rewritten and reloaded and the switch
  follows the new port;
- reloads every --reload-every seconds (a target added or removed), by SIGHUP and by
  POST /-/reload in turn;
- idle and slow clients (--clients at once): half connect and send nothing, half send one
  byte of a request a second; each is replaced as soon as the server closes it;
- a scrape of /metrics every --scrape-every seconds.

Checked, and printed: no stuck job (every job's last run is recent; no run hung or crashed),
counters monotonic (no counter or histogram series decreases between two scrapes while it
exists), every fault reflected in the metrics within two intervals (plus one scrape period):
the switched target's IPv6 tcp and tls success as the mode says, from a run that started after
the switch; and, after a lab restart, both families of the direct target working again), every
reload successful, every idle or slow client closed by the server within the header deadline.
Without --correctness-only, also: the vantage's RSS and open descriptors flat between the end of
the warm-up and the end, within RSS_TOLERANCE_MIB and FD_TOLERANCE.

Traffic: loopback only; this process and every process it starts refuse (with an audit hook,
before the system call) any connect, sendto, sendmsg or name lookup outside 127.0.0.0/8, ::1.

    python benchmarks/soak.py                           # 30 minutes
    python benchmarks/soak.py --duration 120 --correctness-only   # what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import functools
import ipaddress
import json
import os
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LAB_READY = "lab ready: config written to "
START_TIMEOUT = 60.0
RSS_TOLERANCE_MIB = 16.0
"""RSS growth allowed between the end of the warm-up and the end (medians of five samples)."""
FD_TOLERANCE = 10
"""Open descriptors growth allowed, the same way."""
FAULT_CYCLE = ("reset", "ok", "blackhole", "ok", "refuse", "ok")
# What the switched target's IPv6 side shows in each mode: (tcp success, tls success).
EXPECTED = {"ok": (1.0, 1.0), "reset": (1.0, 0.0), "blackhole": (1.0, 0.0), "refuse": (0.0, 0.0)}
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: soak\r\nX-Slow: "

Key = tuple[str, frozenset[tuple[str, str]]]
Samples = dict[Key, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    duration: float = 1800.0
    interval: float = 3.0
    timeout: float = 1.0
    fault_every: float = 10.0
    reload_every: float = 30.0
    restart_every: float = 300.0
    clients: int = 40
    scrape_every: float = 0.5
    sample_every: float = 5.0
    header_timeout: float = 10.0
    warmup: float = 60.0
    correctness_only: bool = False
    workdir: Path | None = None
    log: Callable[[str], None] = print

    @property
    def reflect_bound(self) -> float:
        """A fault must show within two intervals, plus one scrape period; with
        correctness_only (the test suite's variant, on a machine shared with other tests),
        within four: it must show, how fast is not judged."""
        intervals = 4 if self.correctness_only else 2
        return intervals * self.interval + self.scrape_every

    @property
    def stuck_bound(self) -> float:
        """No job's last run may be older than this (two intervals, a hung run's hard
        timeout, a scrape period)."""
        return 2 * self.interval + 2 * self.timeout + 1.0 + self.scrape_every


# -- the loopback guard --------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _loopback(host: object) -> bool:
    if host is None or host in ("", b"", "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def install_loopback_guard() -> None:
    """Refuse (before the system call) any traffic or name lookup that is not loopback."""

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            sock = args[0]
            if isinstance(sock, socket.socket) and sock.family not in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                return
            addr = args[1] if len(args) > 1 else None
            if isinstance(addr, tuple) and addr and not _loopback(addr[0]):
                raise PermissionError(f"soak: {event} to {addr!r} refused (loopback only)")
        elif event == "socket.getaddrinfo" and not _loopback(args[0]):
            raise PermissionError(f"soak: getaddrinfo({args[0]!r}) refused (loopback only)")

    sys.addaudithook(hook)


def child_main(argv: list[str]) -> int:
    """`probe ARGV` in a child process, the loopback guard installed first."""
    install_loopback_guard()
    sys.path.insert(0, str(REPO))
    from monitor.cli import main

    return main(argv)


def child(argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--_child", *argv],
        stdin=subprocess.DEVNULL,
        env=env,
        **popen,
    )


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, wait: float = 20) -> int:
    if proc is None:
        return 0
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode or 0)


# -- the lab -------------------------------------------------------------------------------------


class Lab:
    """`probe lab up --dir WORK/lab` in its own process; restart() brings up a new one."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "lab"
        self.log_path = workdir / "lab.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.doc: dict[str, Any] = {}
        self.starts = 0

    def start(self) -> None:
        import yaml

        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = child(["lab", "up", "--dir", str(self.dir)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            for line in text.splitlines():
                if line.startswith(LAB_READY):
                    config = Path(line[len(LAB_READY) :].strip())
                    self.doc = yaml.safe_load(config.read_text())
                    self.starts += 1
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the lab did not start; see {self.log_path}")

    def endpoint(self, name: str) -> dict[str, Any]:
        return dict(next(t for t in self.doc["targets"] if t["name"] == name))

    def restart(self) -> None:
        stop(self.proc, signal.SIGINT)
        self.start()

    def close(self) -> None:
        stop(self.proc, signal.SIGINT)


# -- the switch: faults on the IPv6 side of one endpoint -----------------------------------------


class Switch:
    """A TCP proxy on ::1 and 127.0.0.1 (one port) to the same family of `upstream`; each
    family's mode is ok (forward), reset (RST after accept), blackhole (accept, never answer)
    or refuse (nothing listens). Runs its own event loop in a thread."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.modes = {"ipv4": "ok", "ipv6": "ok"}
        self.port = 0
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._held: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="switch", daemon=True)

    def __enter__(self) -> Switch:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def set_mode(self, family: str, mode: str) -> None:
        self._call(self._set(family, mode))

    @staticmethod
    def _listener(family: str, port: int) -> socket.socket:
        """A listening socket with SO_REUSEADDR (so is every connection it accepts): refuse
        mode closes it, and it must bind the same port again while connections remain."""
        af = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
        sock = socket.socket(af, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::1" if family == "ipv6" else "127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        return sock

    async def _start(self) -> None:
        for _ in range(50):  # the port ::1 got from the kernel may be taken on 127.0.0.1
            v6 = self._listener("ipv6", 0)
            try:
                v4 = self._listener("ipv4", v6.getsockname()[1])
            except OSError:
                v6.close()
                continue
            break
        else:
            raise OSError("no common free port on ::1 and 127.0.0.1")
        self.port = int(v6.getsockname()[1])
        for family, sock in (("ipv6", v6), ("ipv4", v4)):
            self._servers[family] = await asyncio.start_server(
                functools.partial(self._handle, family), sock=sock
            )

    async def _set(self, family: str, mode: str) -> None:
        self.modes[family] = mode
        server = self._servers.get(family)
        if mode == "refuse" and server is not None:
            server.close()
            await server.wait_closed()
            del self._servers[family]
        elif mode != "refuse" and server is None:
            self._servers[family] = await asyncio.start_server(
                functools.partial(self._handle, family), sock=self._listener(family, self.port)
            )

    async def _stop(self) -> None:
        for server in self._servers.values():
            server.close()
        for task in list(self._held):
            task.cancel()
        await asyncio.gather(*self._held, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(
        self, family: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._held.add(task)
        try:
            mode = self.modes[family]
            if mode == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if mode == "blackhole":
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(30):
                        while await reader.read(65536):
                            pass
                writer.transport.abort()
                return
            host = "::1" if family == "ipv6" else "127.0.0.1"
            try:
                up_reader, up_writer = await asyncio.open_connection(host, self.upstream)
            except OSError:
                writer.transport.abort()
                return
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._held.discard(task)


# -- idle and slow clients -----------------------------------------------------------------------


class Clients:
    """`count` clients of the vantage, half idle and half slow, replaced when closed."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.opened = 0
        self.closed_by_server = 0
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clients", daemon=True)

    def __enter__(self) -> Clients:
        if self.count:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _connect(self, sel: selectors.BaseSelector, slow: bool) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex(("127.0.0.1", self.port)) not in (0, errno.EINPROGRESS):
            s.close()
            return
        sel.register(s, selectors.EVENT_WRITE, {"slow": slow, "since": None, "sent": 0})
        self.opened += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for i in range(self.count):
            self._connect(sel, slow=i % 2 == 1)
        last_drip = time.monotonic()
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                state = key.data
                if state["since"] is None:  # the connect finished (or failed)
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        sel.unregister(s)
                        s.close()
                        self._connect(sel, state["slow"])
                        continue
                    state["since"] = time.monotonic()
                    sel.modify(s, selectors.EVENT_READ, state)
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    continue
                self.longest = max(self.longest, time.monotonic() - state["since"])
                sel.unregister(s)
                s.close()
                self.closed_by_server += 1
                self._connect(sel, state["slow"])
            now = time.monotonic()
            if now - last_drip >= 1.0:  # the slow ones send one more byte
                last_drip = now
                for key in list(sel.get_map().values()):
                    state = key.data
                    if state["slow"] and state["since"] is not None:
                        with contextlib.suppress(OSError):
                            key.fileobj.send(  # type: ignore[union-attr]
                                HALF_REQUEST[state["sent"] % len(HALF_REQUEST) :][:1]
                            )
                            state["sent"] += 1
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


# -- the vantage ---------------------------------------------------------------------------------


class Vantage:
    """`probe serve` in its own process, JSON logs read as they come."""

    def __init__(self, config: Path, opts: Options, workdir: Path) -> None:
        self.config = config
        self.opts = opts
        self.log_path = workdir / "serve.log"
        self.events: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        argv = ["serve", "--config", str(self.config), "--listen", "127.0.0.1:0"]
        argv += ["--log-format", "json", "--web.enable-lifecycle", "--vantage", "soak"]
        argv += ["--web.read-header-timeout", f"{self.opts.header_timeout:g}s"]
        self.proc = child(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._pump, name="serve-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not self.port:
            listening = [e for e in list(self.events) if e.get("event") == "listening"]
            if listening:
                self.port = int(listening[0]["port"])
            elif self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not self.port:
            raise RuntimeError(f"probe serve did not start; see {self.log_path}")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with self.log_path.open("wb") as log:
            for raw in self.proc.stderr:
                log.write(raw)
                try:
                    self.events.append(json.loads(raw))
                except ValueError:
                    self.events.append({"event": "raw", "msg": raw.decode(errors="replace")})

    def count(self, event: str) -> int:
        return sum(1 for e in list(self.events) if e.get("event") == event)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=timeout
            ) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def post_reload(self) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/-/reload", data=b"", method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def rss_and_fds(self) -> tuple[float, int] | None:
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return None
        rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
        return rss / 1024, fds

    def close(self) -> int:
        status = stop(self.proc, signal.SIGTERM, wait=30)
        if self._reader is not None:
            self._reader.join(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        return status


def vantage_config(lab: Lab, switch_port: int, opts: Options, *, extra: bool) -> dict[str, Any]:
    healthy = lab.endpoint("healthy")
    v4_only = lab.endpoint("v4_only")

    def target(name: str, src: dict[str, Any], port: int, probes: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "service": "alb",
            "region": "us-east-1",
            "host": src["host"],
            "port": port,
            "probes": probes,
        }

    targets = [
        target("switched", healthy, switch_port, ["tcp", "tls", "http2"]),
        target("direct", healthy, healthy["port"], ["dns", "tcp", "tls", "http2", "http3"]),
        target("v4-only", v4_only, v4_only["port"], ["tcp", "tls"]),
    ]
    if extra:
        targets.append(target("extra", healthy, healthy["port"], ["tcp"]))
    return {
        "vantage": "soak",
        "interval": f"{opts.interval:g}s",
        "timeout": f"{opts.timeout:g}s",
        "resolver": lab.doc["resolver"],
        "tls": lab.doc["tls"],
        "targets": targets,
    }


# -- checks --------------------------------------------------------------------------------------


def parse(text: str) -> tuple[Samples, set[str]]:
    """Samples by (name, labels), and the names of counter-like samples (counters and
    histogram buckets, counts and sums: they never go down)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    monotonic: set[str] = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
            if family.type in ("counter", "histogram") and not s.name.endswith("_created"):
                monotonic.add(s.name)
    return samples, monotonic


def value(samples: Samples, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    for (n, ls), v in samples.items():
        if n == name and want <= ls:
            return v
    return None


@dataclass(slots=True, kw_only=True)
class Expectation:
    """What the metrics must show, from runs started after `since_wall`, by `deadline`."""

    what: str
    since: float
    since_wall: float
    checks: dict[tuple[str, str, str], float]
    met: float | None = None


@dataclass(slots=True, kw_only=True)
class Findings:
    toggles: int = 0
    reloads: int = 0
    reloads_by_post: int = 0
    restarts: int = 0
    scrapes: int = 0
    scrape_failures: int = 0
    series_checked: int = 0
    decreases: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    longest_gap: float = 0.0
    unreflected: list[str] = field(default_factory=list)
    reflected: list[float] = field(default_factory=list)
    reload_failures: list[str] = field(default_factory=list)
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    hung: float = 0.0
    crashed: float = 0.0
    skipped: float = 0.0
    exit_status: int = 0
    clients_opened: int = 0
    clients_closed: int = 0
    longest_client: float = 0.0
    memory_problems: list[str] = field(default_factory=list)


class Checker:
    def __init__(self, opts: Options, findings: Findings) -> None:
        self.opts = opts
        self.f = findings
        self.previous: Samples = {}
        self.first_seen: dict[Key, float] = {}
        self.pending: list[Expectation] = []
        self.quiet_until = 0.0  # no stuck-job check while the lab restarts

    def expect(self, e: Expectation) -> None:
        self.pending.append(e)

    def drop_pending(self) -> None:
        self.pending.clear()

    def scrape(self, samples: Samples, monotonic: set[str], now: float) -> None:
        self.f.scrapes += 1
        for key, v in samples.items():
            if key[0] in monotonic and key in self.previous:
                self.f.series_checked += 1
                if v < self.previous[key]:
                    self.f.decreases.append(f"{key[0]}{dict(key[1])}: {self.previous[key]} -> {v}")
        self.previous = {k: v for k, v in samples.items() if k[0] in monotonic}
        wall = time.time()
        for key, last in samples.items():
            if key[0] != "dualstack_probe_last_run_timestamp_seconds":
                continue
            first = self.first_seen.setdefault(key, now)
            if now - first < 3 * self.opts.interval or now < self.quiet_until:
                continue
            gap = wall - last
            self.f.longest_gap = max(self.f.longest_gap, gap)
            if gap > self.opts.stuck_bound:
                self.f.stuck.append(f"{dict(key[1])}: last run {gap:.1f} s ago")
        self.first_seen = {k: t for k, t in self.first_seen.items() if k in samples}
        self.f.hung = value(samples, "dualstack_scheduler_job_failures_total", reason="hung") or 0
        self.f.crashed = (
            value(samples, "dualstack_scheduler_job_failures_total", reason="crashed") or 0
        )
        self.f.skipped = sum(
            v for (n, _), v in samples.items() if n == "dualstack_scheduler_skipped_total"
        )
        for e in list(self.pending):
            if self._met(e, samples):
                e.met = now
                self.f.reflected.append(now - e.since)
                self.pending.remove(e)
            elif now - e.since > self.opts.reflect_bound:
                self.f.unreflected.append(
                    f"{e.what} (not shown {now - e.since:.1f} s later: {self._seen(e, samples)})"
                )
                self.pending.remove(e)

    def _seen(self, e: Expectation, samples: Samples) -> str:
        out = []
        for target, probe, family in e.checks:
            labels = {"target": target, "probe": probe, "family": family}
            got = value(samples, "dualstack_probe_success", **labels)
            ran = value(samples, "dualstack_probe_last_run_timestamp_seconds", **labels)
            age = "never" if ran is None else f"{ran - e.since_wall:+.1f} s"
            out.append(f"{target}/{probe}/{family}={got} run {age}")
        return ", ".join(out)

    def _met(self, e: Expectation, samples: Samples) -> bool:
        for (target, probe, family), want in e.checks.items():
            labels = {"target": target, "probe": probe, "family": family}
            got = value(samples, "dualstack_probe_success", **labels)
            ran = value(samples, "dualstack_probe_last_run_timestamp_seconds", **labels)
            if got != want or ran is None or ran < e.since_wall:
                return False
        return True


# -- the run -------------------------------------------------------------------------------------


@contextlib.contextmanager
def workspace(opts: Options) -> Iterator[Path]:
    if opts.workdir is not None:
        opts.workdir.mkdir(parents=True, exist_ok=True)
        yield opts.workdir
        return
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        yield Path(tmp)


class ConfigWriter:
    """Writes the vantage's config for the lab and switch as they are now; `extra` adds or
    removes one target (what each reload changes)."""

    def __init__(self, path: Path, lab: Lab, switch: Switch, opts: Options) -> None:
        self.path = path
        self.lab = lab
        self.switch = switch
        self.opts = opts
        self.extra = False

    def write(self) -> None:
        import yaml

        doc = vantage_config(self.lab, self.switch.port, self.opts, extra=self.extra)
        self.path.write_text(yaml.safe_dump(doc, sort_keys=False))


def run_soak(opts: Options) -> Findings:
    """The soak; returns what it found (problems(): empty when it passed)."""
    if opts.fault_every <= opts.reflect_bound:
        raise ValueError(
            f"fault_every ({opts.fault_every:g} s) must exceed the time a fault has to show "
            f"({opts.reflect_bound:g} s), or one fault would hide the next"
        )
    f = Findings()
    checker = Checker(opts, f)
    with workspace(opts) as work:
        lab = Lab(work)
        lab.start()
        vantage: Vantage | None = None
        try:
            with Switch(int(lab.endpoint("healthy")["port"])) as switch:
                config = ConfigWriter(work / "vantage.yml", lab, switch, opts)
                config.write()
                vantage = Vantage(config.path, opts, work)
                vantage.start()
                with Clients(vantage.port, opts.clients) as clients:
                    soak_loop(opts, lab, switch, vantage, checker, config, f)
                    f.clients_opened = clients.opened
                    f.clients_closed = clients.closed_by_server
                    f.longest_client = clients.longest
        finally:
            if vantage is not None:
                f.exit_status = vantage.close()
            lab.close()
    if not opts.correctness_only:
        f.memory_problems = flat(opts, f.samples)
    if f.longest_client > opts.header_timeout + 3:
        f.memory_problems.append(
            f"an idle or slow client stayed {f.longest_client:.1f} s (deadline "
            f"{opts.header_timeout:g} s)"
        )
    return f


def soak_loop(
    opts: Options,
    lab: Lab,
    switch: Switch,
    vantage: Vantage,
    checker: Checker,
    config: ConfigWriter,
    f: Findings,
) -> None:
    start = time.monotonic()
    end = start + opts.duration
    next_fault = start + opts.warmup / 4
    next_reload = start + opts.reload_every
    next_restart = start + opts.restart_every
    next_scrape = start
    next_sample = start
    next_report = start + 60
    told = 0  # problems already logged
    cycle = 0
    expected_reloads = 1  # the configuration applied at start
    while (now := time.monotonic()) < end:
        if now >= next_restart and end - now > 3 * opts.reflect_bound:
            next_restart = now + opts.restart_every
            checker.drop_pending()
            switch.set_mode("ipv6", "ok")
            lab.restart()
            switch.upstream = int(lab.endpoint("healthy")["port"])
            config.write()
            wall = time.time()
            vantage.hup()
            expected_reloads += 1
            f.restarts += 1
            checker.quiet_until = time.monotonic() + opts.reflect_bound
            checks = {("direct", "tcp", fam): 1.0 for fam in ("ipv4", "ipv6")}
            checks.update({("switched", "tls", fam): 1.0 for fam in ("ipv4", "ipv6")})
            checker.expect(
                Expectation(
                    what="lab restarted", since=time.monotonic(), since_wall=wall, checks=checks
                )
            )
            next_fault = max(next_fault, time.monotonic() + opts.reflect_bound + 1)
            continue
        if now >= next_fault and end - now > opts.reflect_bound + 2 * opts.scrape_every:
            mode = FAULT_CYCLE[cycle % len(FAULT_CYCLE)]
            cycle += 1
            wall = time.time()
            switch.set_mode("ipv6", mode)
            f.toggles += 1
            tcp, tls = EXPECTED[mode]
            checker.expect(
                Expectation(
                    what=f"switched ipv6 {mode}",
                    since=time.monotonic(),
                    since_wall=wall,
                    checks={
                        ("switched", "tcp", "ipv6"): tcp,
                        ("switched", "tls", "ipv6"): tls,
                        ("switched", "tls", "ipv4"): 1.0,
                    },
                )
            )
            next_fault = now + opts.fault_every
        if now >= next_reload:
            next_reload = now + opts.reload_every
            config.extra = not config.extra
            config.write()
            if f.reloads % 2:
                status = vantage.post_reload()
                f.reloads_by_post += 1
                if status != 200:
                    f.reload_failures.append(f"POST /-/reload answered {status}")
            else:
                vantage.hup()
            f.reloads += 1
            expected_reloads += 1
        if now >= next_scrape:
            next_scrape = now + opts.scrape_every
            try:
                status, text = vantage.get("/metrics")
                if status != 200:
                    raise OSError(f"status {status}")
                samples, monotonic = parse(text)
            except (OSError, ValueError) as exc:
                f.scrape_failures += 1
                opts.log(f"scrape failed: {exc}")
            else:
                checker.scrape(samples, monotonic, time.monotonic())
                ok = value(samples, "dualstack_config_last_reload_successful")
                if ok == 0.0:
                    f.reload_failures.append("dualstack_config_last_reload_successful is 0")
        if now >= next_sample:
            next_sample = now + opts.sample_every
            got = vantage.rss_and_fds()
            if got is not None:
                f.samples.append((now - start, *got))
        found = problems(f)
        for problem in found[told:]:
            opts.log(f"soak: {now - start:5.0f} s: {problem}")
        told = len(found)
        if now >= next_report:
            next_report = now + 60
            opts.log(
                f"soak: {now - start:5.0f} s, {f.toggles} faults, {f.reloads} reloads, "
                f"{f.restarts} restarts, {f.scrapes} scrapes, {len(found)} problems"
            )
        wake = min(next_fault, next_reload, next_restart, next_scrape, next_sample, end)
        time.sleep(max(0.0, min(0.2, wake - time.monotonic())))
    # Let the last expectations settle, then make sure every reload was applied.
    settle = time.monotonic() + opts.reflect_bound + opts.scrape_every
    while checker.pending and time.monotonic() < settle:
        status, text = vantage.get("/metrics")
        if status == 200:
            checker.scrape(*parse(text), time.monotonic())
        time.sleep(opts.scrape_every)
    for e in checker.pending:
        f.unreflected.append(f"{e.what} (not shown by the end)")
    deadline = time.monotonic() + 20
    while vantage.count("config_applied") < expected_reloads and time.monotonic() < deadline:
        time.sleep(0.2)
    applied = vantage.count("config_applied")
    if applied < expected_reloads:
        f.reload_failures.append(f"{applied} configurations applied, {expected_reloads} asked")
    failed = vantage.count("reload_failed")
    if failed:
        f.reload_failures.append(f"{failed} reloads failed")


def flat(opts: Options, samples: list[tuple[float, float, int]]) -> list[str]:
    """RSS and descriptors, the median of five samples at the end of the warm-up against the
    median of the last five: growth within RSS_TOLERANCE_MIB and FD_TOLERANCE."""
    after = [s for s in samples if s[0] >= opts.warmup]
    if len(after) < 10:
        return [f"too few samples after the warm-up ({len(after)}) to judge memory"]
    first, last = after[:5], after[-5:]
    rss0, rss1 = statistics.median(s[1] for s in first), statistics.median(s[1] for s in last)
    fd0, fd1 = statistics.median(s[2] for s in first), statistics.median(s[2] for s in last)
    out = []
    if rss1 - rss0 > RSS_TOLERANCE_MIB:
        out.append(f"RSS grew {rss1 - rss0:.1f} MiB ({rss0:.1f} -> {rss1:.1f})")
    if fd1 - fd0 > FD_TOLERANCE:
        out.append(f"open descriptors grew by {fd1 - fd0:.0f} ({fd0:.0f} -> {fd1:.0f})")
    return out


def problems(f: Findings) -> list[str]:
    out = [f"counter decreased: {d}" for d in f.decreases]
    out += [f"stuck job: {s}" for s in f.stuck]
    out += [f"fault not reflected: {u}" for u in f.unreflected]
    out += [f"reload: {r}" for r in f.reload_failures]
    out += f.memory_problems
    if f.hung or f.crashed:
        out.append(f"job runs hung {f.hung:g}, crashed {f.crashed:g}")
    if f.exit_status != 0:
        out.append(f"probe serve exited {f.exit_status} on SIGTERM")
    if f.scrapes and f.scrape_failures > max(2, f.scrapes // 100):
        out.append(f"{f.scrape_failures} of {f.scrapes + f.scrape_failures} scrapes failed")
    return out


def report(opts: Options, f: Findings, took: float) -> str:
    lines = [
        "dualstack-monitor soak",
        f"run      : {took:.0f} s (asked {opts.duration:g} s), interval {opts.interval:g} s, "
        f"timeout {opts.timeout:g} s, scrape every {opts.scrape_every:g} s",
        f"faults   : {f.toggles} switched (ipv6 side: {' / '.join(FAULT_CYCLE)}), "
        f"{f.restarts} lab restarts",
        f"reloads  : {f.reloads} ({f.reloads - f.reloads_by_post} SIGHUP, {f.reloads_by_post} "
        "POST /-/reload), plus one per lab restart",
        f"clients  : {opts.clients} idle or slow at once; {f.clients_opened} opened, "
        f"{f.clients_closed} closed by the server, the longest after {f.longest_client:.1f} s",
        f"scrapes  : {f.scrapes} ({f.scrape_failures} failed); {f.series_checked} counter "
        f"comparisons, {len(f.decreases)} decreases",
        f"jobs     : longest gap since a last run {f.longest_gap:.1f} s (bound "
        f"{opts.stuck_bound:.1f} s), {len(f.stuck)} stuck; hung {f.hung:g}, crashed "
        f"{f.crashed:g}, skipped {f.skipped:g}",
    ]
    if f.reflected:
        ordered = sorted(f.reflected)
        lines.append(
            f"reflected: {len(f.reflected)} of {len(f.reflected) + len(f.unreflected)} faults, "
            f"p50 {statistics.median(ordered):.1f} s, max {ordered[-1]:.1f} s "
            f"(bound {opts.reflect_bound:.1f} s)"
        )
    if f.samples:
        rss = [s[1] for s in f.samples]
        fds = [s[2] for s in f.samples]
        after = [s for s in f.samples if s[0] >= opts.warmup] or f.samples
        lines.append(
            f"RSS      : {statistics.median(s[1] for s in after[:5]):.1f} MiB after the warm-up, "
            f"{statistics.median(s[1] for s in after[-5:]):.1f} MiB at the end, peak "
            f"{max(rss):.1f} MiB (tolerance {RSS_TOLERANCE_MIB:g} MiB"
            f"{', not judged' if opts.correctness_only else ''})"
        )
        lines.append(
            f"fds      : {statistics.median(s[2] for s in after[:5]):.0f} after the warm-up, "
            f"{statistics.median(s[2] for s in after[-5:]):.0f} at the end, peak {max(fds)} "
            f"(tolerance {FD_TOLERANCE}{', not judged' if opts.correctness_only else ''})"
        )
    found = problems(f)
    lines.append("result   : " + ("PASS" if not found else f"FAIL ({len(found)} problems)"))
    lines += [f"  - {p}" for p in found[:30]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--_child"]:
        return child_main(args_list[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    p.add_argument("--interval", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--fault-every", type=float, default=10.0)
    p.add_argument("--reload-every", type=float, default=30.0)
    p.add_argument("--restart-every", type=float, default=300.0)
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--warmup", type=float, default=60.0)
    p.add_argument("--correctness-only", action="store_true", help="judge no memory figure")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, configs)")
    p.add_argument("--json", metavar="FILE", help="also write the findings as JSON")
    args = p.parse_args(args_list)
    install_loopback_guard()
    opts = Options(
        duration=args.duration,
        interval=args.interval,
        timeout=args.timeout,
        fault_every=args.fault_every,
        reload_every=args.reload_every,
        restart_every=args.restart_every,
        clients=args.clients,
        warmup=args.warmup,
        correctness_only=args.correctness_only,
        workdir=Path(args.keep) if args.keep else None,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Stopped early (SIGTERM, or SIGINT, which a shell ignores in background jobs otherwise):
    # the lab and the vantage are still stopped on the way out.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    t0 = time.monotonic()
    findings = run_soak(opts)
    print(report(opts, findings, time.monotonic() - t0))
    if args.json:
        doc = dataclasses.asdict(findings) | {"problems": problems(findings)}
        Path(args.json).write_text(json.dumps(doc, default=str, indent=2))
    return 0 if not problems(findings) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Bodies of `/metrics`, `/` and `/api/v1/results`: rendered from a store snapshot in one worker
thread (the loop only takes the snapshot and moves bytes), gzipped there as the pieces come (only
the gzip is kept: `/metrics` of 10,000 jobs is tens of MB of text), and shared by every request
for at most `max_age` seconds; concurrent requests for a key share one render."""

from __future__ import annotations

import asyncio
import gzip
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from monitor.serve.state import Snapshot, Store

SWITCH_INTERVAL = 0.0005
"""Seconds a thread holds the GIL before another waiting for it gets it (Python's default is
0.005): the probing loop waits for it after each system call while a render runs."""

Render = Callable[[Snapshot], Iterable[str | bytes]]
"""A body in pieces (text is UTF-8 encoded)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    taken: float
    """When its snapshot was taken, on the cache's clock."""
    until: float
    """Served until then, on the cache's clock."""
    gzip: bytes
    """The body, one gzip member."""
    size: int
    """The body's length uncompressed."""

    @property
    def body(self) -> bytes:
        return gzip.decompress(self.gzip)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an `Accept-Encoding` header takes gzip (`gzip`, `x-gzip` or `*`, q above 0)."""
    for item in accept_encoding.split(","):
        coding, *params = (p.strip().lower() for p in item.split(";"))
        q = next((p.partition("=")[2] for p in params if p.partition("=")[0] == "q"), "1")
        if coding in ("gzip", "x-gzip", "*") and q.replace(".", "", 1).isdigit() and float(q) > 0:
            return True
    return False


def _make(render: Render, snap: Snapshot, taken: float, until: float) -> Rendered:
    # Level 1: /metrics at 10,000 jobs is tens of MB; higher levels cost several times the CPU.
    z = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    out, size = [], 0
    for piece in render(snap):
        data = piece.encode() if isinstance(piece, str) else piece
        size += len(data)
        out.append(z.compress(data))
    out.append(z.flush())
    return Rendered(taken, until, b"".join(out), size)


class RenderCache:
    """Bodies by key, at most `max_age` seconds old (on `clock`), rendered one at a time.

    A key asked for at a steady period (Prometheus's scrape interval, `warm_min` seconds or
    more) is rendered again just before its next request is due, so that request is answered
    at once with a body as old as the render takes: at 10,000 jobs a render takes seconds
    (benchmarks/README.md), longer than a scrape should wait."""

    def __init__(
        self,
        store: Store,
        *,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        warm_min: float = 5.0,
    ) -> None:
        self._store = store
        self.max_age = max_age
        self._clock = clock
        self._warm_min = warm_min
        self._cache: dict[str, Rendered] = {}
        self._flights: dict[str, asyncio.Future[Rendered]] = {}
        self._asked: dict[str, float] = {}
        """When each key was last asked for."""
        self._took: dict[str, float] = {}
        """How long each key's last render took."""
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        # The render thread holds the GIL in turns with the loop, which gives it up at every
        # socket call: at the default 5 ms a turn, a render stalls the loop a second and more.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.renders = 0  # started: tests count them

    async def get(self, key: str, render: Render) -> Rendered:
        """The cached body of `key` if fresh, else the render in flight, else a new one."""
        now = self._clock()
        last, self._asked[key] = self._asked.get(key), now
        if last is not None and self._warm_min <= now - last:
            self._plan(key, render, period=now - last)
        cached = self._cache.get(key)
        if cached is not None and now <= cached.until:
            return cached
        # shield: one client giving up must not cancel the render the others wait for.
        return await asyncio.shield(self._flights.get(key) or self._start(key, render))

    def _start(
        self, key: str, render: Render, *, serve_for: float = 0.0
    ) -> asyncio.Future[Rendered]:
        """Render `key` in the worker thread; the body is served for `max_age` seconds after
        its snapshot, plus `serve_for` (a warm render, made before its request)."""
        now = self._clock()
        # Keys come from request headers, and bodies are large: keep only fresh ones.
        self._cache = {k: r for k, r in self._cache.items() if now <= r.until}
        if self._store.before_scrape is not None:
            self._store.before_scrape()
        snap = self._store.snapshot()
        self.renders += 1
        until = now + self.max_age + serve_for
        flight = asyncio.get_running_loop().run_in_executor(
            self._executor, _make, render, snap, now, until
        )
        self._flights[key] = flight

        def done(f: asyncio.Future[Rendered]) -> None:
            self._flights.pop(key, None)
            if not f.cancelled() and f.exception() is None:
                self._cache[key] = f.result()
                self._took[key] = self._clock() - now

        flight.add_done_callback(done)
        return flight

    def _plan(self, key: str, render: Render, *, period: float) -> None:
        """Start the next render of `key` ahead of its next request: twice its last render's
        duration before the request is due, and at least half the period (the last render may
        have been of a vantage just started, with few results)."""
        lead = max(2 * self._took.get(key, 0.0), period / 2)
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        if period > lead:

            def warm() -> None:
                self._timers.pop(key, None)
                if key not in self._flights:
                    self._start(key, render, serve_for=2 * lead)

            self._timers[key] = asyncio.get_running_loop().call_later(period - lead, warm)

    def clear(self) -> None:
        """Forget every cached body (a render in flight still answers those waiting for it)."""
        self._cache.clear()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

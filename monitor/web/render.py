"""Bodies of `/metrics`, `/` and `/api/v1/results`: rendered from a store snapshot in one worker
thread (the loop only takes the snapshot and moves bytes), gzipped there as the pieces come (only
the gzip is kept: `/metrics` of 10,000 jobs is tens of MB of text), and shared by every request
for at most `max_age` seconds; concurrent requests for a key share one render."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from monitor.serve.state import Snapshot, Store

Render = Callable[[Snapshot], Iterable[str | bytes]]
"""A body in pieces (text is UTF-8 encoded)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    taken: float
    """When its snapshot was taken, on the cache's clock."""
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


def _make(render: Render, snap: Snapshot, taken: float) -> Rendered:
    # Level 1: /metrics at 10,000 jobs is tens of MB; higher levels cost several times the CPU.
    z = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    out, size = [], 0
    for piece in render(snap):
        data = piece.encode() if isinstance(piece, str) else piece
        size += len(data)
        out.append(z.compress(data))
    out.append(z.flush())
    return Rendered(taken, b"".join(out), size)


class RenderCache:
    """Bodies by key, at most `max_age` seconds old (on `clock`), rendered one at a time."""

    def __init__(
        self, store: Store, *, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self.max_age = max_age
        self._clock = clock
        self._cache: dict[str, Rendered] = {}
        self._flights: dict[str, asyncio.Future[Rendered]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        self.renders = 0  # started: tests count them

    async def get(self, key: str, render: Render) -> Rendered:
        """The cached body of `key` if fresh, else the render in flight, else a new one."""
        cached = self._cache.get(key)
        if cached is not None and self._clock() - cached.taken <= self.max_age:
            return cached
        flight = self._flights.get(key)
        if flight is None:
            now = self._clock()
            # Keys come from request headers, and bodies are large: keep only fresh ones.
            self._cache = {k: r for k, r in self._cache.items() if now - r.taken <= self.max_age}
            if self._store.before_scrape is not None:
                self._store.before_scrape()
            snap = self._store.snapshot()
            self.renders += 1
            loop = asyncio.get_running_loop()
            flight = loop.run_in_executor(self._executor, _make, render, snap, now)
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        # shield: one client giving up must not cancel the render the others wait for.
        rendered = self._cache[key] = await asyncio.shield(flight)
        return rendered

    def clear(self) -> None:
        """Forget every cached body (a render in flight still answers those waiting for it)."""
        self._cache.clear()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

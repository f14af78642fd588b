"""Rendering off the event loop: `/metrics`, `/` and `/api/v1/results` are built from a store
snapshot in one render thread, gzipped there, kept at most `max_age` seconds and shared by every
request that asks meanwhile (single flight). The loop only takes the snapshot and moves bytes.

Limits: a render in a thread still holds the GIL while it runs Python, so the loop waits for it
at each switch interval; renders are therefore made cheap (monitor/serve/exporter.py) and rare
(one at a time, at most one per variant per `max_age`, the thread busy at most `BUSY_SHARE` of
the time: a client may wait for a render, it never gets a body older than `max_age`).
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from monitor.gz import Deflated, GzipWriter
from monitor.serve.state import Snapshot, Store

BUSY_SHARE = 0.25
"""Renders for requests take the render thread at most this share of the time: after one of R
seconds the next starts no sooner than 3R later (10,000 jobs on a quiet 2-vCPU machine: about
0.15 s a render, so clients scraping in a loop get a body a second, as `max_age` allows)."""
WARM_EVERY = 2.0
"""While a client scrapes a warm key (`/metrics`), its render runs this often without a request
(no body made): an exposition rewrites only what changed since its last render, so the render
a scrape waits for has at most this much to catch up on, not the whole scrape interval
(10,000 jobs scraped every 15 s: 0.6 s a render without it)."""
WARM_FOR = 300.0
"""Seconds after its last request that a key stays warm (Prometheus's staleness window)."""
MAX_CLIENTS = 4096
"""Client addresses remembered (beyond it, addresses are not paced until some expire)."""
IDENTITY_CHUNK = 1 << 20
"""A client that does not take gzip gets the cached body inflated in pieces this large."""

Render = Callable[[Snapshot], Iterable[str | bytes | Deflated]]
"""Turns a snapshot into the body, in pieces (text is UTF-8 encoded, `Deflated` pieces placed as
they are); runs in the thread."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    """One rendered body, as cached and shared."""

    key: str
    """What was rendered: the path and the variant (e.g. the exposition's content type)."""
    taken: float
    """When its snapshot was taken, on the cache's clock (monotonic seconds)."""
    gzip: bytes
    """The body, gzip-compressed (one member)."""
    size: int
    """Length of the body uncompressed, in bytes."""
    seconds: float
    """How long the render and compression took, in the thread."""


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an `Accept-Encoding` header takes gzip (`gzip`, `x-gzip` or `*`, q above 0)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def _consume(render: Render, snap: Snapshot) -> None:
    """A render whose body nobody wants: only what it keeps for the next one."""
    for _ in render(snap):
        pass


def _compress(
    render: Render, snap: Snapshot, clock: Callable[[], float]
) -> tuple[bytes, int, float]:
    start = clock()
    writer = GzipWriter()
    for piece in render(snap):
        if isinstance(piece, Deflated):
            writer.insert(piece)
        else:
            writer.write(piece.encode("utf-8") if isinstance(piece, str) else piece)
    body = writer.finish()
    return body, writer.size, clock() - start


class RenderCache:
    """Bodies by key, at most `max_age` old, rendered one at a time in a thread of its own.

    `get` on the loop: a fresh cached body is returned at once (unless this client already had
    it); else the request joins the render of that key in flight, or starts one (snapshot on the
    loop, render in the thread).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_age: float = 1.0,
        busy_share: float = BUSY_SHARE,
        clock: Callable[[], float] = time.monotonic,
        warm_every: float = WARM_EVERY,
        warm_for: float = WARM_FOR,
    ) -> None:
        self._store = store
        self.max_age = max_age
        self.busy_share = busy_share
        self._next_start = -math.inf
        self._clock = clock
        self._cache: dict[str, Rendered] = {}
        self._flights: dict[str, asyncio.Future[Rendered]] = {}
        self._served: dict[tuple[str, str], Rendered] = {}
        """The body each client address last had, per key."""
        self._one_at_a_time = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        self.renders = 0
        """Renders started (tests and benchmarks count them)."""
        self.warm_every = warm_every
        self.warm_for = warm_for
        self._warm: dict[str, tuple[Render, float]] = {}
        """Per warm key: its render, and when it was last asked for."""
        self._last_render: dict[str, float] = {}
        self._warmer: asyncio.Task[None] | None = None
        self.warmed = 0
        """Warm renders done (tests count them)."""

    async def get(
        self, key: str, render: Render, client: str | None = None, *, warm: bool = False
    ) -> Rendered:
        """The body for `key`, at most `max_age` old. A `client` (its address) that has already
        had the cached body waits for the next one rather than getting the same bytes again:
        a client scraping in a loop gets one body per render, not as many as the loop can send.
        A `warm` key is rendered every `warm_every` seconds, bodiless, for `warm_for` seconds
        after it was last asked for (for renders that keep what did not change).
        """
        if warm:
            self._warm[key] = (render, self._clock())
            if self._warmer is None or self._warmer.done():
                self._warmer = asyncio.ensure_future(self._keep_warm())
        cached = self._cache.get(key)
        stale: Rendered | None = None
        if cached is not None and self._fresh(cached):
            if client is None or self._served.get((client, key)) is not cached:
                return self._serve(client, key, cached)
            await asyncio.sleep(max(0.0, self.max_age - (self._clock() - cached.taken)))
            stale = cached
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._render(key, render, stale))
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        # shield: one client giving up must not cancel the render the others wait for.
        return self._serve(client, key, await asyncio.shield(flight))

    def _fresh(self, rendered: Rendered) -> bool:
        return self._clock() - rendered.taken <= self.max_age

    def _serve(self, client: str | None, key: str, rendered: Rendered) -> Rendered:
        if client is not None:
            if len(self._served) >= MAX_CLIENTS:
                self._served = {k: r for k, r in self._served.items() if self._fresh(r)}
            if len(self._served) < MAX_CLIENTS:
                self._served[(client, key)] = rendered
        return rendered

    async def _render(self, key: str, render: Render, stale: Rendered | None) -> Rendered:
        async with self._one_at_a_time:
            cached = self._cache.get(key)  # rendered while this flight waited its turn
            if cached is not None and cached is not stale and self._fresh(cached):
                return cached
            snap = await self._snapshot_when_due()
            taken = self._clock()
            self.renders += 1
            loop = asyncio.get_running_loop()
            body, size, seconds = await loop.run_in_executor(
                self._executor, _compress, render, snap, time.perf_counter
            )
            done = Rendered(key=key, taken=taken, gzip=body, size=size, seconds=seconds)
            self._last_render[key] = taken
            self._next_start = self._clock() + seconds * (1 / self.busy_share - 1)
            for old in [k for k, r in self._cache.items() if not self._fresh(r)]:
                del self._cache[old]  # keys come from request headers: keep only fresh ones
            self._cache[key] = done
            return done

    async def _snapshot_when_due(self) -> Snapshot:
        """The store's snapshot (taken on the loop) once the next render may start. The thread
        takes the GIL from the probes while it renders: renders for requests keep it busy at
        most `busy_share` of the time. A client then waits; it never gets an older body."""
        await asyncio.sleep(max(0.0, self._next_start - self._clock()))
        if self._store.before_scrape is not None:
            self._store.before_scrape()
        return self._store.snapshot()

    async def _keep_warm(self) -> None:
        """Render each warm key not rendered for `warm_every` seconds, until none is left."""
        while self._warm:
            await asyncio.sleep(self.warm_every)
            for key, (render, asked) in list(self._warm.items()):
                now = self._clock()
                if now - asked > self.warm_for:
                    del self._warm[key]
                elif (
                    key not in self._flights
                    and now - self._last_render.get(key, -math.inf) >= self.warm_every
                ):
                    await self._warm_render(key, render)

    async def _warm_render(self, key: str, render: Render) -> None:
        async with self._one_at_a_time:
            snap = await self._snapshot_when_due()
            self._last_render[key] = self._clock()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, _consume, render, snap)
            self.warmed += 1
            # Not counted against the next render: the scrape that follows should not wait
            # for the warming (at most one render every `warm_every` seconds per key).

    def clear(self) -> None:
        """Forget every cached body (a render in flight still answers those waiting for it)."""
        self._cache.clear()

    def close(self) -> None:
        """Stop warming and the render thread (after the render it may be doing)."""
        if self._warmer is not None:
            self._warmer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


async def inflate(body: bytes, write: Callable[[bytes], Awaitable[None]]) -> None:
    """Write a gzip body uncompressed, a piece at a time, inflating in a worker thread (zlib
    lets go of the GIL) so the loop never holds a whole large body or inflates it itself."""
    loop = asyncio.get_running_loop()
    z = zlib.decompressobj(31)
    pending = body
    while pending or not z.eof:
        piece = await loop.run_in_executor(None, z.decompress, pending, IDENTITY_CHUNK)
        pending = z.unconsumed_tail
        if piece:
            await write(piece)
        elif not pending:
            break

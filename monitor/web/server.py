"""The HTTP side of `probe serve` (aiohttp, one port): /metrics, /healthz, /readyz,
/api/v1/results, /api/v1/events (the verdict changes kept), the status page at /, and
POST /-/reload only with --web.enable-lifecycle.

No endpoint probes a target named by a request (no SSRF): everything shown comes from the
configured jobs. TLS and basic auth come from the exporter-toolkit web config. /metrics, /,
/api/v1/results and /api/v1/events are rendered off the event loop and shared for up to a second
(monitor/web/render.py); /healthz and /readyz are answered on the spot.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from monitor.engine.report import report_json
from monitor.serve.state import Snapshot, Store
from monitor.web.render import RenderCache, Rendered, accepts_gzip
from monitor.web.statuspage import CSP, render_status_page
from monitor.web.webconfig import WebConfig, web_middlewares

DEFAULT_LISTEN = "[::]:9851"
RENDER_CACHE = web.AppKey("render_cache", RenderCache)
UNAUTHENTICATED = ("/healthz",)  # liveness probes carry no credentials


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT -> (host, port): any IP address (IPv6 in brackets), e.g. '[::1]:9851',
    '127.0.0.1:9851', '[2001:db8::5]:9851'; '[::]' and '0.0.0.0' are every address."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(
            f"bad --listen {text!r}: use an IP address of this host and a port, IPv6 in "
            "brackets, e.g. 127.0.0.1:9851, [::1]:9851 or [::]:9851 (every address)"
        ) from None
    if not sep or not 0 <= number < 65536:
        raise ValueError(f"bad --listen {text!r}: the port must be 0 to 65535")
    return host, number


def cross_site(request: web.Request) -> str | None:
    """Why a state-changing request looks sent by a page of another site, or None.

    A browser adds `Origin` (and `Sec-Fetch-Site`) to a cross-site POST, even to one it may
    send without asking (a form); curl and Prometheus send neither. Without this guard any page
    a user of the vantage's network opens could reload it, with or without basic auth (a
    browser would replay cached credentials)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return "cross-site request refused (Origin is not this server)"
    return None


class Exposer(Protocol):
    """The exposition (monitor/serve/exporter.py `Exposition`), handed in by the service."""

    def content_type(self, accept: str) -> str:
        """The content type answered to this `Accept` header."""
        ...

    def render(self, snap: Snapshot, accept: str) -> Iterable[str | bytes]:
        """The exposition of a snapshot in that content type, in pieces; called in the render
        thread."""
        ...


EVENT_PARAMS = ("target", "probe", "since", "limit")
DEFAULT_EVENTS = 100
MAX_EVENTS = 1000
CHANGES_SHOWN = 5
"""Events per target in the status page's "Recent changes" (the API has them all)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventQuery:
    """What GET /api/v1/events asks for: newest first, at most `limit`."""

    target: str | None = None
    probe: str | None = None
    since: float | None = None
    """Unix time: events at or after it."""
    limit: int = DEFAULT_EVENTS

    def key(self) -> str:
        """The query in one canonical form (the render cache's key)."""
        return f"/api/v1/events {self.target!r} {self.probe!r} {self.since!r} {self.limit}"


def _iso_time(text: str) -> float | None:
    """ISO 8601 to Unix time; no offset means UTC (as everything the API writes)."""
    for candidate in (text, text.replace(" ", "+")):  # a `+` in a URL query decodes to a space
        try:
            when = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return None


def parse_event_query(params: Iterable[tuple[str, str]]) -> EventQuery | str:
    """The query of GET /api/v1/events, or why it is refused, in one line."""
    seen: dict[str, str] = {}
    for name, value in params:
        if name not in EVENT_PARAMS:
            return f"unknown parameter {name!r}: use {', '.join(EVENT_PARAMS)}"
        if name in seen:
            return f"parameter {name!r} given twice"
        seen[name] = value
    since = None
    if "since" in seen:
        since = _iso_time(seen["since"])
        if since is None:
            return f"since={seen['since']!r} is not an ISO 8601 time, e.g. 2026-01-31T08:00:00Z"
    limit = DEFAULT_EVENTS
    if "limit" in seen:
        text = seen["limit"]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_EVENTS):
            return f"limit={text!r} is not a whole number from 1 to {MAX_EVENTS}"
        limit = int(text)
    return EventQuery(target=seen.get("target"), probe=seen.get("probe"), since=since, limit=limit)


def select_events(snap: Snapshot, query: EventQuery) -> list[dict[str, Any]]:
    """The snapshot's events that match, newest first, as JSON documents; a verdict change
    whose trace is done carries it too (`trace`, as its trace event has it)."""
    traces = {e.about: e.trace for e in snap.events if e.type == "trace" and e.trace}
    out: list[dict[str, Any]] = []
    for e in reversed(snap.events):
        if len(out) >= query.limit:
            break
        if (
            (query.target is None or e.name == query.target)
            and (query.probe is None or e.probe == query.probe)
            and (query.since is None or e.time >= query.since)
        ):
            doc = e.to_json()
            if e.type == "verdict_change" and (trace := traces.get(e.seq)) is not None:
                doc["trace"] = trace.to_json()
            out.append(doc)
    return out


def events_json(query: EventQuery) -> Callable[[Snapshot], tuple[bytes]]:
    def render(snap: Snapshot) -> tuple[bytes]:
        return (json.dumps({"events": select_events(snap, query)}, default=str).encode(),)

    return render


def recent_changes(snap: Snapshot, per_target: int = CHANGES_SHOWN) -> list[dict[str, Any]]:
    """The newest few events of each configured target, newest first, for the status page."""
    shown: Counter[str] = Counter()
    out = []
    for e in reversed(snap.events):
        if e.type != "verdict_change":
            continue  # a trace belongs to its verdict change (the API has it)
        if e.name in snap.targets and shown[e.name] < per_target:
            shown[e.name] += 1
            out.append(e.to_json())
    return out


def status_page(snap: Snapshot) -> tuple[bytes]:
    page = render_status_page(
        report_json(snap.report()), ready=snap.ready, now=snap.taken, events=recent_changes(snap)
    )
    return (page.encode(),)


def results_json(snap: Snapshot) -> tuple[bytes]:
    return (json.dumps(report_json(snap.report()), default=str).encode(),)


async def send(
    request: web.Request, rendered: Rendered, headers: Mapping[str, str]
) -> web.Response:
    """The cached body: gzipped to a client that takes gzip (Prometheus does), else inflated
    in a thread."""
    headers = {**headers, "Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        return web.Response(body=rendered.gzip, headers={**headers, "Content-Encoding": "gzip"})
    body = await asyncio.to_thread(gzip.decompress, rendered.gzip)
    return web.Response(body=body, headers=headers)


LIFECYCLE_DISABLED = (
    "Lifecycle API is not enabled: start probe serve with --web.enable-lifecycle for "
    "POST /-/reload (SIGHUP reloads without it)\n"
)


def make_app(
    store: Store,
    exposition: Exposer,
    *,
    web_config: WebConfig | None = None,
    reload: Callable[[], Awaitable[bool]] | None = None,
    middlewares: Sequence[Middleware] = (),
    max_age: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The app; `middlewares` go outside the web config's (the connection gate's tracking).
    Rendered bodies are shared for up to `max_age` seconds of `clock`."""
    cfg = web_config or WebConfig()
    app = web.Application(middlewares=(*middlewares, *web_middlewares(cfg, exempt=UNAUTHENTICATED)))
    cache = RenderCache(store, max_age=max_age, clock=clock)
    app[RENDER_CACHE] = cache

    async def close_cache(_: web.Application) -> None:
        cache.close()

    app.on_cleanup.append(close_cache)

    async def metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        content_type = exposition.content_type(accept)

        def render(snap: Snapshot) -> Iterable[str | bytes]:
            return exposition.render(snap, accept)

        body = await cache.get(f"/metrics {content_type}", render)
        return await send(request, body, {"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if store.offline is not None:
            return web.Response(status=503, text=f"not ready: {store.offline}\n")
        if store.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="first round not done yet\n")

    async def results(request: web.Request) -> web.Response:
        body = await cache.get("/api/v1/results", results_json)
        return await send(request, body, {"Content-Type": "application/json; charset=utf-8"})

    async def events(request: web.Request) -> web.Response:
        query = parse_event_query(request.query.items())
        if isinstance(query, str):
            return web.Response(status=400, text=f"400: {query}\n")
        body = await cache.get(query.key(), events_json(query))
        return await send(request, body, {"Content-Type": "application/json; charset=utf-8"})

    async def status(request: web.Request) -> web.Response:
        body = await cache.get("/", status_page)
        headers = {
            "Content-Type": "text/html; charset=utf-8",
            # frame-ancestors is ignored in a <meta> policy: only the header can say it.
            "Content-Security-Policy": f"{CSP}; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
        }
        return await send(request, body, headers)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/results", results)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/", status)
    if reload is not None:

        async def do_reload(request: web.Request) -> web.Response:
            refused = cross_site(request)
            if refused is not None:
                return web.Response(status=403, text=f"403: {refused}\n")
            ok = await reload()
            cache.clear()  # whoever reloaded sees the outcome in the next scrape, not a second on
            if ok:
                return web.Response(text="reloaded\n")
            return web.Response(status=500, text="reload failed: see the log\n")

        app.router.add_post("/-/reload", do_reload)
    else:

        async def no_reload(request: web.Request) -> web.Response:
            # Prometheus's words for its own flag; 404, as the route is not there without it
            return web.Response(status=404, text=LIFECYCLE_DISABLED)

        app.router.add_post("/-/reload", no_reload)
    return app

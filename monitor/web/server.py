"""The HTTP side of `probe serve` (aiohttp, one port): /metrics, /healthz, /readyz,
/api/v1/results, the status page at /, and POST /-/reload only with --web.enable-lifecycle.

No endpoint probes a target named by a request (no SSRF): everything shown comes from the
configured jobs. TLS and basic auth come from the exporter-toolkit web config. /metrics, / and
/api/v1/results are rendered off the event loop and shared for up to a second
(monitor/web/render.py); /healthz and /readyz are answered on the spot.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

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

    def render(self, snap: Snapshot, accept: str) -> bytes:
        """The exposition of a snapshot in that content type; called in the render thread."""
        ...


def status_page(snap: Snapshot) -> bytes:
    page = render_status_page(report_json(snap.report()), ready=snap.ready, now=snap.taken)
    return page.encode()


def results_json(snap: Snapshot) -> bytes:
    return json.dumps(report_json(snap.report()), default=str).encode()


def send(request: web.Request, rendered: Rendered, headers: Mapping[str, str]) -> web.Response:
    """The cached body, gzipped to a client that takes gzip."""
    headers = {**headers, "Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        return web.Response(body=rendered.gzip, headers={**headers, "Content-Encoding": "gzip"})
    return web.Response(body=rendered.body, headers=headers)


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

        def render(snap: Snapshot) -> bytes:
            return exposition.render(snap, accept)

        body = await cache.get(f"/metrics {content_type}", render)
        return send(request, body, {"Content-Type": content_type})

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
        return send(request, body, {"Content-Type": "application/json; charset=utf-8"})

    async def status(request: web.Request) -> web.Response:
        body = await cache.get("/", status_page)
        headers = {
            "Content-Type": "text/html; charset=utf-8",
            # frame-ancestors is ignored in a <meta> policy: only the header can say it.
            "Content-Security-Policy": f"{CSP}; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
        }
        return send(request, body, headers)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/results", results)
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
    return app

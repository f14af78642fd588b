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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from monitor.engine.report import report_json
from monitor.gz import Deflated
from monitor.serve.state import Snapshot, Store
from monitor.web.render import Render, RenderCache, Rendered, accepts_gzip, inflate
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

    def render(self, snap: Snapshot, accept: str) -> Iterator[str | Deflated]:
        """The exposition of a snapshot in that content type, in pieces; called in the render
        thread, one call at a time."""
        ...


def status_page(snap: Snapshot) -> Iterable[str]:
    return (render_status_page(report_json(snap.report()), ready=snap.ready, now=snap.taken),)


def results_json(snap: Snapshot) -> Iterable[str]:
    return (json.dumps(report_json(snap.report()), default=str),)


async def send(
    request: web.Request, rendered: Rendered, headers: Mapping[str, str]
) -> web.StreamResponse:
    """The cached body: as it is (gzip) to a client that takes gzip, else inflated on the way."""
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        return web.Response(
            body=rendered.gzip,
            headers={**headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )
    response = web.StreamResponse(headers={**headers, "Vary": "Accept-Encoding"})
    response.content_length = rendered.size
    await response.prepare(request)
    if request.method != "HEAD":
        await inflate(rendered.gzip, response.write)
    await response.write_eof()
    return response


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

    async def rendered(
        request: web.Request, key: str, render: Render, *, warm: bool = False
    ) -> Rendered:
        return await cache.get(key, render, request.remote, warm=warm)

    async def metrics(request: web.Request) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        content_type = exposition.content_type(accept)

        def render(snap: Snapshot) -> Iterable[str | Deflated]:
            return exposition.render(snap, accept)

        # Warm: the exposition keeps what did not change, so a render a scrape waits for has
        # only the last few seconds to write (the status page and JSON are written whole).
        body = await rendered(request, f"/metrics {content_type}", render, warm=True)
        return await send(request, body, {"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if store.offline is not None:
            return web.Response(status=503, text=f"not ready: {store.offline}\n")
        if store.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="first round not done yet\n")

    async def results(request: web.Request) -> web.StreamResponse:
        body = await rendered(request, "/api/v1/results", results_json)
        return await send(request, body, {"Content-Type": "application/json; charset=utf-8"})

    async def status(request: web.Request) -> web.StreamResponse:
        body = await rendered(request, "/", status_page)
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

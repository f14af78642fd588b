"""The HTTP side of `probe serve` (aiohttp, one port): /metrics, /healthz, /readyz,
/api/v1/results, the status page at /, and POST /-/reload only with --web.enable-lifecycle.

No endpoint probes a target named by a request (no SSRF): everything shown comes from the
configured jobs. TLS and basic auth come from the exporter-toolkit web config.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import exposition
from prometheus_client.registry import CollectorRegistry

from monitor.engine.report import report_json
from monitor.serve.state import Store
from monitor.web.statuspage import CSP, render_status_page
from monitor.web.webconfig import WebConfig, web_middlewares

DEFAULT_LISTEN = "[::]:9851"
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


def make_app(
    store: Store,
    registry: CollectorRegistry,
    *,
    web_config: WebConfig | None = None,
    reload: Callable[[], Awaitable[bool]] | None = None,
    middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """The app; `middlewares` go outside the web config's (the connection gate's tracking)."""
    cfg = web_config or WebConfig()
    app = web.Application(middlewares=(*middlewares, *web_middlewares(cfg, exempt=UNAUTHENTICATED)))

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        body = encoder(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if store.offline is not None:
            return web.Response(status=503, text=f"not ready: {store.offline}\n")
        if store.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="first round not done yet\n")

    def _doc() -> dict[str, object]:
        if store.before_scrape is not None:
            store.before_scrape()
        return report_json(store.report())

    async def results(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps(_doc(), default=str), content_type="application/json")

    async def status(_: web.Request) -> web.Response:
        page = render_status_page(_doc(), ready=store.ready, now=time.time())
        return web.Response(
            text=page,
            content_type="text/html",
            headers={
                # frame-ancestors is ignored in a <meta> policy: only the header can say it.
                "Content-Security-Policy": f"{CSP}; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

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
            if ok:
                return web.Response(text="reloaded\n")
            return web.Response(status=500, text="reload failed: see the log\n")

        app.router.add_post("/-/reload", do_reload)
    return app

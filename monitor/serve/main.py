"""The `probe serve` process: the vantage, its HTTP server on one listening socket, and the
signals (SIGHUP reloads, SIGTERM and SIGINT drain and exit)."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import resource
import signal
import socket

from aiohttp import web

from monitor.config import Config, ConfigError, Shard, load_config
from monitor.engine.check import check_sources
from monitor.serve.exporter import Exposition
from monitor.serve.vantage import Vantage
from monitor.web.limits import ConnectionGate, ConnectionLimits, GatedSite, connection_cap
from monitor.web.server import make_app, parse_listen
from monitor.web.webconfig import WebConfig

log = logging.getLogger("dualstack.vantage")


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket; `::` serves both families (asyncio alone would make it IPv6-only,
    refusing IPv4 scrapers and Docker's published IPv4 ports)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_said(exc: OSError) -> str:
    """Why a bind failed, and what to do, in a few words."""
    said = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return f"{said} (another process listens there: stop it or pick another port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{said} (not an address of this host: give one of its own, or [::] for all)"
    if exc.errno == errno.EACCES:
        return f"{said} (a port below 1024 needs privileges: pick a higher one)"
    return said


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go does at start-up); returns the soft
    limit in force. An unlimited hard limit is taken as the kernel's per-process maximum."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
                want = int(f.read())
        except (OSError, ValueError):
            want = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError):
            pass  # keep what we have: the connection cap follows it
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


async def serve_forever(
    config_path: str,
    *,
    listen: str,
    vantage: str | None = None,
    shard: Shard | None = None,
    web_config: WebConfig | None = None,
    lifecycle: bool = False,
    drain_timeout: float = 10.0,
    header_timeout: float = 10.0,
    idle_timeout: float = 30.0,
) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP (and POST /-/reload with lifecycle) reloads."""

    def load() -> Config:
        cfg = load_config(config_path)
        if shard is not None:  # --shard overrides `sharding`, on every reload too
            cfg = dataclasses.replace(cfg, shard=shard)
        check_sources(cfg)
        return dataclasses.replace(cfg, vantage=vantage) if vantage else cfg

    host, port = parse_listen(listen)
    cfg = load()
    service = Vantage(cfg)
    lock = asyncio.Lock()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    # Before anything else: a SIGTERM during start-up must still mean a clean exit.
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def reload() -> bool:
        async with lock:  # SIGHUP and POST /-/reload never interleave
            return await service.reload(load)

    descriptors = raise_descriptor_limit()
    limits = ConnectionLimits(
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        max_connections=connection_cap(descriptors, cfg.concurrency),
    )
    gate = ConnectionGate(limits, ssl_context=web_config.ssl_context if web_config else None)
    app = make_app(
        service.store,
        Exposition(),
        web_config=web_config,
        reload=reload if lifecycle else None,
        middlewares=(gate.middleware(),),
    )
    # aiohttp's keep-alive timer closes a connection without a complete request for this long
    # (its default is an hour); the gate's header deadline covers the first request.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=limits.idle_timeout
    )
    await runner.setup()
    try:
        sock = listen_socket(host, port)
    except OSError as exc:  # nothing is probing yet: a usage error, said in one line
        await runner.cleanup()
        raise ConfigError(f"--listen {listen}: cannot listen: {_bind_said(exc)}") from None
    site = GatedSite(runner, sock, gate)
    await site.start()
    bound = sock.getsockname()[1]
    scheme = "https" if web_config and web_config.ssl_context else "http"
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "listening on %s://%s:%d",
        scheme,
        shown,
        bound,
        extra={
            "fields": {
                "event": "listening",
                "port": bound,
                "max_connections": limits.max_connections,
                "descriptor_limit": descriptors,
            }
        },
    )

    if web_config is not None and web_config.users and web_config.ssl_context is None:
        log.warning(
            "basic auth over plain HTTP: passwords cross the network in clear text; "
            "set tls_server_config in %s",
            web_config.path,
            extra={"fields": {"event": "basic_auth_without_tls"}},
        )

    # What --listen gives (the kernel's port for port 0), unless `external_url` says better:
    # `[::]` reaches nobody from another host, but it says which port to ask for.
    service.default_external_url = f"{scheme}://{shown}:{bound}"
    await service.apply(cfg)
    scheduler = loop.create_task(service.scheduler.run(), name="scheduler")
    housekeeping = loop.create_task(service.housekeeping(), name="housekeeping")
    try:
        await stop.wait()
    finally:
        log.info(
            "stopping: draining probes in flight (at most %g s)",
            drain_timeout,
            extra={"fields": {"event": "stopping"}},
        )
        cancelled = await service.scheduler.drain(drain_timeout)
        await service.tracer.close()  # a trace is evidence, not a probe: not waited for
        housekeeping.cancel()
        await asyncio.gather(scheduler, housekeeping, *pending, return_exceptions=True)
        await runner.cleanup()
        service.store.events.close()
        log.info("stopped", extra={"fields": {"event": "stopped", "cancelled": cancelled}})
    return 0

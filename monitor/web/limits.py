"""The connections of `probe serve`'s HTTP server, bounded, so that clients that connect and say
nothing (or half a request) cannot take the descriptors the probes need.

- A cap on open connections, derived from the descriptor limit minus a reserve kept for the
  probes (`connection_cap`). At the cap, room is made by closing a connection without a
  request in progress: the one that has waited longest, of the client address that holds the
  most connections. A flood from some addresses thus pushes out its own connections, not a
  scraper's from another address. Reaching the cap is logged.
- A header deadline: a connection must deliver its first request's headers (and, with TLS,
  finish its handshake) within `header_timeout` of being accepted.
- An idle deadline: a kept-alive connection with no complete request for `idle_timeout` is
  closed (aiohttp's keep-alive timer; it also ends a half-sent second request).

Connections are counted from accept, TLS ones before their handshake too: TLS is started here
(asyncio's SSLProtocol, as loop.start_tls would: monitor/web/adapters/asyncio.py), not by the
listening server, for that reason.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from monitor.web.adapters.aiohttp import ProtocolSite
from monitor.web.adapters.asyncio import ServerTls

log = logging.getLogger("dualstack.web")

ACCEPT_BACKLOG = 32
"""Listen queue, and so the most connections asyncio accepts in one go before the cap sees
them: part of the descriptor reserve."""
CONNECTIONS_CEILING = 1024
"""The cap never exceeds this, however high the descriptor limit: a metrics endpoint needs few."""
CONNECTIONS_FLOOR = 8
"""The cap never falls below this, however low the limit (the reserve then shrinks)."""
BASE_RESERVE = 48
"""Descriptors the process holds besides connections and probes (stdio, event loop, listening
socket, files read at reload), with room to spare."""
DESCRIPTORS_PER_JOB = 4
"""A job in flight: its two probes (one socket each, a TLS look may open a second) and the two
DNS queries that resolve it."""
LOG_EVERY = 60.0
"""Seconds between two log lines about the cap while it stays reached."""


def probe_reserve(concurrency: int) -> int:
    """Descriptors kept for the probes and the process when sizing the connection cap."""
    return BASE_RESERVE + DESCRIPTORS_PER_JOB * concurrency + ACCEPT_BACKLOG


def connection_cap(descriptor_limit: int, concurrency: int) -> int:
    """How many HTTP connections may be open at once under `descriptor_limit`."""
    room = descriptor_limit - probe_reserve(concurrency)
    return max(CONNECTIONS_FLOOR, min(CONNECTIONS_CEILING, room))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    """Seconds from accept to a complete first request (TLS handshake included)."""
    idle_timeout: float = 30.0
    """Seconds a kept-alive connection may go without a complete request."""
    max_connections: int = CONNECTIONS_CEILING
    """Open connections at most (connection_cap)."""


class _Forward(asyncio.Protocol):
    """The protocol on a TLS transport: forwards to aiohttp's handler once it is attached
    (bytes that arrive in between, with the handshake's last flight, are kept for it)."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._handler: asyncio.Protocol | None = None
        self._pending: list[bytes] = []
        self._eof = False
        self.lost = False

    def attach(self, handler: asyncio.Protocol) -> None:
        self._handler = handler
        for data in self._pending:
            handler.data_received(data)
        self._pending.clear()
        if self._eof:
            handler.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._handler is None:
            self._pending.append(data)
        else:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._handler is None:
            self._eof = True
            return None
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._handler is not None:
            self._handler.connection_lost(exc)
        self._conn.closed()


class _Conn(asyncio.Protocol):
    """One accepted connection: counted by the gate, timed until its first request, and
    handed to aiohttp's handler (directly, or after a TLS handshake)."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._handler: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tls: asyncio.Task[None] | None = None
        self._closed = False
        self.peer = ""

    # -- what the gate does to it ----------------------------------------------------------

    def evict(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def request_arrived(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- asyncio -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's TCP transport implements asyncio.Transport without
        # subclassing it (so does 3.11's selector datagram transport, monitor/lab/dnsserver.py).
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        if not self._gate.admit(self):
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._gate.limits.header_timeout, self._expire)
        if self._gate.ssl_context is None:
            self._attach(transport, self)
        else:
            self._start_tls(transport, self._gate.ssl_context)

    def _start_tls(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        """What loop.start_tls does, with the TLS protocol in place before connection_made
        returns: uvloop starts reading right after connection_made (undoing a pause_reading
        made there), so a ClientHello could reach this plain protocol, and be lost, before a
        start_tls task ran. asyncio's SSLProtocol works on uvloop's transports as on asyncio's."""
        forward = _Forward(self)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        tls = ServerTls(raw, forward, ctx, waiter, self._gate.limits.header_timeout)
        self._tls = loop.create_task(self._handshake(raw, tls, forward, waiter))

    async def _handshake(
        self,
        raw: asyncio.Transport,
        tls: ServerTls,
        forward: _Forward,
        waiter: asyncio.Future[None],
    ) -> None:
        try:
            await waiter
        except (OSError, TimeoutError, asyncio.CancelledError):
            # A failed or timed-out handshake (ssl.SSLError is an OSError): no protocol of
            # ours hears of this connection again.
            raw.abort()
            self.closed()
            return
        app = tls.app_transport
        if forward.lost or app is None:
            self.closed()
            return
        self._attach(app, forward)

    def _attach(self, transport: asyncio.Transport, forward: _Forward | _Conn) -> None:
        handler = self._gate.make_handler()
        self._handler = handler
        self._gate.handlers[handler] = self
        handler.connection_made(transport)
        if isinstance(forward, _Forward):
            forward.attach(handler)

    def _expire(self) -> None:
        self._timer = None
        self.evict()

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handler is not None:
            self._handler.connection_lost(exc)
        if self._tls is not None and not self._tls.done():
            self._tls.cancel()
        self.closed()

    def closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._handler is not None:
            self._gate.handlers.pop(self._handler, None)
        self._gate.release(self)


def _no_server() -> asyncio.Protocol:
    raise RuntimeError("ConnectionGate: no site has started")


class ConnectionGate:
    """Counts and times the server's connections (see the module docstring)."""

    def __init__(
        self,
        limits: ConnectionLimits,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.ssl_context = ssl_context
        self._clock = clock
        self.make_handler: Callable[[], asyncio.Protocol] = _no_server
        """aiohttp's per-connection handler factory (the runner's server), set by GatedSite."""
        self.handlers: dict[asyncio.BaseProtocol, _Conn] = {}
        self._open: set[_Conn] = set()
        # Per client address, its connections without a request in progress, oldest wait
        # first (insertion order).
        self._waiting: dict[str, dict[_Conn, None]] = {}
        self._busy: dict[_Conn, int] = {}
        self._last_log = -LOG_EVERY
        self.evicted = 0
        self.refused = 0

    @property
    def open(self) -> int:
        return len(self._open)

    def protocol(self) -> asyncio.Protocol:
        return _Conn(self)

    def admit(self, conn: _Conn) -> bool:
        """Count a new connection; at the cap, close a waiting one (see the module docstring),
        or refuse the new one when every open connection has a request in progress."""
        if len(self._open) >= self.limits.max_connections:
            victim = self._victim()
            if victim is None:
                self.refused += 1
                self._log_cap("refusing a new connection: every open one has a request")
                return False
            self.evicted += 1
            self.release(victim)
            victim.evict()
            self._log_cap("closing a connection that waited for a request")
        self._open.add(conn)
        self._wait(conn)
        return True

    def _victim(self) -> _Conn | None:
        """The oldest waiting connection of the address with the most open connections that
        wait; None when none waits."""
        if not self._waiting:
            return None
        address = max(self._waiting, key=lambda a: len(self._waiting[a]))
        return next(iter(self._waiting[address]))

    def _wait(self, conn: _Conn) -> None:
        self._waiting.setdefault(conn.peer, {})[conn] = None

    def _unwait(self, conn: _Conn) -> None:
        waiting = self._waiting.get(conn.peer)
        if waiting is not None:
            waiting.pop(conn, None)
            if not waiting:
                del self._waiting[conn.peer]

    def release(self, conn: _Conn) -> None:
        self._open.discard(conn)
        self._unwait(conn)
        self._busy.pop(conn, None)

    def request_started(self, handler: asyncio.BaseProtocol) -> None:
        conn = self.handlers.get(handler)
        if conn is None or conn not in self._open:
            return
        conn.request_arrived()
        self._unwait(conn)
        self._busy[conn] = self._busy.get(conn, 0) + 1

    def request_finished(self, handler: asyncio.BaseProtocol) -> None:
        conn = self.handlers.get(handler)
        if conn is None or conn not in self._busy:
            return
        self._busy[conn] -= 1
        if self._busy[conn] <= 0:
            del self._busy[conn]
            self._wait(conn)  # the newest to wait

    def _log_cap(self, what: str) -> None:
        now = self._clock()
        if now - self._last_log < LOG_EVERY:
            return
        self._last_log = now
        log.warning(
            "HTTP connection limit of %d reached: %s",
            self.limits.max_connections,
            what,
            extra={
                "fields": {
                    "event": "connection_limit",
                    "max_connections": self.limits.max_connections,
                    "evicted": self.evicted,
                    "refused": self.refused,
                }
            },
        )

    def middleware(self) -> Middleware:
        """Marks a connection busy while one of its requests is handled (headers are in)."""

        @web.middleware
        async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
            protocol = request.protocol
            self.request_started(protocol)
            try:
                return await handler(request)
            finally:
                self.request_finished(protocol)

        return track


class GatedSite(ProtocolSite):
    """aiohttp's SockSite with every connection passing the gate, TLS started by the gate."""

    __slots__ = ()

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, gate: ConnectionGate) -> None:
        scheme = "https" if gate.ssl_context is not None else "http"
        super().__init__(runner, sock, gate.protocol, scheme=scheme, backlog=ACCEPT_BACKLOG)
        server = runner.server
        assert server is not None  # BaseSite already refuses a runner that is not set up
        gate.make_handler = server

"""hypercorn's internal per-connection servers, for the lab's WebServer: an ASGI app served on
connections and a datagram socket of ours. hypercorn.asyncio.serve, its public way, binds (or
fd://-adopts) its own sockets and cannot reach connections mid-handshake. hypercorn is 0.x, so
pinned below its next minor in pyproject.toml."""

from __future__ import annotations

import asyncio
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.udp_server import UDPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework, LifespanState
from hypercorn.utils import wrap_app

PRIVATE: tuple[tuple[str, str], ...] = (
    ("hypercorn.asyncio.tcp_server", "TCPServer"),
    ("hypercorn.asyncio.udp_server", "UDPServer"),
    ("hypercorn.asyncio.udp_server.UDPServer", "run"),
    ("hypercorn.asyncio.worker_context", "WorkerContext"),
    ("hypercorn.asyncio.worker_context.WorkerContext", "terminated"),
    ("hypercorn.utils", "wrap_app"),
)
"""(owner, attribute) pairs this module relies on; instance attributes included."""


class Serving:
    """`app` as hypercorn serves it, one worker's worth: `connection` for each accepted (and
    TLS-started) stream, `datagram_protocol` for a QUIC socket, `terminate` to end them."""

    def __init__(self, app: ASGIFramework, config: Config) -> None:
        self.config = config
        self.app = wrap_app(app, config.wsgi_max_body_size, "asgi")
        self.context = WorkerContext(None)
        self.state: LifespanState = {}

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve HTTP/1.1 or HTTP/2 on one connection until it ends."""
        loop = asyncio.get_running_loop()
        await TCPServer(self.app, loop, self.config, self.context, self.state, reader, writer)

    def datagram_protocol(self) -> Any:
        """A protocol for a QUIC socket; its `run()` coroutine serves until cancelled."""
        loop = asyncio.get_running_loop()
        return UDPServer(self.app, loop, self.config, self.context, self.state)

    async def terminate(self) -> None:
        """Tell idle keep-alive connections to close (hypercorn's idle timer waits on it)."""
        await self.context.terminated.set()

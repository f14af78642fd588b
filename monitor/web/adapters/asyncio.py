"""asyncio's private TLS protocol (asyncio.sslproto), for `probe serve`'s connection gate: TLS
started on an accepted transport as loop.start_tls would, but with the TLS protocol in place
before connection_made returns, which loop.start_tls (a coroutine) cannot do. Works on uvloop's
transports as on asyncio's. Python's own, so pinned by the Python version only."""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto

PRIVATE: tuple[tuple[str, str], ...] = (
    ("asyncio", "sslproto"),
    ("asyncio.sslproto", "SSLProtocol"),
    ("asyncio.sslproto.SSLProtocol", "_app_transport"),
)
"""(owner, attribute) pairs this module relies on; instance attributes included."""


class ServerTls:
    """The server side of a TLS handshake on `raw`, whose protocol it becomes at once; `waiter`
    is done when the handshake is (or failed, or timed out), then `app_transport` carries the
    plaintext to `app`."""

    def __init__(
        self,
        raw: asyncio.Transport,
        app: asyncio.Protocol,
        ctx: ssl.SSLContext,
        waiter: asyncio.Future[None],
        handshake_timeout: float,
    ) -> None:
        self.protocol = sslproto.SSLProtocol(
            asyncio.get_running_loop(),
            app,
            ctx,
            waiter,
            server_side=True,
            call_connection_made=False,
            # seconds, a float as call_later takes them (typeshed says int)
            ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]
        )
        raw.set_protocol(self.protocol)
        self.protocol.connection_made(raw)

    @property
    def app_transport(self) -> asyncio.Transport | None:
        """What loop.start_tls hands back; None before the handshake."""
        transport: asyncio.Transport | None = self.protocol._app_transport
        return transport

"""aiohttp's private side, for `probe serve`'s connection gate: a site whose listening server
serves a protocol of ours, not aiohttp's handler. aiohttp has no public way to hand a site a
protocol factory; the server is kept where BaseSite keeps its own (`_server`), so the runner
stops it as it stops any site. aiohttp is pinned below 4 in pyproject.toml."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aiohttp import web

PRIVATE: tuple[tuple[str, str], ...] = (
    ("aiohttp.web.BaseSite", "_server"),
    ("aiohttp.web.BaseSite", "_backlog"),
)
"""(class, attribute) pairs this module relies on (slots of BaseSite)."""


class ProtocolSite(web.BaseSite):
    """aiohttp's SockSite, with `factory`'s protocol on every accepted connection."""

    __slots__ = ("_factory", "_name", "_sock")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        *,
        scheme: str,
        backlog: int,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._factory = factory
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self._name = f"{scheme}://{shown}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, sock=self._sock, backlog=self._backlog
        )

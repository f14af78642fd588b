"""A TCP forwarder with a switch, to inject and clear an IPv6 fault while a test runs.

It listens on ::1 and 127.0.0.1 on one kernel-chosen port and forwards each family to the same
family of an upstream port. With `ipv6_broken` set, IPv6 connections are reset on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.ipv6_broken = False
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(
        self, family: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        if family == "ipv6" and self.ipv6_broken:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        host = "::1" if family == "ipv6" else "127.0.0.1"
        try:
            up_reader, up_writer = await asyncio.open_connection(host, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        v6 = await asyncio.start_server(lambda r, w: self._handle("ipv6", r, w), "::1", 0)
        self.port = v6.sockets[0].getsockname()[1]
        v4 = await asyncio.start_server(
            lambda r, w: self._handle("ipv4", r, w), "127.0.0.1", self.port
        )
        self._ready.set()
        async with v6, v4:
            await self._stop.wait()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextmanager
def fault_proxy(upstream_port: int) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_port) as proxy:
        yield proxy

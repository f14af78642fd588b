"""Loopback servers for the lab: hypercorn TLS (h2, http/1.1) + QUIC (h3), and fault servers.
Each object serves one address family on sockets it is handed (or binds); none needs root."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from hypercorn.config import Config
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from monitor.lab.adapters.hypercorn import Serving
from monitor.lab.pki import IssuedCert
from monitor.lab.ports import SocketSpec, bind_same_port

log = logging.getLogger(__name__)

SERVER_HEADER = b"dualstack-lab"
# How long stop() lets in-flight HTTP requests finish before cancelling them.
DEFAULT_GRACE = 1.0


class LabApp:
    """ASGI app: GET / -> 200 text; GET /status/<code> -> that code; anything else -> 404/405."""

    def __init__(self, label: str, h3_port: int | None) -> None:
        self.label = label
        self.h3_port = h3_port

    def _headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"server", SERVER_HEADER),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        if self.h3_port is not None:
            headers.append((b"alt-svc", f'h3=":{self.h3_port}"'.encode()))
        return headers

    def route(self, method: str, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Status, body and extra headers for a request (pure, so it is easy to test)."""
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")]
        if path == "/":
            return 200, f"dualstack-lab {self.label} ok\n".encode(), []
        prefix = "/status/"
        if path.startswith(prefix) and path[len(prefix) :].isdigit():
            code = int(path[len(prefix) :])
            if 200 <= code <= 599:  # 1xx are not final answers; the ASGI servers refuse them
                # 204 and 304 must not carry a body (RFC 9110).
                body = b"" if code in (204, 304) else f"status {code}\n".encode()
                return code, body, []
        return 404, b"not found\n", []

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            # Hypercorn's own runner sends lifespan; ours does not, but stay a correct app.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # websockets: hypercorn answers 403 when the app does not accept
        status, body, extra = self.route(scope["method"], scope["path"])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": self._headers(body) + extra,
            }
        )
        payload = b"" if scope["method"] == "HEAD" else body
        await send({"type": "http.response.body", "body": payload, "more_body": False})


class LabServer:
    """Base: start()/stop() and `async with`; stop() also frees the sockets of an unstarted one."""

    host: str
    port: int

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _bind(host: str, port: int, kinds: Iterable[socket.SocketKind]) -> list[socket.socket]:
    _, socks = bind_same_port([SocketSpec(host=host, kind=kind) for kind in kinds], port=port)
    return socks


def _addr(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


class WebServer(LabServer):
    """Hypercorn on one family: TLS over TCP (ALPN h2, http/1.1) and, given a UDP socket, h3.

    Drives hypercorn's per-connection TCPServer/UDPServer directly (monitor/lab/adapters/) instead
    of `hypercorn.asyncio.serve`: serve() wants to bind (or fd://-adopt) sockets itself, never
    closes its QUIC datagram transport (ResourceWarning at loop teardown), leaves its QUIC task
    asleep on shutdown until graceful_timeout, and cannot reach connections mid-handshake.
    """

    def __init__(
        self,
        *,
        tcp_sock: socket.socket,
        udp_sock: socket.socket | None,
        cert: IssuedCert,
        label: str,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.host, self.port = _addr(tcp_sock)
        self.cert = cert
        self.label = label
        self.grace = grace
        self._tcp_sock: socket.socket | None = tcp_sock
        self._udp_sock: socket.socket | None = udp_sock
        self.h3 = udp_sock is not None
        self.app = LabApp(label, _addr(udp_sock)[1] if udp_sock is not None else None)
        self.config = self._make_config()
        self.serving = Serving(self.app, self.config)
        self._tcp_server: asyncio.Server | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._udp_task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._handshaking: set[asyncio.Task[None]] = set()

    @classmethod
    def bind(
        cls, host: str, cert: IssuedCert, *, port: int = 0, h3: bool = True, label: str = ""
    ) -> WebServer:
        kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if h3 else [socket.SOCK_STREAM]
        socks = _bind(host, port, kinds)
        return cls(
            tcp_sock=socks[0],
            udp_sock=socks[1] if h3 else None,
            cert=cert,
            label=label or cert.label,
        )

    def _make_config(self) -> Config:
        config = Config()
        config.certfile = str(self.cert.cert_file)
        config.keyfile = str(self.cert.key_file)
        config.alpn_protocols = ["h2", "http/1.1"]
        # The app sets `server: dualstack-lab`; hypercorn would add a second server header.
        config.include_server_header = False
        config.accesslog = None
        # A Logger object is used as is (no handler added), so the host app decides output.
        config.errorlog = logging.getLogger("monitor.lab.hypercorn")
        config.graceful_timeout = self.grace
        return config

    async def start(self) -> None:
        if self._tcp_sock is None:
            raise RuntimeError("WebServer was stopped; make a new one")
        loop = asyncio.get_running_loop()
        ssl_context = self.config.create_ssl_context()

        assert ssl_context is not None  # certfile and keyfile are always set

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            self._handshaking.add(task)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Without it, Nagle against the client's delayed ACK adds ~40 ms to every
                # response: the lab's latencies must be the network's, not an artefact.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                # TLS is started here rather than by start_server(ssl=...): on 3.11 a server
                # cannot reach connections still in the handshake, so a client that connects
                # and sends nothing would outlive stop() and leak its transport. Here the
                # handshake belongs to a task that stop() can cancel.
                try:
                    async with asyncio.timeout(self.config.ssl_handshake_timeout):
                        await writer.start_tls(ssl_context)
                except (OSError, TimeoutError):
                    return  # failed handshake (ssl.SSLError is an OSError); asyncio closed it
                finally:
                    self._handshaking.discard(task)
                await self.serving.connection(reader, writer)
            except asyncio.CancelledError:
                # Only stop() cancels these tasks. Ending normally matters: asyncio's
                # start_server callback calls task.exception(), which raises (and gets logged
                # as an error) for a cancelled task.
                pass
            finally:
                self._connections.discard(task)
                writer.close()

        self._tcp_server = await asyncio.start_server(
            on_connection, sock=self._tcp_sock, backlog=self.config.backlog
        )
        if self._udp_sock is not None:
            transport, protocol = await loop.create_datagram_endpoint(
                self.serving.datagram_protocol,
                sock=self._udp_sock,
            )
            self._udp_transport = transport
            self._udp_task = loop.create_task(protocol.run(), name=f"lab-h3-{self.label}")

    async def stop(self) -> None:
        await self.serving.terminate()
        if self._tcp_server is not None:
            self._tcp_server.close()
        # Connections still in the TLS handshake have no request to finish: cut them now.
        for task in self._handshaking:
            task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=self.grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._udp_task is not None:
            # UDPServer.run() sleeps on its datagram queue even after `terminated`; cancel it
            # (open QUIC connections are dropped without CONNECTION_CLOSE, as in hypercorn).
            self._udp_task.cancel()
            await asyncio.gather(self._udp_task, return_exceptions=True)
            self._udp_task = None
        if self._udp_transport is not None:
            self._udp_transport.close()
            self._udp_transport = None
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
            self._tcp_server = None
        # Sockets handed to asyncio are closed with their server/transport; these close the
        # ones of a server that never started (or failed half-way).
        for sock in (self._tcp_sock, self._udp_sock):
            if sock is not None:
                sock.close()
        self._tcp_sock = self._udp_sock = None
        # One loop turn so transports run their deferred close before a caller ends the loop.
        await asyncio.sleep(0)


class ResetServer(LabServer):
    """Accepts TCP and closes at once with RST (SO_LINGER 0): the client sees ECONNRESET."""

    def __init__(self, *, sock: socket.socket) -> None:
        self.host, self.port = _addr(sock)
        self._sock: socket.socket | None = sock
        self._task: asyncio.Task[None] | None = None
        self.resets = 0

    @classmethod
    def bind(cls, host: str, *, port: int = 0) -> ResetServer:
        return cls(sock=_bind(host, port, [socket.SOCK_STREAM])[0])

    async def start(self) -> None:
        if self._sock is None:
            raise RuntimeError("ResetServer was stopped; make a new one")
        self._sock.setblocking(False)  # sock_accept on a blocking socket would stall the loop
        self._sock.listen(64)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop(self._sock))

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                conn, _ = await loop.sock_accept(listener)
                task = loop.create_task(self._reset_after_first_bytes(conn))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in list(pending):
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _reset_after_first_bytes(self, conn: socket.socket) -> None:
        """Let the TCP handshake complete, wait for the client's first bytes (a TLS
        ClientHello), then reset: like a middlebox killing TLS. TCP connect itself works."""
        loop = asyncio.get_running_loop()
        linger_off_now = struct.pack("ii", 1, 0)
        conn.setblocking(False)
        with conn:
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(loop.sock_recv(conn, 1), 10.0)
            # Linger on with timeout 0 makes close() send RST instead of FIN.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_off_now)
        self.resets += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Swallow(asyncio.DatagramProtocol):
    """Reads and drops every datagram: no answer and, unlike a closed port, no ICMP error."""

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        return


class BlackholeServer(LabServer):
    """TCP connects time out and UDP goes unanswered, without root or firewall rules.

    TCP: listen(0) and park one connection of our own in the accept queue, never accepted;
    Linux then finds the queue full and silently drops further SYNs. UDP (optional): a socket
    on the same port that swallows datagrams, so QUIC handshakes time out too.
    """

    def __init__(self, *, tcp_sock: socket.socket, udp_sock: socket.socket | None) -> None:
        self.host, self.port = _addr(tcp_sock)
        self._tcp_sock: socket.socket | None = tcp_sock
        self._udp_sock: socket.socket | None = udp_sock
        self._filler: socket.socket | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None

    @classmethod
    def bind(cls, host: str, *, port: int = 0, udp: bool = True) -> BlackholeServer:
        kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
        socks = _bind(host, port, kinds)
        return cls(tcp_sock=socks[0], udp_sock=socks[1] if udp else None)

    async def start(self) -> None:
        if self._tcp_sock is None:
            raise RuntimeError("BlackholeServer was stopped; make a new one")
        loop = asyncio.get_running_loop()
        # Backlog 0 leaves room for exactly one queued connection on Linux (full = len > 0).
        self._tcp_sock.listen(0)
        filler = socket.socket(self._tcp_sock.family, socket.SOCK_STREAM)
        self._filler = filler
        filler.setblocking(False)
        await loop.sock_connect(filler, (self.host, self.port))
        if self._udp_sock is not None:
            transport, _ = await loop.create_datagram_endpoint(_Swallow, sock=self._udp_sock)
            self._udp_transport = transport
            self._udp_sock = None  # owned by the transport now

    async def stop(self) -> None:
        for sock in (self._filler, self._tcp_sock, self._udp_sock):
            if sock is not None:
                sock.close()
        self._filler = self._tcp_sock = self._udp_sock = None
        if self._udp_transport is not None:
            self._udp_transport.close()
            self._udp_transport = None
        # Let the event loop run the transport's deferred socket close before the loop ends.
        await asyncio.sleep(0)


class ClosedPort(LabServer):
    """Holds a port on one family so that it is refused there, and nobody else can take it.

    TCP: bound but not listening, so SYNs get RST (ECONNREFUSED). UDP: bound and connected to
    itself, so datagrams from anyone else find no socket and get ICMP port unreachable.
    """

    def __init__(self, *, tcp_sock: socket.socket | None, udp_sock: socket.socket | None) -> None:
        first = tcp_sock or udp_sock
        if first is None:
            raise ValueError("ClosedPort needs at least one socket")
        self.host, self.port = _addr(first)
        self._socks = [s for s in (tcp_sock, udp_sock) if s is not None]
        self._udp_sock = udp_sock

    @classmethod
    def bind(cls, host: str, *, port: int = 0, tcp: bool = True, udp: bool = True) -> ClosedPort:
        kinds = [k for k, on in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)) if on]
        socks = _bind(host, port, kinds)
        return cls(
            tcp_sock=socks[0] if tcp else None,
            udp_sock=socks[-1] if udp else None,
        )

    async def start(self) -> None:
        if self._udp_sock is not None:
            with contextlib.suppress(BlockingIOError):
                # UDP connect() only sets the peer; nothing is sent, so non-blocking is fine.
                self._udp_sock.connect(_addr(self._udp_sock))

    async def stop(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks = []
        self._udp_sock = None

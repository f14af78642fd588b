"""What a TLS handshake costs this process's CPU, with and without the probe around it (run by
hand, never part of the test suite).

One TLS server (asyncio, uvloop, a trustme ECDSA certificate, ALPN h2 and http/1.1) in a child
process on 127.0.0.1, and in this process, one at a time, --count handshakes by each of:

- `probe`: the tls probe as the scheduler runs it (`probes.handler.run_probe`: connect, TLS
  handshake on a bare socket, certificate description, our close_notify and the server's);
- `ssl bare`: Python's ssl module on a bare non-blocking socket, the loop only waiting for
  readiness (no certificate description, no close_notify: the socket is just closed);
- `pyOpenSSL bare`: the same with pyOpenSSL, on the OpenSSL that cryptography's wheel bundles
  (Python's ssl uses the system's).

each paced (one every --every seconds, as a vantage spreads its probes, so each wakes an idle
process) and back to back. CPU per handshake = this process's user+sys CPU over the handshakes
/ their number; the server's CPU is not counted. Every handshake must verify the certificate,
or the benchmark stops.

Why: it separates what the probe adds from what the handshake itself costs here (OpenSSL's
client side, and the wake of an idle process), against which blackbox_exporter's figures (Go's
crypto/tls) are read in README.md.

    python benchmarks/tls_floor.py                   # 400 handshakes per case
    python benchmarks/tls_floor.py --count 100       # quick
Traffic: 127.0.0.1 only; both processes refuse anything else (scheduler_bench's audit hook).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scheduler_bench import install_loopback_guard

HOST = "bench.example"


def server_main(workdir: str) -> int:
    """The TLS server: prints its port, then answers handshakes until killed."""
    install_loopback_guard()
    import trustme
    import uvloop

    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(workdir, "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            await reader.read()
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    uvloop.run(serve())
    return 0


async def _ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def _connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def stdlib_bare(port: int, cafile: str) -> Callable[[], Awaitable[None]]:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["h2", "http/1.1"])

    async def once() -> None:
        tls = ctx.wrap_socket(
            await _connect(port), server_hostname=HOST, do_handshake_on_connect=False
        )
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await _ready(tls.fileno(), False)
                except ssl.SSLWantWriteError:
                    await _ready(tls.fileno(), True)
            assert tls.getpeercert(binary_form=True) and tls.version()
        finally:
            tls.close()

    return once


def pyopenssl_bare(port: int, cafile: str) -> Callable[[], Awaitable[None]]:
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(cafile)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    ctx.set_alpn_protos([b"h2", b"http/1.1"])

    async def once() -> None:
        sock = await _connect(port)
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(HOST.encode())
        conn.set_connect_state()
        try:
            while True:
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    await _ready(sock.fileno(), False)
                except SSL.WantWriteError:
                    await _ready(sock.fileno(), True)
            assert conn.get_peer_certificate() is not None
        finally:
            sock.close()

    return once


def the_probe(port: int, cafile: str) -> Callable[[], Awaitable[None]]:
    from probes import handler
    from probes.base import ProbeEnv, Resolution, Target

    target = Target(name="floor", service="ec2", region="", host=HOST, port=port, probes=("tls",))
    resolution = Resolution(family="ipv4", addresses=("127.0.0.1",))
    env = ProbeEnv(ssl_cafile=cafile)

    async def once() -> None:
        result = await handler.run_probe("tls", target, "ipv4", resolution, env)
        assert result.success, result.error

    return once


async def measure(once: Callable[[], Awaitable[None]], count: int, every: float) -> float:
    """CPU ms per handshake: `count` of them, one every `every` seconds (0: back to back)."""
    for _ in range(20):  # warm: imports, contexts, caches
        await once()
    cpu0 = time.process_time()
    start = time.monotonic()
    for i in range(count):
        if every:
            await asyncio.sleep(max(0.0, start + i * every - time.monotonic()))
        await once()
    return (time.process_time() - cpu0) / count * 1000


async def run(port: int, cafile: str, count: int, every: float, rounds: int) -> list[str]:
    from cryptography.hazmat.backends.openssl import backend

    cases = {
        "probe": the_probe(port, cafile),
        "ssl bare": stdlib_bare(port, cafile),
        "pyOpenSSL bare": pyopenssl_bare(port, cafile),
    }
    figures: dict[tuple[str, float], list[float]] = {}
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits every case
        for name, once in cases.items():
            for pace in (every, 0.0):
                figures.setdefault((name, pace), []).append(await measure(once, count, pace))
    lines = [
        f"Python ssl: {ssl.OPENSSL_VERSION}; pyOpenSSL: {backend.openssl_version_text()}",
        f"{count} handshakes per case and round, median of {rounds} rounds; CPU ms per handshake",
        f"{'case':<16} {'paced (' + str(every) + ' s)':>16} {'back to back':>14}",
    ]
    for name in cases:
        paced = statistics.median(figures[(name, every)])
        burst = statistics.median(figures[(name, 0.0)])
        lines.append(f"{name:<16} {paced:>16.3f} {burst:>14.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_server"]:
        return server_main(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400, help="handshakes per case and round")
    parser.add_argument("--every", type=float, default=0.01, help="seconds between paced ones")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    install_loopback_guard()
    import uvloop

    with tempfile.TemporaryDirectory(prefix="tls-floor-") as workdir:
        server = subprocess.Popen(
            [sys.executable, __file__, "--_server", workdir], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            lines = uvloop.run(
                run(port, os.path.join(workdir, "ca.pem"), args.count, args.every, args.rounds)
            )
        finally:
            server.kill()
            server.wait(10)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

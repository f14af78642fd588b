"""The TLS handshake timed by the kernel's clock (probes/stamp.py PeerTime): a busy event loop
that reads the server's answer late does not lengthen the handshake, on a real TLS server
(the standard library's, on loopback, answering each ClientHello a set time late)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from monitor.lab.pki import IssuedCert, LabPki
from probes import handler, stamp
from probes.base import Family, ProbeEnv, Resolution, Target

HOST = "lab.example.com"
ANSWER_AFTER = 0.1  # seconds the server waits before it answers a ClientHello
BUSY_FOR = 1.0  # seconds the client's loop is blocked while the answer is on its way


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return LabPki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def slow_tls_server(cert: IssuedCert, delay: float) -> Iterator[tuple[int, threading.Event]]:
    """A TLS server on 127.0.0.1 that answers each ClientHello `delay` s after it came (the
    event is set then), and holds the connection until the client closes it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop, hello = threading.Event(), threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(1, socket.MSG_PEEK)  # the ClientHello is here
                    hello.set()
                    time.sleep(delay)
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], hello
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


async def test_a_busy_loop_does_not_lengthen_the_handshake(pki: LabPki) -> None:
    cert = pki.issue("slow", [HOST])
    family: Family = "ipv4"
    with slow_tls_server(cert, ANSWER_AFTER) as (port, hello):
        target = Target(name="t", service="s", region="", host=HOST, port=port, timeout=5.0)
        resolution = Resolution(family=family, addresses=("127.0.0.1",))
        env = ProbeEnv(ssl_cafile=str(pki.ca_file))

        async def busy_loop() -> None:
            """Once the server has the ClientHello, block the loop (as a long render or a
            stalled callback would) past the server's answer, which waits in the kernel."""
            await asyncio.to_thread(hello.wait, 5)
            time.sleep(BUSY_FOR)

        busy = asyncio.create_task(busy_loop())
        result = await handler.run_probe("tls", target, family, resolution, env)
        await busy
    assert result.success, result.error
    # The server's delay is in it (the peer's time), the loop's is not.
    assert ANSWER_AFTER * 0.9 <= result.phases["handshake"] < ANSWER_AFTER + BUSY_FOR / 2, (
        result.phases
    )


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def test_a_peek_stamps_what_is_queued_and_takes_nothing() -> None:
    a, b = tcp_pair()
    with a, b:
        stamp.stamp_arrivals(a)
        assert stamp.queued_arrival(a) is None  # nothing queued
        sent = stamp.now_ns()
        b.send(b"x")
        time.sleep(1.0)  # read late: the stamp is the arrival's
        arrived = stamp.queued_arrival(a)
        assert arrived is not None and 0 <= arrived - sent < 500_000_000
        assert a.recv(1) == b"x"  # peeked, not taken


def test_the_wait_runs_from_the_send_to_the_arrival() -> None:
    a, b = tcp_pair()
    with a, b, stamp.PeerTime(a) as waited:
        a.send(b"hello")
        waited.waiting()
        assert b.recv(5) == b"hello"
        time.sleep(0.05)  # the peer's time
        b.send(b"back")
        time.sleep(1.0)  # this end's, read late
        waited.arrived()
        seconds = waited.seconds()
        assert seconds is not None and 0.05 <= seconds < 0.55, seconds


def test_no_figure_for_an_arrival_without_a_wait() -> None:
    a, b = tcp_pair()
    with a, b, stamp.PeerTime(a) as waited:
        b.send(b"x")
        time.sleep(0.05)
        waited.arrived()
        assert waited.seconds() is None


def test_no_figure_for_a_round_trip_it_did_not_wait_for() -> None:
    """An answer read in the same call that sent the question (the sender slow or
    descheduled, the peer fast) leaves no wait to stamp: no figure, the caller's wall time."""
    a, b = tcp_pair()
    with a, b, stamp.PeerTime(a) as waited:
        assert waited.seconds() is None  # nothing waited for at all
        a.send(b"hello")
        waited.waiting()
        assert b.recv(5) == b"hello"
        b.send(b"back")
        time.sleep(0.05)
        waited.arrived()
        assert waited.seconds() is not None  # one round trip, waited for
        assert waited.seconds(rounds=2) is None  # a second one, read without a wait


def test_no_figure_for_an_answer_that_came_before_the_wait() -> None:
    """The answer arrived before the wait began (the call that sent the question was slow to
    return): when the question left is not known, so there is no figure."""
    a, b = tcp_pair()
    with a, b, stamp.PeerTime(a) as waited:
        a.send(b"hello")
        assert b.recv(5) == b"hello"
        b.send(b"back")
        time.sleep(0.05)  # the answer is queued before the wait starts
        waited.waiting()
        waited.arrived()
        assert waited.seconds() is None

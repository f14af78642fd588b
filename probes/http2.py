"""HTTPS GET offering ALPN h2 and http/1.1, to the IP literal with the host as SNI and :authority.

HTTP/2 is spoken with the sans-I/O h2 library; a server that picks http/1.1 (S3 does) is
answered with h11. A response is reachability; `expect_status` tightens it. The body is read up
to a bound and discarded.
"""

from __future__ import annotations

import asyncio
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11

from probes.base import ErrorKind, Outcome, ProbeRequest, passed
from probes.details import HttpExchange, TlsHandshake
from probes.errors import classify, error
from probes.httpbase import (
    HTTP_METRICS,
    MAX_BODY,
    MAX_HEADER_LIST_SIZE,
    USER_AGENT,
    ResponseRefused,
    authority,
    check_headers,
    parse_status,
    status_class,
    status_error,
)
from probes.kinds import NORMAL, NOT, SIG, Compared, Cost, Kind, register
from probes.netutil import announced_mss
from probes.pmtu import Stalled, cut_if_stalled, with_blackhole_retry
from probes.tls import HandshakeFailed, close, handshake, receive, send_all

ALPN = ("h2", "http/1.1")


class _Response:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body_bytes = 0
        self.ttfb: float | None = None


async def _exchange_h2(tls: ssl.SSLSocket, req: ProbeRequest, resp: _Response) -> None:
    clock = req.env.clock
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    # hpack refuses a header list over this decoded size (h2's default, set here on purpose:
    # it is the cap docs/probes.md states), and h2 buffers at most 64 CONTINUATION frames.
    h2c.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
    h2c.initiate_connection()
    stream_id = h2c.get_next_available_stream_id()
    h2c.send_headers(
        stream_id,
        [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", authority(req)),
            (":path", req.target.http.path),
            ("user-agent", USER_AGENT),
            ("accept", "*/*"),
        ],
        end_stream=True,
    )
    await send_all(tls, h2c.data_to_send())
    t_sent = clock()
    first = True
    while True:
        data = await receive(tls)
        if not data:
            raise EOFError("connection closed before the response ended")
        if first and len(data) >= 3:
            # h2 waits for a whole frame before judging its length: a peer that answers
            # "HTTP/1.1 ..." announces a 4.7 MB frame, and the probe would wait for it.
            announced = int.from_bytes(data[:3], "big")
            if announced > h2c.max_inbound_frame_size:
                raise h2.exceptions.FrameTooLargeError(
                    f"first frame announces {announced} bytes (not HTTP/2?)"
                )
        first = False
        for event in h2c.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                resp.ttfb = clock() - t_sent
                passed("ttfb")
                check_headers(event.headers or [])
                for name, value in event.headers or []:
                    key = name.decode("latin-1") if isinstance(name, bytes) else name
                    val = value.decode("latin-1") if isinstance(value, bytes) else value
                    resp.headers[key.lower()] = val
                resp.status = parse_status(resp.headers.get(":status"))
            elif isinstance(event, h2.events.DataReceived):
                resp.body_bytes += len(event.data)
                h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                return
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                raise h2.exceptions.ProtocolError(f"stream reset by peer (code {event.error_code})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise h2.exceptions.ProtocolError(f"GOAWAY from peer (code {event.error_code})")
        if resp.body_bytes > MAX_BODY and resp.status is not None:
            return
        await send_all(tls, h2c.data_to_send())


async def _exchange_h11(tls: ssl.SSLSocket, req: ProbeRequest, resp: _Response) -> None:
    clock = req.env.clock
    # h11 refuses a header block still incomplete past this many bytes; check_headers then
    # holds a complete one (however it arrived) to the same caps as HTTP/2 and HTTP/3.
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_LIST_SIZE)
    request = h11.Request(
        method="GET",
        target=req.target.http.path,
        headers=[
            ("host", authority(req)),
            ("user-agent", USER_AGENT),
            ("accept", "*/*"),
            ("connection", "close"),
        ],
    )
    await send_all(tls, (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
    t_sent = clock()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await receive(tls))
        elif isinstance(event, h11.Response):
            resp.ttfb = clock() - t_sent
            passed("ttfb")
            check_headers(event.headers)
            resp.status = event.status_code
            resp.headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            resp.body_bytes += len(event.data)
            if resp.body_bytes > MAX_BODY:
                return
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return


async def probe(req: ProbeRequest) -> Outcome:
    async def attempt(mss: int | None, cut_at: float | None) -> Outcome:
        return await _probe(req, mss, cut_at)

    return await with_blackhole_retry(req, attempt, "the HTTPS exchange")


async def _probe(req: ProbeRequest, mss: int | None, cut_at: float | None) -> Outcome:
    """One connection; raises Stalled when it is not done by clock time `cut_at`."""
    clock = req.env.clock
    try:
        hs = await handshake(req, ALPN, mss=mss, cut_at=cut_at)
    except HandshakeFailed as failed:
        return Outcome(
            success=False, error=failed.error, phases=failed.phases, details=failed.details
        )
    phases: dict[str, float] = {"connect": hs.connect_seconds, "handshake": hs.tls_seconds}
    alpn = hs.details.alpn
    version = "2" if alpn == "h2" else "1.1"
    resp = _Response()
    t0 = clock()
    announced = announced_mss(hs.conn)
    cut: asyncio.Timeout | None = None
    try:
        async with cut_if_stalled(
            hs.conn, None if cut_at is None else max(0.0, cut_at - t0)
        ) as cut:
            if version == "2":
                await _exchange_h2(hs.conn, req, resp)
            else:
                await _exchange_h11(hs.conn, req, resp)
        err = None
    except TimeoutError as exc:
        if cut is not None and cut.expired():
            hs.conn.close()  # a stalled peer would hold a graceful close
            raise Stalled(mss=announced, phases=phases, details=hs.details) from exc
        err = classify(exc)
    except (h2.exceptions.H2Error, h11.ProtocolError, ResponseRefused) as exc:
        err = error(ErrorKind.PROTOCOL_ERROR, f"HTTP/{version}: {exc}")
    except (OSError, EOFError) as exc:
        err = classify(exc)
    finally:
        t_end = clock()  # closing the connection is not part of the measured exchange
        await close(hs.conn)
    if resp.ttfb is not None:
        phases["ttfb"] = resp.ttfb
        phases["transfer"] = max(0.0, t_end - t0 - resp.ttfb)
    details = HttpExchange(
        http_version=version,
        status=resp.status,
        tls_version=hs.details.tls_version,
        alpn=alpn,
        alt_svc=resp.headers.get("alt-svc"),
        server=resp.headers.get("server"),
        body_bytes=resp.body_bytes,
    )
    if err is None:
        err = status_error(req, resp.status, f"HTTP/{version}")
    return Outcome(success=err is None, error=err, phases=phases, details=details)


KIND = register(
    Kind(
        name="http2",
        probe=probe,
        summary="HTTPS request offering h2 (HTTP/1.1 when declined): status and HTTP version",
        details=(HttpExchange, TlsHandshake),
        compared={
            HttpExchange: (
                Compared[HttpExchange]("http_version", lambda d: d.http_version, SIG),
                Compared[HttpExchange](
                    "status_class", lambda d: status_class(d.status), SIG, ("status",)
                ),
                Compared[HttpExchange]("tls_version", lambda d: d.tls_version, SIG),
                Compared[HttpExchange]("status", lambda d: d.status, NORMAL),
                Compared[HttpExchange]("alt_svc", lambda d: d.alt_svc, NORMAL),
                Compared[HttpExchange]("server", lambda d: d.server, NORMAL),
                Compared[HttpExchange]("alpn", lambda d: d.alpn, NOT),  # http_version says it
                Compared[HttpExchange]("body_bytes", lambda d: d.body_bytes, NOT),
            ),
        },
        phases=("connect", "handshake", "ttfb", "transfer"),
        cost=Cost.HEAVY,
        metrics=HTTP_METRICS,
    )
)

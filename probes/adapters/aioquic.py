"""aioquic's private attributes, for the http3 probe: receive windows that never grow, a QPACK
decoder without a dynamic table, no server push, and the certificates the peer presented.

aioquic has no public way to say any of this (its receive windows double without end, and
QuicConfiguration has no QPACK or push settings); these subclasses override its private
methods, so aioquic is pinned below 2 in pyproject.toml.
"""

from __future__ import annotations

from typing import Any

import pylsqpack
from aioquic.h3.connection import H3Connection, Setting
from aioquic.quic.connection import QuicConnection
from aioquic.tls import Context
from cryptography import x509

PRIVATE: tuple[tuple[str, str], ...] = (
    ("aioquic.quic.connection.QuicConnection", "_write_connection_limits"),
    ("aioquic.quic.connection.QuicConnection", "_write_stream_limits"),
    ("aioquic.quic.connection.QuicConnection", "_local_max_data"),
    ("aioquic.h3.connection.H3Connection", "_init_connection"),
    ("aioquic.h3.connection.H3Connection", "_get_local_settings"),
    ("aioquic.h3.connection.H3Connection", "_max_table_capacity"),
    ("aioquic.h3.connection.H3Connection", "_blocked_streams"),
    ("aioquic.h3.connection.H3Connection", "_decoder"),
    ("aioquic.h3.connection.H3Connection", "_max_push_id"),
    ("aioquic.tls.Context", "_peer_certificate"),
    ("aioquic.tls.Context", "_peer_certificate_chain"),
)
"""(class, attribute) pairs this module relies on; instance attributes included."""


class BoundedQuic(QuicConnection):
    """aioquic doubles a receive window whenever half of it has been received, without end (and
    counts out-of-order data too). A probe reads one bounded response, so its windows stay at
    their first size: a peer can never make it buffer more than its max_stream_data of a
    stream or max_data in all."""

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        limit = self._local_max_data
        used = limit.used
        limit.used = min(used, limit.value // 2)  # never "over half used": no doubling
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        receiver = stream.receiver
        highest = receiver.highest_offset
        receiver.highest_offset = min(highest, stream.max_stream_data_local // 2)
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest


class BoundedH3(H3Connection):
    """HTTP/3 whose QPACK dynamic table has capacity 0 and no blocked streams (a reference can
    expand to a static-table entry at most, and a server that inserts anyway is a QPACK encoder
    stream error), without server push, announcing SETTINGS_MAX_FIELD_SECTION_SIZE."""

    def __init__(self, quic: QuicConnection, *, max_field_section_size: int) -> None:
        self.max_field_section_size = max_field_section_size
        super().__init__(quic)

    def _init_connection(self) -> None:
        # Called at the end of H3Connection.__init__, before the SETTINGS frame is sent.
        self._max_table_capacity = 0
        self._blocked_streams = 0
        self._decoder = pylsqpack.Decoder(0, 0)
        self._max_push_id = None  # no MAX_PUSH_ID: a PUSH_PROMISE is a connection error
        super()._init_connection()

    def _get_local_settings(self) -> dict[int, int]:
        settings: dict[int, int] = super()._get_local_settings()
        settings[Setting.MAX_FIELD_SECTION_SIZE] = self.max_field_section_size
        return settings


def peer_certificates(tls: Context) -> tuple[x509.Certificate | None, list[x509.Certificate]]:
    """The leaf and the rest of the chain the peer presented (aioquic keeps them private)."""
    return tls._peer_certificate, list(tls._peer_certificate_chain)

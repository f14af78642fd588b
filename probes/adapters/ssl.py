"""The ssl module's private side, for the tls probe: the chain OpenSSL verified, which Python
3.11 and 3.12 only offer on the object inside an SSLSocket or SSLObject (`_sslobj`); public as
`get_verified_chain` from 3.13, which is used when present."""

from __future__ import annotations

import ssl

PRIVATE: tuple[tuple[str, str], ...] = (("ssl.SSLSocket", "_sslobj"),)
"""(class, attribute) pairs this module relies on before Python 3.13."""

_ENCODING_DER = 2  # _ssl.ENCODING_DER, not exported by the ssl module before 3.13


def verified_chain(conn: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The chain OpenSSL verified, leaf to trust anchor, DER; [] when it cannot be read."""
    get = getattr(conn, "get_verified_chain", None)
    if get is None:
        get = getattr(getattr(conn, "_sslobj", None), "get_verified_chain", None)
    if get is None:
        return []
    try:
        chain = get() or []
    except (ssl.SSLError, ValueError):
        return []
    return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain]

"""The tls probe closes its connection without ever answering the server with a reset: it
sends its close_notify and reads the server's (and the TLS 1.3 session tickets sent after the
handshake) before closing the socket. Counted by nftables in a network namespace of the test's
own, so no other test's traffic is counted, against the lab's real TLS server."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from lab.netns import Netns, inside, namespace, nft

from monitor.lab.pki import LabPki
from monitor.lab.web import WebServer
from probes import handler
from probes.base import ProbeEnv, ProbeResult, Resolution, Target
from probes.details import TlsHandshake

pytestmark = pytest.mark.netns

HOST = "close.example.com"
PROBES = 20
RULESET = """
table inet resets {
    counter sent { }
    chain out {
        type filter hook output priority 0;
        tcp flags rst counter name "sent"
    }
}
"""


def resets_sent(ns: Netns) -> int:
    out = subprocess.run(
        [*ns.exec_prefix(), "nft", "list", "counter", "inet", "resets", "sent"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return int(out.split("packets", 1)[1].split()[0])


def test_the_tls_probe_closes_without_a_reset(tmp_path: Path) -> None:
    pki = LabPki(tmp_path)
    cert = pki.issue("close", [HOST])
    env = ProbeEnv(ssl_cafile=str(pki.ca_file))

    async def probes_then_a_reset() -> list[ProbeResult]:
        async with WebServer.bind("127.0.0.1", cert, h3=False) as web:
            target = Target(
                name="close", service="unit", region="", host=HOST, port=web.port, probes=("tls",)
            )
            resolution = Resolution(family="ipv4", addresses=("127.0.0.1",))
            results = []
            for _ in range(PROBES):
                results.append(await handler.run_probe("tls", target, "ipv4", resolution, env))
            await asyncio.sleep(0.5)  # anything the server still sends has arrived
            # What a reset looks like to the counter: a client that aborts (SO_LINGER 0).
            loop = asyncio.get_running_loop()
            with socket.socket() as rude:
                rude.setblocking(False)
                await loop.sock_connect(rude, ("127.0.0.1", web.port))
                rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return results

    with namespace("tlsclose") as ns:
        nft(ns, RULESET)
        with inside(ns) as there:
            results = there.submit(asyncio.run, probes_then_a_reset()).result(120)
            count = resets_sent(ns)
    assert all(r.success for r in results), [r.error for r in results if not r.success]
    assert count == 1, f"{count - 1} resets from {PROBES} tls probes (1 expected: the abort)"
    # TLS 1.3: the server sent session tickets after each handshake, which a hasty close
    # would have answered with a reset.
    assert all(
        isinstance(r.details, TlsHandshake) and r.details.tls_version == "TLSv1.3" for r in results
    )

"""A CA file changed in place is read again (found by the soak, benchmarks/soak.py: a lab that
restarts writes a new CA to the same path, and the vantage kept trusting the old one until it
was restarted, reload or not). The TLS contexts and the HTTP/3 CA bytes are cached by the
file's identity (path, size, modification time, inode), not by its name alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hostile import HostileH3, HostileTls, Pem, h3_ok, issue

from probes.base import ProbeEnv, ProbeKind, Resolution, Target, TlsSpec


async def probe(kind: ProbeKind, port: int, ca_file: Path) -> bool:
    from probes.handler import run_probe

    target = Target(
        name="t",
        service="x",
        region="",
        host="127.0.0.1",
        port=port,
        tls=TlsSpec(server_name="trust.example"),
        timeout=5.0,
    )
    res = Resolution(family="ipv4", addresses=("127.0.0.1",))
    r = await run_probe(kind, target, "ipv4", res, ProbeEnv(ssl_cafile=str(ca_file)))
    return r.success


@pytest.mark.parametrize("kind", ["tls", "http3"])
async def test_a_ca_file_rewritten_in_place_is_read_again(kind: ProbeKind, tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = issue(tmp_path / "one", "trust.example")
    second = issue(tmp_path / "two", "trust.example")
    ca_file = tmp_path / "ca.pem"
    shutil.copy(first.ca_file, ca_file)

    def server(pem: Pem) -> HostileTls | HostileH3:
        if kind == "tls":
            return HostileTls(pem, [(":status", "200")])
        return HostileH3(pem, {"ipv4": h3_ok})

    with server(first) as one:
        assert await probe(kind, one.port, ca_file)
    # The CA is replaced in the same file (as a restarted lab or a CA rotation does); the
    # server now presents a leaf of the new CA.
    shutil.copy(second.ca_file, ca_file)
    os.utime(ca_file, ns=(0, os.stat(ca_file).st_mtime_ns + 1_000_000))
    with server(second) as two:
        assert await probe(kind, two.port, ca_file), "the old CA is still trusted"


def test_a_rotated_ca_replaces_its_context_not_adds_one(tmp_path: Path) -> None:
    """The 30-minute soak's RSS grew by a few hundred kB per lab restart: every new CA kept the
    old contexts too. One context per (CA file, ALPN, settings), however often it changes."""
    from probes import trust

    ca_file = tmp_path / "ca.pem"
    spec = TlsSpec()
    for i in range(10):
        (tmp_path / f"{i}").mkdir()
        shutil.copy(issue(tmp_path / f"{i}", "trust.example").ca_file, ca_file)
        os.utime(ca_file, ns=(0, 10**18 + i))
        trust.client_context(str(ca_file), ("h2",), spec)
        trust.client_context(str(ca_file), ("h2",), spec, verify=False)
    mine = [k for k in trust._CONTEXTS if k[0][2] == str(ca_file)]
    assert len(mine) == 2

"""One trust decision: a CA is trusted by tls, http2 and http3 alike, or by none of them. The
store is the system's default verify paths plus `tls.ca_file`; certifi's bundle is not part of
it. Against the lab's real server (hypercorn: TLS with h2, and QUIC with h3) on 127.0.0.1."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import certifi
import pytest
import trustme

from monitor.lab.pki import LabPki
from monitor.lab.web import WebServer
from probes.base import ProbeEnv, ProbeKind, Resolution, Target
from probes.handler import run_probe

HOST = "trust.example.com"
KINDS: tuple[ProbeKind, ...] = ("tls", "http2", "http3")


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[tuple[LabPki, int]]:
    pki = LabPki(tmp_path / "pki")
    cert = pki.issue("trust", [HOST])
    async with WebServer.bind("127.0.0.1", cert, h3=True) as web:
        yield pki, web.port


async def outcomes(port: int, ca_file: Path | None) -> dict[ProbeKind, str]:
    """Per probe kind: "trusted", or the error kind it failed with."""
    target = Target(name="t", service="x", region="", host=HOST, port=port, probes=KINDS)
    resolution = Resolution(family="ipv4", addresses=("127.0.0.1",))
    env = ProbeEnv(ssl_cafile=str(ca_file) if ca_file else None)
    out: dict[ProbeKind, str] = {}
    for kind in KINDS:
        r = await run_probe(kind, target, "ipv4", resolution, env)
        out[kind] = "trusted" if r.success else (r.error.kind if r.error else "failed")
    return out


def bundle(path: Path, *pems: bytes) -> Path:
    path.write_bytes(b"".join(pems))
    return path


@pytest.fixture
def no_system_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system store for this test (OpenSSL reads SSL_CERT_FILE and SSL_CERT_DIR): a bundle
    of an unrelated CA and an empty directory, for a test to add to."""
    empty_dir = tmp_path / "system-certs"
    empty_dir.mkdir()
    system = bundle(tmp_path / "system.pem", trustme.CA().cert_pem.bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(system))
    monkeypatch.setenv("SSL_CERT_DIR", str(empty_dir))
    return system


async def test_a_ca_in_ca_file_only_is_trusted_by_all_three(
    lab: tuple[LabPki, int], no_system_ca: Path
) -> None:
    pki, port = lab
    assert await outcomes(port, pki.ca1_file) == dict.fromkeys(KINDS, "trusted")


async def test_a_ca_in_certifi_only_is_trusted_by_none(
    lab: tuple[LabPki, int], no_system_ca: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki, port = lab
    certifi_bundle = bundle(
        tmp_path / "certifi.pem", Path(certifi.where()).read_bytes(), pki.ca1_file.read_bytes()
    )
    monkeypatch.setattr(certifi, "where", lambda: str(certifi_bundle))
    assert await outcomes(port, None) == dict.fromkeys(KINDS, "tls_untrusted")


async def test_a_ca_in_the_system_store_only_is_trusted_by_all_three(
    lab: tuple[LabPki, int], no_system_ca: Path
) -> None:
    pki, port = lab
    bundle(no_system_ca, no_system_ca.read_bytes(), pki.ca1_file.read_bytes())
    assert await outcomes(port, None) == dict.fromkeys(KINDS, "trusted")


async def test_a_ca_in_the_system_directory_only_is_trusted_by_all_three(
    lab: tuple[LabPki, int], no_system_ca: Path
) -> None:
    """SSL_CERT_DIR is a directory of certificates named by subject hash (c_rehash)."""
    pki, port = lab
    directory = no_system_ca.parent / "system-certs"
    digest = subprocess.run(
        ["openssl", "x509", "-subject_hash", "-noout", "-in", str(pki.ca1_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (directory / f"{digest}.0").write_bytes(pki.ca1_file.read_bytes())
    assert await outcomes(port, None) == dict.fromkeys(KINDS, "trusted")


async def test_a_ca_nowhere_is_trusted_by_none(lab: tuple[LabPki, int], no_system_ca: Path) -> None:
    """An empty system bundle too: nothing is trusted, and it is no client_config error."""
    _pki, port = lab
    bundle(no_system_ca)
    assert await outcomes(port, None) == dict.fromkeys(KINDS, "tls_untrusted")

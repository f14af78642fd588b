"""What probes share or skip to cost less CPU, against real peers: the resolution reused for
its TTL (the lab's DNS server counting what it is asked), `icmp.count` (echoes to loopback), and
uvloop under the commands that probe."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lab.dnscount import CountingServer

from monitor.cli import loop_factory, run_async
from monitor.config import load_config
from monitor.lab.dnsserver import DnsRecord, DnsServer
from monitor.serve.vantage import ResolutionCache
from probes.base import ProbeEnv, Resolution
from probes.details import IcmpEcho
from probes.handler import run_probe

# -- icmp.count ------------------------------------------------------------------------------


def _config(tmp_path: Path, icmp: str) -> Path:
    path = tmp_path / "c.yml"
    path.write_text(f"targets:\n  - name: loop\n    host: localhost.example\n{icmp}")
    return path


def test_icmp_count_defaults_to_three_and_is_read(tmp_path: Path) -> None:
    (default,) = load_config(_config(tmp_path, "")).targets
    assert default.icmp.count == 3
    (one,) = load_config(_config(tmp_path, "    icmp: {count: 1, sizes: [1280]}\n")).targets
    assert (one.icmp.count, one.icmp.sizes) == (1, (1280,))


@pytest.mark.root
@pytest.mark.parametrize("count", [1, 2, 5])
async def test_icmp_count_is_the_number_of_echoes_sent(tmp_path: Path, count: int) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root for an ICMP socket whatever ping_group_range says (CI is root)")
    cfg = load_config(_config(tmp_path, f"    icmp: {{count: {count}}}\n"))
    (target,) = cfg.targets
    env = ProbeEnv(icmp_interval=0.01)
    for family, address in (("ipv4", "127.0.0.1"), ("ipv6", "::1")):
        res = Resolution(family=family, addresses=(address,))  # type: ignore[arg-type]
        result = await run_probe("icmp", target, family, res, env)  # type: ignore[arg-type]
        assert result.success, result.error
        assert isinstance(result.details, IcmpEcho)
        assert (result.details.sent, result.details.received) == (count, count)


# -- resolutions reused within their TTL -------------------------------------------------------

TTL = 30
RECORDS = {
    "short.example.com": [
        DnsRecord(rtype="A", value="127.0.0.1", ttl=TTL),
        DnsRecord(rtype="AAAA", value="::1", ttl=TTL),
    ],
    "zero.example.com": [DnsRecord(rtype="A", value="127.0.0.1", ttl=0)],
}


@pytest.fixture
async def lab_dns() -> AsyncIterator[CountingServer]:
    async with DnsServer(RECORDS, ("example.com",)) as server:
        yield CountingServer(server)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_resolution_is_reused_until_its_ttl_ends(lab_dns: CountingServer) -> None:
    clock = Clock()
    cache = ResolutionCache(clock)
    resolver = lab_dns.resolver()
    first = await cache.get(resolver, "short.example.com", "ipv4", fresh=False)
    assert first.addresses == ("127.0.0.1",) and first.ttl == TTL
    clock.now += TTL - 0.5
    assert await cache.get(resolver, "short.example.com", "ipv4", fresh=False) is first
    assert cache.peek("short.example.com", "ipv4") is first
    assert lab_dns.asked == [("short.example.com", "A")]
    clock.now += 1.0  # past the TTL: asked again
    assert cache.peek("short.example.com", "ipv4") is None
    again = await cache.get(resolver, "short.example.com", "ipv4", fresh=False)
    assert again is not first and again.addresses == ("127.0.0.1",)
    assert lab_dns.asked == [("short.example.com", "A")] * 2


async def test_the_dns_probe_always_asks_and_refreshes(lab_dns: CountingServer) -> None:
    clock = Clock()
    cache = ResolutionCache(clock)
    resolver = lab_dns.resolver()
    for _ in range(3):
        await cache.get(resolver, "short.example.com", "ipv6", fresh=True)
    asked = [q for q in lab_dns.asked if q[0] != "ipv4only.arpa"]  # the NAT64 check, once
    assert asked == [("short.example.com", "AAAA")] * 3
    clock.now += TTL - 1  # the last fresh answer is the one reused
    await cache.get(resolver, "short.example.com", "ipv6", fresh=False)
    assert len(lab_dns.asked) == 4


async def test_a_ttl_of_zero_is_never_reused(lab_dns: CountingServer) -> None:
    cache = ResolutionCache(Clock())
    resolver = lab_dns.resolver()
    for _ in range(2):
        res = await cache.get(resolver, "zero.example.com", "ipv4", fresh=False)
        assert res.addresses == ("127.0.0.1",) and res.ttl == 0
    assert lab_dns.asked == [("zero.example.com", "A")] * 2


async def test_a_failed_resolution_is_never_reused(lab_dns: CountingServer) -> None:
    cache = ResolutionCache(Clock())
    resolver = lab_dns.resolver()
    for _ in range(2):
        res = await cache.get(resolver, "missing.example.com", "ipv4", fresh=False)
        assert res.error is not None and res.error.kind == "dns_nxdomain"
    assert lab_dns.asked == [("missing.example.com", "A")] * 2


# -- uvloop ------------------------------------------------------------------------------------


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_runs_the_commands_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert run_async(_loop_module()).startswith("uvloop")


def test_asyncio_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets without it
    assert loop_factory() is None
    assert run_async(_loop_module()).startswith("asyncio")


def test_uvloop_is_a_linux_dependency() -> None:
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert "\"uvloop>=0.19; sys_platform == 'linux'\"" in text
    if sys.platform == "linux" and os.environ.get("CI"):
        import uvloop  # noqa: F401  (installed by scripts/install: a plain dependency)

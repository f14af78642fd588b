"""Basic auth under attack (issue 13, finding 7), against a real aiohttp server on loopback:
bogus logins from one client address cannot queue up behind the bcrypt lock and delay a real
login from another, and a failed check costs the same bcrypt work for a known user of any cost
as for an unknown name, so timing does not tell which names exist."""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import bcrypt
from aiohttp import web

from monitor.web.webconfig import load_web_config, web_middlewares


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def users_file(tmp: Path, users: dict[str, tuple[str, int]]) -> Path:
    lines = ["basic_auth_users:"]
    for name, (password, cost) in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()
        lines.append(f"  {name}: '{hashed}'")
    path = tmp / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def server(path: Path) -> AsyncIterator[str]:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application(middlewares=web_middlewares(load_web_config(path)))
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def timed_get(url: str, headers: dict[str, str], source: str) -> tuple[int, float]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    t0 = time.perf_counter()
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as resp,
    ):
        await resp.read()
        return resp.status, time.perf_counter() - t0


def bcrypt_seconds(cost: int) -> float:
    hashed = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=cost))
    t0 = time.perf_counter()
    bcrypt.checkpw(b"y", hashed)
    return time.perf_counter() - t0


async def test_bogus_logins_do_not_delay_a_real_one(tmp_path: Path) -> None:
    """40 bogus logins from 127.0.0.1, then a real one from 127.0.0.2: the real one waits for
    one bcrypt run at most, not forty (7.8 s in the issue's experiment)."""
    path = users_file(tmp_path, {"alice": ("secret", 10)})
    one = bcrypt_seconds(10)
    async with server(path) as url:
        bogus = [
            asyncio.ensure_future(timed_get(url, basic(f"user{i}", "guess"), "127.0.0.1"))
            for i in range(40)
        ]
        await asyncio.sleep(0.05)  # they are queued (or refused) first
        status, waited = await timed_get(url, basic("alice", "secret"), "127.0.0.2")
        results = await asyncio.gather(*bogus)
    assert status == 200
    assert waited < 4 * one + 0.5, f"real login took {waited:.2f} s (one bcrypt run {one:.2f} s)"
    codes = {code for code, _ in results}
    assert codes <= {401, 429} and 429 in codes  # one check per client at a time; the rest wait
    assert all(code in (401, 429) for code, _ in results)


async def test_too_many_pending_checks_are_refused_fast(tmp_path: Path) -> None:
    """40 clients on 40 addresses, each with its own guess: at most MAX_PENDING_CHECKS wait
    for bcrypt; the others are told 429 at once instead of queueing without end."""
    path = users_file(tmp_path, {"alice": ("secret", 10)})
    async with server(path) as url:
        results = await asyncio.gather(
            *(timed_get(url, basic("bob", f"guess{i}"), f"127.0.1.{i}") for i in range(1, 41))
        )
    refused = [t for code, t in results if code == 429]
    assert refused, "no check was refused: the queue is unbounded"
    assert max(refused) < 1.0
    assert len([code for code, _ in results if code == 401]) <= 40 - len(refused)


async def test_the_same_credentials_share_one_check(tmp_path: Path) -> None:
    """Concurrent requests with the same (right or wrong) credentials from one address are not
    refused: they wait for one check together."""
    path = users_file(tmp_path, {"alice": ("secret", 10)})
    async with server(path) as url:
        good = await asyncio.gather(
            *(timed_get(url, basic("alice", "secret"), "127.0.0.1") for _ in range(6))
        )
        bad = await asyncio.gather(
            *(timed_get(url, basic("alice", "nope"), "127.0.0.1") for _ in range(6))
        )
    assert [code for code, _ in good] == [200] * 6
    assert [code for code, _ in bad] == [401] * 6


async def test_failed_checks_cost_the_same_for_known_and_unknown_names(tmp_path: Path) -> None:
    """alice's hash has cost 4, bob's cost 10: a wrong password for alice, for bob and for a
    name that does not exist take about as long (as bob's cost), so none stands out."""
    path = users_file(tmp_path, {"alice": ("a-secret", 4), "bob": ("b-secret", 10)})
    async with server(path) as url:
        timings: dict[str, list[float]] = {"alice": [], "bob": [], "nobody": []}
        for _ in range(5):
            for name in timings:
                status, took = await timed_get(url, basic(name, "wrong"), "127.0.0.1")
                assert status == 401
                timings[name].append(took)
    median = {name: statistics.median(ts) for name, ts in timings.items()}
    slowest = max(median.values())
    assert min(median.values()) > 0.6 * slowest, median

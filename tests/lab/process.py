"""Run monitor.lab.loopback.Lab in a child process for the test session.

The lab used to serve from a thread of the pytest process. Python threads share one GIL: while
a test parsed a scrape or validated a JSON schema, the lab's QUIC server waited up to a switch
interval for every packet it handled, and a healthy endpoint's HTTP/3 timed out (a false
`both_failed`, 1 run in 2 of test_serve on a quiet 2-vCPU machine). A process of its own gives
the lab its own interpreter, as a real server has.

The child is spawned (never forked from a process with threads) and hands back the lab's
`LabFacts`; it stops when the parent closes the pipe or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType

from monitor.lab.loopback import Lab, LabFacts

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LAB_NICE = -10


def _child(workdir: Path, conn: Connection) -> None:
    # The lab stands in for AWS, whose servers are not starved of CPU by this machine's test
    # suite, Chromium or compilers. Root (here and in CI) may raise its priority.
    with contextlib.suppress(PermissionError):
        os.nice(LAB_NICE)
    # aiohttp's server warns on every TLS client that half-closes; noise, not a lab fault.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    asyncio.run(_serve(workdir, conn))


async def _serve(workdir: Path, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with Lab(workdir) as lab:
        conn.send(lab.facts())
        # Readable means the parent wrote "stop", closed its end, or died: stop in every case.
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()
        loop.remove_reader(conn.fileno())


class LabProcess:
    """``with LabProcess(workdir) as facts:`` the lab serves from a child until the block ends."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(workdir, child_conn), name="lab", daemon=True)
        self._child_conn = child_conn

    def __enter__(self) -> LabFacts:
        self._proc.start()
        self._child_conn.close()
        if not self._conn.poll(START_TIMEOUT):
            self._proc.kill()
            raise RuntimeError(f"the lab did not start within {START_TIMEOUT:.0f} s")
        try:
            facts = self._conn.recv()
        except EOFError as exc:
            self._proc.join(STOP_TIMEOUT)
            raise RuntimeError(f"the lab failed to start (exit {self._proc.exitcode})") from exc
        if not isinstance(facts, LabFacts):
            raise RuntimeError(f"the lab sent {facts!r}, not its facts")
        return facts

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.send("stop")
        self._conn.close()
        self._proc.join(STOP_TIMEOUT)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join(STOP_TIMEOUT)
            raise RuntimeError("the lab did not stop within 30 s")
        if self._proc.exitcode != 0:
            raise RuntimeError(f"the lab exited with status {self._proc.exitcode}")

"""Run monitor.lab.Lab in a background thread with its own event loop, so every test (sync or
async, any event loop) can probe it, and the servers start once per session."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import TracebackType

from monitor.lab import Lab


class LabThread:
    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lab", daemon=True)
        self.lab: Lab | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the test thread, which raises it
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Lab(self._workdir) as lab:
            self.lab = lab
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Lab:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the lab did not start within 60 s")
        if self._error is not None or self.lab is None:
            raise RuntimeError("the lab failed to start") from self._error
        return self.lab

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

"""Waiting in tests for something a real process does in its own time, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait(
    what: str,
    check: Callable[..., Any],
    timeout: float = 40.0,
    detail: Callable[[], str] | None = None,
) -> Any:
    """What `check()` returns once it is truthy, asked every 0.25 s; AssertionError naming
    `what` (and `detail()`, when given) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    more = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{more}")

"""`probe serve`'s logs: the libraries' own warnings only at debug (their errors in our format),
and a probe that keeps failing logged when it starts, changes or ends, with a reminder at most
every FAILURE_REMINDER_SECONDS: not one line per probe per interval."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.serve import logs
from monitor.serve.vantage import FAILURE_REMINDER_SECONDS, Vantage
from probes.base import ErrorKind, ProbeError, ProbeResult


@pytest.fixture
def root_logging() -> Iterator[None]:
    """logs.setup replaces the root handlers: put them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quic = logging.getLogger("quic").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("quic").setLevel(quic)


def emit_all() -> None:
    logging.getLogger("quic").warning("connection close from the peer")
    logging.getLogger("aiohttp.server").warning("a library warning")
    logging.getLogger("asyncio").error("a library error")
    logging.getLogger("dualstack.vantage").warning("ours", extra={"fields": {"event": "x"}})


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines()]


def test_library_warnings_only_at_debug(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("info", "json")
    emit_all()
    got = lines(capsys.readouterr().err)
    assert [(e["logger"], e["level"]) for e in got] == [
        ("asyncio", "error"),  # a library's error is kept, in our format
        ("dualstack.vantage", "warning"),
    ]
    logs.setup("debug", "json")
    emit_all()
    got = lines(capsys.readouterr().err)
    assert {e["logger"] for e in got} == {"quic", "aiohttp.server", "asyncio", "dualstack.vantage"}


def test_text_format_folds_library_errors(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("info", "text")
    emit_all()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert " ERROR asyncio: a library error" in err[0]
    assert ' WARNING dualstack.vantage: ours event="x"' in err[1]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)


def result(kind: ErrorKind | None) -> ProbeResult:
    return ProbeResult(
        target="web",
        probe="tcp",
        family="ipv6",
        address="::1",
        success=kind is None,
        duration_seconds=0.01,
        started=time.time(),
        error=None if kind is None else ProbeError(kind=kind, message=str(kind)),
    )


def test_a_persistent_failure_is_logged_on_change_with_reminders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "v.yml"
    path.write_text("vantage: v\ntargets: [{name: web, host: '::1', probes: [tcp]}]\n")
    clock = FakeClock()
    vantage = Vantage(load_config(path), clock=clock)
    caplog.set_level(logging.DEBUG, logger="dualstack.vantage")

    def events() -> list[str]:
        out = [str(getattr(r, "fields", {}).get("event")) for r in caplog.records]
        caplog.clear()
        return out

    vantage._log_failure(result(ErrorKind.TIMEOUT))
    # In the first round a failure is counted in the round's summary, and logged at debug only.
    assert [r.levelname for r in caplog.records] == ["DEBUG"] and events() == ["probe_failed"]
    vantage._first_round = False
    clock.t += 30
    vantage._log_failure(result(ErrorKind.CONNECT_REFUSED))
    assert events() == ["probe_failed"]
    clock.t += 30
    vantage._log_failure(result(ErrorKind.TIMEOUT))
    assert events() == ["probe_failed"]
    for _ in range(10):  # every 30 s for 5 minutes: nothing new to say
        clock.t += 30
        vantage._log_failure(result(ErrorKind.TIMEOUT))
    assert events() == []
    clock.t += FAILURE_REMINDER_SECONDS
    vantage._log_failure(result(ErrorKind.TIMEOUT))
    assert events() == ["probe_still_failing"]
    clock.t += 30
    vantage._log_failure(result(ErrorKind.CONNECT_REFUSED))  # a new way of failing: said
    assert events() == ["probe_failed"]
    clock.t += 30
    vantage._log_failure(result(None))
    assert events() == ["probe_recovered"]
    vantage._log_failure(result(None))
    assert events() == []  # successes are silent

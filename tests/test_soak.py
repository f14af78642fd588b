"""The soak of `probe serve` (benchmarks/soak.py), 2 minutes, correctness only (no timing, no
memory figure): faults switched on and off, the lab restarted, reloads by SIGHUP and POST, idle
and slow clients, scrapes; no stuck job, counters monotonic, every fault shown in the metrics,
every reload applied, every idle client closed, a clean exit. `-m 'not soak'` leaves it out;
the 30-minute run and its figures are in benchmarks/README.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow(120)
@pytest.mark.soak
def test_two_minute_soak(tmp_path: Path) -> None:
    soak = load_soak()
    lines: list[str] = []
    opts = soak.Options(
        duration=120.0,
        correctness_only=True,
        fault_every=13.0,
        reload_every=20.0,
        restart_every=55.0,
        clients=20,
        warmup=10.0,
        workdir=tmp_path / "soak",
        log=lines.append,
    )
    findings = soak.run_soak(opts)
    summary = soak.report(opts, findings, opts.duration)
    assert soak.problems(findings) == [], summary + "\n" + "\n".join(lines)
    # It did what it says: every kind of trouble happened, and was seen.
    assert findings.toggles >= 6 and findings.restarts >= 1, summary
    assert findings.reloads >= 4 and findings.reloads_by_post >= 2, summary
    assert len(findings.reflected) >= findings.toggles, summary
    assert findings.clients_closed > 0 and findings.scrapes > 100, summary
    assert findings.series_checked > 0, summary

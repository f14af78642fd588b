"""The routed path of `probe lab up --routed` (monitor/lab/routed.py) for a test: its
namespaces named uniquely (tests run in parallel), its ranges file in the test's folder, all
removed on exit."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.netns import Netns, require_root
from monitor.lab.routed import (
    AWS_EDGE_ROUTER,
    ENDPOINT,
    TRANSIT_ROUTER,
    VANTAGE_ROUTER,
    Fault,
    Routed,
    build,
    remove,
    write_ranges,
)
from monitor.lab.routed import set_fault as _set_fault

__all__ = [
    "AWS_EDGE_ROUTER",
    "ENDPOINT",
    "TRANSIT_ROUTER",
    "VANTAGE_ROUTER",
    "Fault",
    "Path4",
    "routed_path",
    "set_fault",
]


@dataclass(frozen=True, slots=True)
class Path4:
    routed: Routed
    ranges: Path
    """An ip-ranges.json holding the lab's AWS prefixes (region lab-1, service EC2)."""

    @property
    def vantage(self) -> Netns:
        return Netns(self.routed.vantage)

    @property
    def endpoint(self) -> Netns:
        return Netns(self.routed.endpoint)


@contextlib.contextmanager
def routed_path(folder: Path, fault: Fault = "none") -> Iterator[Path4]:
    require_root()
    routed = build(f"ds-{uuid.uuid4().hex[:8]}", fault)
    try:
        yield Path4(routed, write_ranges(folder / "ranges.json"))
    finally:
        remove(routed)


def set_fault(path: Path4, fault: Fault) -> None:
    _set_fault(path.routed, fault)

"""A probe kind of a test's own, registered for the length of a `with` block: how a test
adds a kind without changing the package (probes/kinds.py `register`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from probes import kinds
from probes.kinds import Kind


@contextmanager
def registered(kind: Kind) -> Iterator[Kind]:
    kinds.register(kind)
    try:
        yield kind
    finally:
        kinds.unregister(kind.name)

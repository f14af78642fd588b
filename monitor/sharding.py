"""Which shard of a vantage probes which target: rendezvous (highest random weight) hashing of
the target's name. Every probe and both families of a target stay in one process (parity needs
both); adding or removing a target moves only that target, adding a shard about 1/N of them.

Imports nothing of the project: the configuration, the commands and the serving layer all use
it, and the assignment of a name never depends on anything but the name and the shard count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SHARDS = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Shard:
    """This process's part of a vantage's targets: shard `index` of `count`, numbered from 0
    as Prometheus' hashmod and vmagent's -promscrape.cluster.memberNum are."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"the shard count must be 1 to {MAX_SHARDS}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index} of {self.count}: shards are numbered 0 to {self.count - 1}"
            )

    @property
    def sharded(self) -> bool:
        """More than one shard: the vantage's own series need a `shard` label."""
        return self.count > 1

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


UNSHARDED = Shard()


def _weight(name: str, index: int) -> int:
    # blake2b, not hash(): the same on every host, Python version and PYTHONHASHSEED.
    digest = hashlib.blake2b(f"{index}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(name: str, count: int) -> int:
    """The shard (0 to count-1) that probes the target called `name`."""
    if count == 1:
        return 0
    return max(range(count), key=lambda i: _weight(name, i))


def assignment(names: Iterable[str], count: int) -> dict[str, int]:
    """Every name with its shard, in the order given."""
    return {name: shard_of(name, count) for name in names}


def parse_shard(text: str) -> Shard:
    """'1/3' -> shard 1 of 3. Raises ValueError with a message for a person."""
    index, sep, count = text.strip().partition("/")
    if not (sep and index.isdigit() and count.isdigit()):
        raise ValueError(
            f"bad shard {text!r}: use INDEX/COUNT, e.g. 0/3 (shards are numbered from 0)"
        )
    try:
        return Shard(index=int(index), count=int(count))
    except ValueError as exc:
        raise ValueError(f"bad shard {text!r}: {exc}") from None

"""The vantage's garbage-collection policy: survivors of a full collection frozen, garbage
cycles through them collected by the complete pass, everything as before once stopped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Iterator

import pytest

from monitor.serve.gcpolicy import FreezeSurvivors


class Node:
    other: Node | None = None


@pytest.fixture
def policy() -> Iterator[FreezeSurvivors]:
    p = FreezeSurvivors()
    p.start()
    try:
        yield p
    finally:
        p.stop()


def test_a_full_collection_freezes_what_survives_it(policy: FreezeSurvivors) -> None:
    kept = Node()
    gc.collect()
    assert policy.freezes == 1
    assert not any(o is kept for o in gc.get_objects(2))  # out of every later full walk
    assert gc.get_freeze_count() > 0
    gc.collect(1)  # a younger collection leaves the frozen alone and freezes nothing
    assert policy.freezes == 1


def test_a_frozen_object_still_goes_with_its_last_reference(policy: FreezeSurvivors) -> None:
    node = Node()
    gc.collect()
    ref = weakref.ref(node)
    del node
    assert ref() is None  # how results, histograms and verdicts go: no collection needed


def test_a_cycle_through_a_frozen_object_waits_for_the_complete_pass(
    policy: FreezeSurvivors,
) -> None:
    a = Node()
    gc.collect()  # `a` is frozen
    b = Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is not None  # the cost of freezing: this cycle waits
    collected, seconds = policy.complete()
    assert ref() is None
    assert collected >= 2 and seconds >= 0
    assert gc.get_freeze_count() > 0  # the complete pass froze its survivors again


async def test_run_makes_the_complete_pass_every_interval() -> None:
    policy = FreezeSurvivors(complete_every=0.01)
    policy.start()
    try:
        a = Node()
        gc.collect()
        a.other = Node()
        a.other.other = a
        ref = weakref.ref(a)
        del a
        task = asyncio.create_task(policy.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if ref() is None:
                break
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert ref() is None
    finally:
        policy.stop()


def test_stop_puts_everything_back() -> None:
    policy = FreezeSurvivors()
    policy.start()
    gc.collect()
    policy.stop()
    assert gc.get_freeze_count() == 0
    assert policy._after_collection not in gc.callbacks
    gc.collect()
    assert policy.freezes == 1  # no longer called

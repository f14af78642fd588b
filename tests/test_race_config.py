"""Configuration of issue 11: `race` (top level, and per target key by key, falling back like
`timeout`), `targets[].icmp.sizes`, and `race` as a probe kind that is never a default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.config import Config, ConfigError, build, validate
from probes import kinds
from probes.base import RaceSpec


def load(doc: dict[str, Any]) -> Config:
    return build(validate(doc, "race.yml"), "race.yml", base_dir=Path("."))


def one(**target: Any) -> dict[str, Any]:
    return {"targets": [{"name": "t", "host": "t.example.com", **target}]}


def test_race_is_a_kind_but_not_a_default() -> None:
    assert "race" in kinds.names() and "race" not in kinds.default_names()
    # the defaults, known without importing the protocols, are what the declarations say
    assert kinds.default_names() == tuple(k.name for k in kinds.kinds() if k.default)
    assert load(one()).targets[0].probes == kinds.default_names()
    assert load(one(probes=["race", "tls"])).targets[0].probes == ("race", "tls")


def test_race_defaults_are_rfc_8305s() -> None:
    assert load(one()).targets[0].race == RaceSpec(
        resolution_delay=0.05, connection_attempt_delay=0.25
    )


def test_race_falls_back_key_by_key() -> None:
    cfg = load(
        {
            "race": {"resolution_delay": "20ms", "connection_attempt_delay": "300ms"},
            **one(race={"connection_attempt_delay": "100ms"}),
        }
    )
    assert cfg.targets[0].race == RaceSpec(resolution_delay=0.02, connection_attempt_delay=0.1)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"race": {"connection_attempt_delay": "5ms"}},
            "race.yml: race.connection_attempt_delay: 0.005 s: must be from 10ms to 2s "
            "(RFC 8305 section 5)",
        ),
        (
            one(race={"connection_attempt_delay": "3s"}),
            "race.yml: targets[0].race.connection_attempt_delay: 3 s: must be from 10ms to 2s "
            "(RFC 8305 section 5)",
        ),
        (
            {"race": {"resolution_delay": "soon"}},
            "race.yml: race.resolution_delay: bad duration 'soon': use e.g. 500ms, 5s, 1m",
        ),
        (one(race={"happy": True}), "race.yml: targets[0].race.happy: unknown key"),
        (
            one(icmp={"sizes": [1280, 20]}),
            "race.yml: targets[0].icmp.sizes[1]: 20: must be at least 48",
        ),
        (one(icmp={"interval": 1}), "race.yml: targets[0].icmp.interval: unknown key"),
    ],
)
def test_bad_values_name_their_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(doc)
    assert str(info.value) == message


def test_icmp_sizes_sorted_without_repeats() -> None:
    cfg = load(one(icmp={"sizes": [1500, 1280, 1500]}))
    assert cfg.targets[0].icmp.sizes == (1280, 1500)
    assert load(one()).targets[0].icmp.sizes == ()

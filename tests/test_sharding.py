"""Sharding a vantage's targets (monitor/sharding.py): a stable hash of the target name puts
every target on exactly one shard, adding targets moves none of the others, and `probe
targets`, `probe run` and `probe serve` (real processes against the lab) probe and say which
shard they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from serving import ROOT, serve

from monitor.config import ConfigError, load_config
from monitor.engine.schema import report_schema
from monitor.lab.loopback import NAMESERVERS, ZONE, Lab
from monitor.lab.run import lab_config
from monitor.serve.exporter import make_registry
from monitor.serve.state import Store
from monitor.sharding import UNSHARDED, Shard, assignment, parse_shard, shard_of

SCHEMA = report_schema()


def names(n: int, start: int = 0) -> list[str]:
    return [f"alb-{i:03d}.us-east-1" for i in range(start, start + n)]


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # a line per target
    )


def write_targets(path: Path, targets: list[str], **top: Any) -> Path:
    doc = {
        "vantage": "edge",
        "targets": [{"name": n, "host": f"{n}.example.com", "probes": ["tcp"]} for n in targets],
        **top,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


# --- the assignment ----------------------------------------------------------------------------


def test_five_targets_added_to_twenty_sharded_three_ways(tmp_path: Path) -> None:
    """The acceptance test of issue 14, through `probe targets` as an operator would run it."""
    old, new = names(20), names(5, start=20)

    def shards_of(config: Path) -> dict[int, list[str]]:
        out = {}
        for i in range(3):
            args = ("--config", str(config), "--shard", f"{i}/3", "--format", "json")
            proc = probe("targets", *args)
            assert proc.returncode == 0, proc.stderr
            out[i] = [row["target"] for row in json.loads(proc.stdout)]
            assert {row["shard"] for row in json.loads(proc.stdout)} <= {i}
        return out

    before = shards_of(write_targets(tmp_path / "20.yml", old))
    after = shards_of(write_targets(tmp_path / "25.yml", old + new))
    for shards, everything in ((before, old), (after, old + new)):
        placed = Counter(name for members in shards.values() for name in members)
        assert set(placed) == set(everything), "the union is the whole set"
        assert set(placed.values()) == {1}, "every target on exactly one shard"
        assert all(shards.values()), "no shard is empty"
    owner_before = {n: i for i, members in before.items() for n in members}
    owner_after = {n: i for i, members in after.items() for n in members}
    assert {n: owner_after[n] for n in old} == owner_before, "the 20 old targets keep their shard"


def test_the_assignment_is_the_hash_of_the_name_alone() -> None:
    # Pinned: a change here reshuffles every sharded deployment's targets at the next upgrade.
    assert assignment(["s3-us-east-1", "ec2-eu-west-1", "sts-global"], 3) == {
        "s3-us-east-1": 2,
        "ec2-eu-west-1": 1,
        "sts-global": 0,
    }
    # Not Python's hash(): the same in a child with another PYTHONHASHSEED.
    code = "from monitor.sharding import shard_of; print(shard_of('s3-us-east-1', 7))"
    child = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)},
    )
    assert int(child.stdout) == shard_of("s3-us-east-1", 7)


def test_shards_are_balanced_and_a_new_shard_takes_only_its_share() -> None:
    many = names(3000)
    three = assignment(many, 3)
    sizes = Counter(three.values())
    assert all(900 <= n <= 1100 for n in sizes.values()), sizes
    # Rendezvous hashing: going to 4 shards moves about a quarter, all of them to the new one.
    four = assignment(many, 4)
    moved = [n for n in many if four[n] != three[n]]
    assert {four[n] for n in moved} == {3}
    assert 600 <= len(moved) <= 900, len(moved)


def test_one_shard_is_everything() -> None:
    assert Shard(index=0, count=1) == UNSHARDED and not UNSHARDED.sharded
    assert all(UNSHARDED.owns(n) for n in names(50))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3/3", "bad shard '3/3': shard 3 of 3: shards are numbered 0 to 2"),
        ("1", "bad shard '1': use INDEX/COUNT, e.g. 0/3 (shards are numbered from 0)"),
        ("a/b", "bad shard 'a/b': use INDEX/COUNT, e.g. 0/3 (shards are numbered from 0)"),
        ("0/0", "bad shard '0/0': the shard count must be 1 to 1024, not 0"),
    ],
)
def test_bad_shard_arguments(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_shard(text)
    assert str(info.value) == message
    assert parse_shard(" 2/5 ") == Shard(index=2, count=5)


# --- configuration and `probe targets` ---------------------------------------------------------


def test_the_sharding_key(tmp_path: Path) -> None:
    cfg = load_config(write_targets(tmp_path / "ok.yml", names(3), sharding={"count": 4}))
    assert cfg.shard == Shard(index=0, count=4)
    assert load_config(write_targets(tmp_path / "none.yml", names(3))).shard == UNSHARDED
    for sharding, message in (
        (
            {"count": 3, "index": 3},
            "sharding.index: 3 is not a shard of 3: shards are numbered 0 to 2",
        ),
        ({"count": 0}, "sharding.count: 0: must be at least 1"),
        ({"count": 2, "size": 1}, "sharding.size: unknown key"),
    ):
        path = write_targets(tmp_path / "bad.yml", names(3), sharding=sharding)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"{path}: {message}"


def test_probe_targets_says_which_shard_and_all_shards_shows_the_assignment(
    tmp_path: Path,
) -> None:
    config = write_targets(tmp_path / "c.yml", names(12), sharding={"count": 3, "index": 1})
    mine = probe("targets", "--config", str(config))
    assert mine.returncode == 0, mine.stderr
    assert "(vantage edge, shard 1 of 3)" in mine.stdout
    listed = probe("targets", "--config", str(config), "--format", "json")
    rows = json.loads(listed.stdout)
    assert [r["target"] for r in rows] == [n for n in names(12) if shard_of(n, 3) == 1]

    # --shard overrides the config; --all-shards lists everything with its owner.
    every = probe("targets", "--config", str(config), "--shard", "0/2", "--all-shards")
    assert every.returncode == 0, every.stderr
    assert "(vantage edge, 2 shards)" in every.stdout and "shard" in every.stdout
    rows = json.loads(
        probe("targets", "--config", str(config), "--all-shards", "--format", "json").stdout
    )
    assert {r["target"]: r["shard"] for r in rows} == assignment(names(12), 3)

    # Unsharded: no shard column, no shard in the title.
    plain = probe("targets", "--config", str(write_targets(tmp_path / "p.yml", names(2))))
    assert "(vantage edge)" in plain.stdout and "shard" not in plain.stdout

    bad = probe("targets", "--config", str(config), "--shard", "5/3")
    assert bad.returncode == 2 and "shards are numbered 0 to 2" in bad.stderr


# --- the exporter ------------------------------------------------------------------------------


def samples(store: Store) -> dict[str, list[dict[str, str]]]:
    from prometheus_client import generate_latest

    out: dict[str, list[dict[str, str]]] = {}
    text = generate_latest(make_registry(store)).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(dict(s.labels))
    return out


def test_shard_info_and_the_vantage_series_of_a_shard() -> None:
    sharded = samples(Store(vantage="edge", site="dc1", shard=1, shards=2))
    assert sharded["dualstack_shard_info"] == [{"vantage": "edge", "shard": "1", "shards": "2"}]
    # Each shard's own series are its own: two shards never write the same series.
    for name in (
        "dualstack_build_info",
        "dualstack_scheduler_jobs",
        "dualstack_config_last_reload_successful",
        "dualstack_scheduler_lag_seconds_count",
        "dualstack_scheduler_job_failures_total",
    ):
        assert all(labels["shard"] == "1" for labels in sharded[name]), name

    plain = samples(Store(vantage="edge", site="dc1"))
    assert plain["dualstack_shard_info"] == [{"vantage": "edge", "shard": "0", "shards": "1"}]
    [build] = plain["dualstack_build_info"]
    assert "shard" not in build  # unsharded series are what they always were


# --- real processes against the lab ----------------------------------------------------------


def lab_file(lab: Lab, path: Path, **top: Any) -> Path:
    doc = {**lab_config(lab, vantage="lab-shards", interval="2s"), **top}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_probe_serve_shards_split_the_lab_and_say_so(lab_session: Lab, tmp_path: Path) -> None:
    config = lab_file(lab_session, tmp_path / "lab.yml", sharding={"count": 2, "index": 0})
    everything = {t.name for t in load_config(config).targets}
    everything |= {f"route53-ns-{ZONE}-{n}" for n in range(1, len(NAMESERVERS) + 1)}
    seen: dict[int, set[str]] = {}
    with serve(config) as zero, serve(config, "--shard", "1/2") as one:
        for index, served in ((0, zero), (1, one)):
            served.wait_ready(timeout=60)
            status, body = served.get("/api/v1/results")
            assert status == 200
            doc = json.loads(body)
            jsonschema.validate(doc, SCHEMA)
            assert doc["shard"] == {"index": index, "count": 2}
            seen[index] = {r["target"] for r in doc["results"]}
            assert {p["target"] for p in doc["parity"]} == seen[index]
            page = served.get("/")[1]
            assert f'<b id="shard">{index} of 2</b>' in page
            metrics = served.get("/metrics")[1]
            assert (
                f'dualstack_shard_info{{shard="{index}",shards="2",vantage="lab-shards"}} 1.0'
                in metrics
            )
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == everything  # the zone's name servers are split as well
    assert all(shard_of(name, 2) == i for i, members in seen.items() for name in members)


def test_probe_run_probes_its_shard_only(lab_session: Lab, tmp_path: Path) -> None:
    config = lab_file(lab_session, tmp_path / "lab.yml")
    run = probe(
        "run", "--config", str(config), "--shard", "1/3", "--probe", "dns", "--format", "json"
    )
    assert run.returncode in (0, 1), run.stderr
    doc = json.loads(run.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["shard"] == {"index": 1, "count": 3}
    targets = {r["target"] for r in doc["results"]}
    assert targets and all(shard_of(t, 3) == 1 for t in targets)
    table = probe("run", "--config", str(config), "--shard", "1/3", "--probe", "dns")
    assert "shard 1 of 3" in table.stdout

"""The compose stack's data path, natively on loopback (no Docker engine here): the services'
own commands and the configuration files docker-compose.yml mounts, with compose's service
addresses swapped for kernel-chosen loopback ports.

Two vantages probe the lab. The central Prometheus (configs/prometheus/prometheus.yml, its
rules, the flags of the `prometheus` service: no lifecycle API, no receiver) scrapes vantage-a
directly; an agent-mode Prometheus (configs/compose/prometheus-agent.yml and the flags of the
`prometheus-agent` service) scrapes vantage-b, as it would a vantage behind NAT, and
remote-writes to `prometheus-receiver` (its config and flags, the receiver among them), from
which the central one federates: it then holds the series of both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from promstack import Prometheus, free_port, http_json, prometheus
from serving import serve
from test_compose import SERVICES, flags, healthcheck_code, host_path, stages

from monitor.lab.loopback import LabFacts
from monitor.lab.run import write_config
from monitor.web.server import parse_listen

# Flags the harness sets itself: where the config and data live, where to listen.
HARNESS_FLAGS = (
    "--config.file",
    "--storage.tsdb.path",
    "--storage.agent.path",
    "--web.listen-address",
    "--web.enable-lifecycle",
)
# Scrape-job keys that need no translation to run on loopback (service discovery would).
MAPPABLE_JOB_KEYS = {
    "job_name",
    "static_configs",
    "metrics_path",
    "scheme",
    "params",
    "honor_labels",
    "honor_timestamps",
    "relabel_configs",
    "metric_relabel_configs",
}


def compose_flags(service: str) -> list[str]:
    return [a for a in SERVICES[service]["command"] if not a.startswith(HARNESS_FLAGS)]


def mounted_config(service: str) -> Path:
    path = host_path(SERVICES[service], flags(SERVICES[service]["command"])["--config.file"])
    assert path is not None and path.is_file(), f"{service}: no mounted config"
    return path


def native_config(source: Path, dest: Path, addresses: dict[str, str]) -> list[str]:
    """Copy a compose-side Prometheus config (and the rule files beside it) to `dest`, with
    compose addresses mapped to loopback ones: unmapped scrape targets and Alertmanagers are
    dropped (no name ever reaches the resolver), intervals shortened. Returns what was dropped."""
    shutil.copytree(source.parent, dest.parent, dirs_exist_ok=True)
    doc: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    doc.setdefault("global", {}).update(
        scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s"
    )
    dropped: list[str] = []
    jobs = []
    for job in doc.get("scrape_configs", []):
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        for static in job.get("static_configs", []):
            dropped += [t for t in static["targets"] if t not in addresses]
            static["targets"] = [addresses[t] for t in static["targets"] if t in addresses]
        job["static_configs"] = [s for s in job.get("static_configs", []) if s["targets"]]
        unknown = set(job) - MAPPABLE_JOB_KEYS
        assert not unknown, f"{source}: job {job['job_name']}: {unknown} not mapped here"
        if job["static_configs"]:
            jobs.append(job)
    doc["scrape_configs"] = jobs
    if doc.pop("alerting", None):
        dropped.append("alerting")
    for rw in doc.get("remote_write", []):
        url = urlsplit(rw["url"])
        rw["url"] = urlunsplit(url._replace(netloc=addresses[url.netloc]))
        rw.setdefault("queue_config", {})["batch_send_deadline"] = "1s"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dropped


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}  # keeps the network guard's PYTHONPATH


def push_refused(url: str) -> bool:
    """A remote-write request to `url` is not accepted (no receiver there)."""
    req = urllib.request.Request(
        url + "/api/v1/write",
        data=b"not snappy",
        method="POST",
        headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10):
            return False
    except urllib.error.HTTPError as exc:
        return exc.code == 404
    return False


def vantages_seen(prom: Prometheus) -> dict[str, float]:
    rows = prom.query("count by (vantage) (dualstack_probe_success)")
    return {r["metric"]["vantage"]: float(r["value"][1]) for r in rows}


def wait_for_vantages(prom: Prometheus, names: set[str], timeout: float = 40) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        seen = vantages_seen(prom)
        if names <= set(seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"central Prometheus has {seen}, wanted {names}\n{prom.log.read_text()}")


def test_compose_stack_natively(lab_session: LabFacts, tmp_path: Path) -> None:
    agent_flags = compose_flags("prometheus-agent")
    assert "--enable-feature=agent" in agent_flags
    central_flags = compose_flags("prometheus")
    assert "--web.enable-remote-write-receiver" not in central_flags
    receiver_flags = compose_flags("prometheus-receiver")
    assert "--web.enable-remote-write-receiver" in receiver_flags

    names = {s: flags(SERVICES[s]["command"])["--vantage"] for s in ("vantage-a", "vantage-b")}
    cfg_a = write_config(lab_session, tmp_path / "a.yml", vantage=names["vantage-a"], interval="2s")
    cfg_b = write_config(lab_session, tmp_path / "b.yml", vantage=names["vantage-b"], interval="2s")
    with (
        serve(cfg_a, "--vantage", names["vantage-a"]) as vantage_a,
        serve(cfg_b, "--vantage", names["vantage-b"]) as vantage_b,
    ):
        a_addr, b_addr = f"127.0.0.1:{vantage_a.port}", f"127.0.0.1:{vantage_b.port}"

        # The image's HEALTHCHECK, run as Docker would, against a live vantage and a dead port.
        check = [sys.executable, "-c", healthcheck_code()]
        live = subprocess.run(check, env=env(HEALTHCHECK_PORT=str(vantage_a.port)), check=False)
        dead = subprocess.run(check, env=env(HEALTHCHECK_PORT=str(free_port())), check=False)
        assert (live.returncode, dead.returncode) == (0, 1)

        receiver_cfg = tmp_path / "receiver" / "receiver.yml"
        assert native_config(mounted_config("prometheus-receiver"), receiver_cfg, {}) == []
        with prometheus(receiver_cfg, tmp_path, *receiver_flags) as receiver:
            r_addr = f"127.0.0.1:{receiver.port}"
            central_cfg = tmp_path / "central" / "prometheus.yml"
            dropped = native_config(
                mounted_config("prometheus"),
                central_cfg,
                {"vantage-a:9851": a_addr, "prometheus-receiver:9090": r_addr},
            )
            assert "vantage-b:9851" in dropped  # vantage-b reaches the central one by push only
            agent_cfg = tmp_path / "agent" / "prometheus-agent.yml"
            agent_targets = {
                t
                for job in yaml.safe_load(mounted_config("prometheus-agent").read_text())[
                    "scrape_configs"
                ]
                for s in job["static_configs"]
                for t in s["targets"]
            }
            mapping = {t: b_addr for t in agent_targets}
            mapping["prometheus-receiver:9090"] = r_addr
            assert native_config(mounted_config("prometheus-agent"), agent_cfg, mapping) == []
            with (
                prometheus(central_cfg, tmp_path, *central_flags) as central,
                prometheus(agent_cfg, tmp_path, *agent_flags),
            ):
                seen = wait_for_vantages(central, set(names.values()))
                assert set(seen) == {"vantage-a", "vantage-b"}

                # vantage-b's series came by remote write and federation: the central one
                # never scraped it, and they keep the labels the agent gave them.
                active = http_json(f"{central.url}/api/v1/targets")["data"]["activeTargets"]
                assert {t["labels"]["instance"] for t in active} == {a_addr, r_addr}
                pushed = central.query('dualstack_probe_success{vantage="vantage-b"}')
                assert {s["metric"]["instance"] for s in pushed} == {b_addr}
                # The receiver cannot be pushed through the central one's port.
                assert push_refused(central.url)
                # Both vantages see IPv6 (the lab's ::1): the self-check made it through too.
                ipv6 = central.wait_for("dualstack_vantage_ipv6_available == 1", min_results=2)
                assert {r["metric"]["vantage"] for r in ipv6} == set(names.values())
                # The mounted rule files load and evaluate without error.
                groups = central.get("/api/v1/rules")["data"]["groups"]
                assert groups, "no rule group loaded from rules/*.yml"
                broken = [
                    (r["name"], r.get("lastError"))
                    for g in groups
                    for r in g["rules"]
                    if r.get("health") == "err"
                ]
                assert broken == []


def test_the_image_listen_address_takes_both_families(tmp_path: Path) -> None:
    """`probe serve --help` promises `[::]:9851` is "every address, both families"."""
    cmd = json.loads(dict(stages()[-1][1:])["CMD"])
    listen = cmd[cmd.index("--listen") + 1]
    assert parse_listen(listen)[0] == "::"
    config = tmp_path / "empty.yml"
    config.write_text("vantage: any-address\ntargets: []\n")
    with serve(config, "--listen", listen.replace(":9851", ":0")) as served:
        for host in ("127.0.0.1", "[::1]"):
            with urllib.request.urlopen(f"http://{host}:{served.port}/healthz", timeout=5) as r:
                assert r.status == 200

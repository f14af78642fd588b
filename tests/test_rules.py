"""The Prometheus rules and the Alertmanager configuration, checked with the real tools.

`promtool check rules` / `check config` / `test rules` (configs/prometheus/) and
`amtool check-config` (configs/alertmanager.yml) must pass; the inhibit rules are exercised
on a real Alertmanager on loopback. The conventions are checked from the YAML: no rule depends
on a scrape job name, every alert has a severity, a summary, a description naming what it is
about, a runbook_url to an existing section of docs/runbook.md and a dashboard_url to an
existing dashboard, carries its site and no job or verdict label, keeps firing (hysteresis) at
least as long as what it inhibits, and is seen firing in at least one promtool test. Routing is
checked with `amtool config routes test`. A missing promtool, amtool or alertmanager fails the
tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from promstack import alertmanager

from monitor.engine.parity import VERDICTS
from monitor.engine.vantage import MIN_JUDGED_TARGETS
from probes import kinds

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "configs" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
AM_CONFIG = ROOT / "configs" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/dualstack-monitor/dualstack-monitor/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning", "info"}
DASHBOARDS = ROOT / "grafana" / "dashboards"
GRAFANA_URL = "http://localhost:3000/d/"
# What a per-target alert's description must name.
IDENTITY = ("target", "probe", "region", "vantage")
# The alerts about one target (they carry a `target` label).
PER_TARGET = {
    "DualstackIPv6Down",
    "DualstackIPv6DownMultiVantage",
    "DualstackIPv6Unreliable",
    "DualstackIPv6RecordMissing",
    "DualstackIPv6Mismatch",
    "DualstackIPv6LatencyRegression",
    "DualstackTLSCertExpiringSoon",
}
# About a vantage (`vantage` and `site` labels) or a whole site (`site` only).
VANTAGE_LEVEL = {
    "DualstackVantageCannotProbe",
    "DualstackVantageIPv6Lost",
    "DualstackVantageIPv6Degraded",
    "DualstackVantageDown",
    "DualstackProbesStale",
    "DualstackConfigReloadFailed",
}
SITE_LEVEL = {"DualstackIPv6DownEverywhere"}
# About the monitoring itself (`instance` says which Prometheus or Alertmanager).
META = {"DualstackRuleEvaluationFailures", "DualstackNotificationsFailing"}
WATCHDOG = "DualstackWatchdog"
ALERTS = PER_TARGET | VANTAGE_LEVEL | SITE_LEVEL | META | {WATCHDOG}
# The guard every per-target IPv6 alert has in its expression.
IPV6_GUARD = re.compile(
    r"unless\s+on\s*\(\s*vantage\s*\)\s*\(\s*last_over_time\(\s*"
    r"dualstack_vantage_ipv6_available\[\w+\]\s*\)\s*==\s*0\s*\)"
)
JOB_MATCHER = re.compile(r"\bjob\s*(=~|!~|!=|=)")


def tool(*names: str) -> str:
    """The path of the first of `names` on PATH; fails (never skips) when there is none."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"{' or '.join(names)} not found on PATH (Debian: apt-get install prometheus "
        "prometheus-alertmanager)",
        pytrace=False,
    )


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def output(p: subprocess.CompletedProcess[str]) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    """Every rule of every rule file, with the file it came from."""
    out: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            out.extend({**rule, "file": path.name} for rule in group["rules"])
    return out


def alerts() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for rule in rules():
        if "alert" in rule:
            assert rule["alert"] not in found, f"alert {rule['alert']} defined twice"
            found[rule["alert"]] = rule
    return found


def alert_rule_tests() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, case)
        for path in RULE_TESTS
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test") or []
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = re.sub(r"```.*?```", "", RUNBOOK.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def alternatives(matcher: str) -> set[str]:
    """The alert names an `alertname="A"` or `alertname=~"A|B"` matcher selects."""
    m = re.fullmatch(r'alertname(=~|=)"([^"]*)"', matcher.strip())
    assert m, f"expected an alertname matcher, got {matcher!r}"
    return set(m.group(2).split("|")) if m.group(1) == "=~" else {m.group(2)}


# --- the files are there ---------------------------------------------------------------------


def test_the_files_exist() -> None:
    assert PROM_CONFIG.is_file()
    assert AM_CONFIG.is_file()
    assert RUNBOOK.is_file()
    names = {p.name for p in RULE_FILES}
    assert names >= {"dualstack-alerts.yml", "dualstack-recording.yml"}, names
    assert len(RULE_TESTS) >= 2, "no promtool test files"


# --- the real tools ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    p = run(tool("promtool"), "check", "rules", path)
    assert p.returncode == 0, output(p)
    assert "SUCCESS" in p.stdout, output(p)
    assert "warn" not in (p.stdout + p.stderr).lower(), output(p)


def test_promtool_check_config() -> None:
    p = run(tool("promtool"), "check", "config", PROM_CONFIG)
    assert p.returncode == 0, output(p)
    # The relative glob `rules/*.yml` found every rule file (relative to the config file).
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in p.stdout, output(p)
    assert "warn" not in (p.stdout + p.stderr).lower(), output(p)


@pytest.mark.slow(40)
@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    p = run(tool("promtool"), "test", "rules", path)
    assert p.returncode == 0, output(p)
    assert "SUCCESS" in p.stdout, output(p)


def test_amtool_check_config() -> None:
    p = run(tool("amtool"), "check-config", AM_CONFIG)
    assert p.returncode == 0, output(p)
    assert "SUCCESS" in p.stdout, output(p)


# --- the Prometheus configuration --------------------------------------------------------------


def test_prometheus_config() -> None:
    cfg = load(PROM_CONFIG)
    assert cfg["global"]["scrape_interval"] == "15s"
    assert cfg["rule_files"] == ["rules/*.yml"]
    ams = cfg["alerting"]["alertmanagers"]
    assert [t for am in ams for sc in am["static_configs"] for t in sc["targets"]] == [
        "alertmanager:9093"
    ]
    jobs = {
        j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
        for j in cfg["scrape_configs"]
    }
    # The vantages, the watchers (their metrics feed the meta alerts), and the pushed vantages
    # it federates from the receiver (issue 13: the remote-write receiver is a service of its
    # own, on the internal network only).
    assert jobs == {
        "dualstack": ["vantage-a:9851", "vantage-b:9851"],
        "prometheus": ["prometheus:9090"],
        "alertmanager": ["alertmanager:9093"],
        "dualstack-pushed": ["prometheus-receiver:9090"],
    }
    pushed = next(j for j in cfg["scrape_configs"] if j["job_name"] == "dualstack-pushed")
    assert pushed["metrics_path"] == "/federate" and pushed["honor_labels"] is True
    # A `vantage` target label would rename the exporter's own to `exported_vantage`.
    for job in cfg["scrape_configs"]:
        assert all("vantage" not in (sc.get("labels") or {}) for sc in job["static_configs"])


# --- conventions of the rules ------------------------------------------------------------------


def test_no_rule_depends_on_a_scrape_job_name() -> None:
    for rule in rules():
        name = rule.get("alert") or rule.get("record")
        assert not JOB_MATCHER.search(rule["expr"]), f"{name}: matches on a job label"
        assert "absent(up" not in rule["expr"].replace(" ", ""), f"{name}: absent(up...)"


def test_recording_rules_follow_the_naming_convention() -> None:
    for rule in rules():
        if "record" in rule:
            assert re.fullmatch(r"dualstack:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_every_alert_has_severity_summary_description_runbook() -> None:
    anchors = runbook_anchors()
    found = alerts()
    assert set(found) == ALERTS
    for name, rule in found.items():
        severity = rule["labels"]["severity"]
        assert severity in SEVERITIES or (name == WATCHDOG and severity == "none"), name
        ann = rule["annotations"]
        assert "runbook" not in ann, f"{name}: the annotation is runbook_url"
        assert set(ann) >= {"summary", "description", "runbook_url"}, name
        assert ann["summary"].strip() and ann["description"].strip(), name
        url, _, anchor = ann["runbook_url"].partition("#")
        assert f"{url}#" == RUNBOOK_URL, f"{name}: runbook_url {ann['runbook_url']}"
        assert anchor == name.lower(), f"{name}: runbook anchor #{anchor}"
        assert anchor in anchors, f"{name}: docs/runbook.md has no section #{anchor}"


def test_dashboard_urls_open_the_right_dashboard_with_its_variables() -> None:
    """dashboard_url: an existing dashboard, with the alert's vantage and target (or the site's
    vantages) filled into the dashboard's template variables."""
    uids = {json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")}
    for name, rule in alerts().items():
        url = rule["annotations"].get("dashboard_url")
        if name in META or name == WATCHDOG:
            assert url is None, f"{name}: no dashboard is about the monitoring itself"
            continue
        assert url and url.startswith(GRAFANA_URL), name
        uid = url.removeprefix(GRAFANA_URL).split("/")[0]
        assert uid in uids, f"{name}: no dashboard {uid}"
        wants = {
            "vantage": "{{ $labels.vantage | urlquery }}",
            "target": "{{ $labels.target | urlquery }}",
        }
        if name in PER_TARGET and name != "DualstackIPv6DownMultiVantage":
            assert uid == "dualstack-endpoint", name
            assert f"var-vantage={wants['vantage']}" in url, name
            assert f"var-target={wants['target']}" in url, name
        elif name == "DualstackIPv6DownMultiVantage":
            assert uid == "dualstack-endpoint" and url.endswith(f"var-target={wants['target']}")
        elif name in VANTAGE_LEVEL:
            assert uid == "dualstack-vantage", name
            assert url.endswith(f"var-vantage={wants['vantage']}"), name
        else:  # the site: every vantage of it, from a query
            assert "var-vantage={{ $s.Labels.vantage | urlquery }}" in url, name


EVENTS = (
    "/api/v1/events?target={{ $labels.target | urlquery }}&probe={{ $labels.probe | urlquery }}"
)


def test_per_target_alerts_link_the_vantages_events() -> None:
    """evidence_url: the vantage's own events for the target and probe, under the external URL
    it exports (dualstack_vantage_info), read from the process that exports the target's
    verdicts. Only per-target alerts have one (promtool tests check each rendered URL)."""
    for name, rule in alerts().items():
        url = rule["annotations"].get("evidence_url")
        if name not in PER_TARGET:
            assert url is None, name
            continue
        assert url and url.endswith(f"{{{{ end }}}}{EVENTS}"), name
        assert 'label "external_url"' in url and "and on(instance) dualstack_parity{" in url, name
        assert url.startswith("{{ with printf "), name  # nothing before the vantage's URL


def test_severities() -> None:
    found = alerts()
    assert found["DualstackIPv6DownMultiVantage"]["labels"]["severity"] == "critical"
    assert found["DualstackIPv6Down"]["labels"]["severity"] == "warning"
    assert found["DualstackIPv6Unreliable"]["labels"]["severity"] == "warning"
    assert found["DualstackIPv6DownEverywhere"]["labels"]["severity"] == "warning"
    assert found[WATCHDOG]["labels"]["severity"] == "none"
    # icmp never pages: the only critical per-target alert leaves it out.
    assert 'probe!="icmp"' in found["DualstackIPv6DownMultiVantage"]["expr"]


def test_alert_labels_mean_something() -> None:
    """From what the promtool tests expect: no `job` or `verdict` on any alert, `instance` only
    on the alerts about Prometheus or Alertmanager, `site` on everything seen from a vantage."""
    for path, case in alert_rule_tests():
        name = case["alertname"]
        for exp in case.get("exp_alerts") or []:
            labels = set(exp.get("exp_labels") or {})
            where = f"{path.name}: {name}"
            assert not labels & {"job", "verdict"}, where
            assert ("instance" in labels) == (name in META), where
            if name in VANTAGE_LEVEL | SITE_LEVEL or "vantage" in labels:
                assert "site" in labels, f"{where}: no site"
            if name in SITE_LEVEL:
                assert labels == {"severity", "site"}, where


def keep_firing(rule: dict[str, Any]) -> float:
    return duration(rule.get("keep_firing_for", "0s"))


def duration(text: str) -> float:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return float(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", text)))


def test_inhibitors_keep_firing_at_least_as_long_as_what_they_mute() -> None:
    """keep_firing_for on every per-target alert; an inhibitor fires no later (`for:`) and keeps
    firing no shorter (`keep_firing_for`) than each alert it mutes, so nothing muted leaks out
    at either end of an incident."""
    found = alerts()
    for name in PER_TARGET:
        assert keep_firing(found[name]) > 0, f"{name}: no keep_firing_for"
    for rule in load(AM_CONFIG)["inhibit_rules"]:
        [source] = [alternatives(m) for m in rule["source_matchers"]]
        [targets] = [alternatives(m) for m in rule["target_matchers"]]
        for src in source:
            assert keep_firing(found[src]) > 0, f"{src} inhibits but has no keep_firing_for"
            for tgt in targets:
                assert keep_firing(found[src]) >= keep_firing(found[tgt]), (src, tgt)
                assert duration(found[src]["for"]) <= duration(found[tgt]["for"]), (src, tgt)


def test_per_target_descriptions_name_target_probe_region_vantage() -> None:
    found = alerts()
    # Which alerts carry a target label, from what the promtool tests expect them to carry.
    labelled: dict[str, set[str]] = {}
    for _, case in alert_rule_tests():
        for exp in case.get("exp_alerts") or []:
            labelled.setdefault(case["alertname"], set()).update(exp.get("exp_labels") or {})
    assert {name for name, labels in labelled.items() if "target" in labels} == PER_TARGET
    for name in PER_TARGET:
        text = found[name]["annotations"]["description"]
        for label in IDENTITY:
            if label in labelled[name]:
                assert f"$labels.{label}" in text, f"{name}: description lacks $labels.{label}"
            else:  # the multi-vantage alert lists the vantages from a query
                assert f".Labels.{label}" in text, f"{name}: description does not name {label}"
    for name in VANTAGE_LEVEL:
        text = found[name]["annotations"]["description"]
        assert "$labels.vantage" in text and "$labels.site" in text, name
    for name in SITE_LEVEL:
        assert "$labels.site" in found[name]["annotations"]["description"], name
    for name in META:
        assert "$labels.instance" in found[name]["annotations"]["description"], name


def test_per_target_ipv6_alerts_are_guarded_on_the_vantage_self_check() -> None:
    found = alerts()
    guarded = {name for name, rule in found.items() if IPV6_GUARD.search(rule["expr"])}
    assert guarded == {
        "DualstackIPv6Down",
        "DualstackIPv6Unreliable",
        "DualstackIPv6RecordMissing",
        "DualstackIPv6Mismatch",
        "DualstackIPv6LatencyRegression",
        "DualstackVantageIPv6Degraded",
    }
    # The multi-vantage alert is guarded in the witnesses it counts.
    [count] = [r for r in rules() if r.get("record") == "dualstack:vantage_target_ipv6_failed:bool"]
    assert IPV6_GUARD.search(count["expr"])


def recorded(name: str) -> str:
    [rule] = [r for r in rules() if r.get("record") == name]
    return " ".join(rule["expr"].split())


def test_a_vantage_or_site_is_blamed_on_its_own_evidence_only() -> None:
    """A vantage counts as down (and its site, when all its vantages are) only on its
    self-check or when no target works over IPv6 there: one target that does is a veto, so
    endpoints failing at a working vantage (an AWS incident) never make a site or vantage alert
    that mutes them. The same veto guards the degraded vantage."""
    veto = "unless on(vantage) dualstack:vantage_ipv6_working_targets:count > 0"
    down = recorded("dualstack:vantage_ipv6_down:bool")
    assert veto in down and "dualstack_vantage_ipv6_available" in down
    assert "ratio" not in down, "a share of failing targets is no evidence against the site"
    assert veto in recorded("dualstack:vantage_ipv6_degraded:ratio")
    # As many targets as the vantage's own self-check needs before it blames itself.
    m = re.search(r"dualstack:vantage_ipv6_failing_targets:count >= (\d+)", down)
    assert m and int(m.group(1)) == MIN_JUDGED_TARGETS, down
    # Both counts look at transport probes only, as the self-check does: every probe kind but
    # dns (a host's dns probe is an A and an AAAA lookup, not IPv6 packets getting through).
    assert {k.name for k in kinds.kinds() if not k.transport} == {"dns"}
    for name in ("failing", "working"):
        assert 'probe!="dns"' in recorded(f"dualstack:vantage_ipv6_{name}_targets:count"), name
    # Every verdict but these says the IPv6 probe succeeded.
    working = recorded("dualstack:vantage_ipv6_working_targets:count")
    [verdicts] = re.findall(r'verdict=~"([^"]+)"', working)
    failed = {"ipv6_failed", "both_failed", "ipv6_missing", "skipped"}
    assert set(verdicts.split("|")) == {str(v) for v in VERDICTS} - failed
    found = alerts()
    assert "dualstack:site_ipv6_down:bool" in found["DualstackIPv6DownEverywhere"]["expr"]
    assert "dualstack:vantage_ipv6_degraded:ratio" in found["DualstackVantageIPv6Degraded"]["expr"]


def test_only_evidence_of_the_site_or_vantage_inhibits() -> None:
    """The inhibitors: the site and vantage alerts built on their own evidence, and the
    critical multi-site alert, which mutes only the warnings of its own target and probe."""
    cfg = load(AM_CONFIG)
    equal = {
        src: tuple(rule["equal"])
        for rule in cfg["inhibit_rules"]
        for m in rule["source_matchers"]
        for src in alternatives(m)
    }
    assert equal == {
        "DualstackIPv6DownEverywhere": ("site",),
        "DualstackVantageIPv6Lost": ("vantage",),
        "DualstackVantageIPv6Degraded": ("vantage",),
        "DualstackVantageCannotProbe": ("vantage",),
        "DualstackIPv6DownMultiVantage": ("target", "probe"),
    }


def test_every_alert_fires_in_a_promtool_test() -> None:
    cases = alert_rule_tests()
    names = set(alerts())
    tested = {case["alertname"] for _, case in cases}
    assert tested <= names, f"tests name unknown alerts: {tested - names}"
    firing = {case["alertname"] for _, case in cases if case.get("exp_alerts")}
    assert names <= firing, f"never seen firing in a test: {sorted(names - firing)}"


def test_rule_tests_load_every_rule_file() -> None:
    for path in RULE_TESTS:
        loaded = {(path.parent / f).resolve() for f in load(path)["rule_files"]}
        assert loaded == {p.resolve() for p in RULE_FILES}, path.name


# --- the runbook -------------------------------------------------------------------------------


def test_runbook_has_a_section_per_alert_and_no_other_alert_sections() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (Dualstack\w+)$", text, re.MULTILINE))
    assert sections == set(alerts())


def test_runbook_links_resolve() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    anchors = runbook_anchors()
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        file_part, _, anchor = target.partition("#")
        path = (RUNBOOK.parent / file_part).resolve() if file_part else RUNBOOK
        assert path.exists(), f"runbook links to missing {file_part}"
        if anchor and path == RUNBOOK:
            assert anchor in anchors, f"runbook: no heading for #{anchor}"
        elif anchor and path.suffix == ".md":
            body = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
            heads = {slug(h) for h in re.findall(r"^#+ (.+)$", body, re.MULTILINE)}
            assert anchor in heads, f"runbook: {file_part} has no heading for #{anchor}"


# --- the Alertmanager configuration ------------------------------------------------------------


def test_alertmanager_names_only_existing_alerts() -> None:
    cfg = load(AM_CONFIG)
    names = set(alerts())
    matchers = [
        m for r in cfg["inhibit_rules"] for m in r["source_matchers"] + r["target_matchers"]
    ]
    matchers += [m for r in cfg["route"].get("routes", []) for m in r.get("matchers", [])]
    for m in matchers:
        if m.startswith("alertname"):
            assert alternatives(m) <= names, m
    assert cfg["route"]["receiver"] == "ticket"
    assert cfg["route"]["group_by"] == ["alertname", "region"]
    assert {r["name"] for r in cfg["receivers"]} == {"pager", "ticket", "deadman"}
    # Vantage- and site-level alerts are grouped per site.
    [by_site] = [r for r in cfg["route"]["routes"] if r.get("group_by") == ["site"]]
    [selector] = by_site["matchers"]
    assert alternatives(selector) == VANTAGE_LEVEL | SITE_LEVEL


def routed(labels: dict[str, str]) -> set[str]:
    """The receivers `amtool config routes test` picks for an alert with these labels."""
    p = run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={AM_CONFIG}",
        *(f"{k}={v}" for k, v in labels.items()),
    )
    assert p.returncode == 0, output(p)
    return set(p.stdout.strip().split(","))


def test_routing_pager_ticket_deadman() -> None:
    """Every alert, with its own severity, reaches the receiver its severity says; the
    Watchdog only the dead man's switch; an icmp probe never pages."""
    for name, rule in alerts().items():
        severity = rule["labels"]["severity"]
        labels = {"alertname": name, "severity": severity, "probe": "tls", "site": "s"}
        got = routed(labels)
        if name == WATCHDOG:
            assert got == {"deadman"}, name
        elif name == "DualstackNotificationsFailing":
            assert got == {"ticket", "pager"}, name  # whichever still works
        elif severity == "critical":
            assert got == {"pager"}, name
        else:
            assert got == {"ticket"}, name
        if severity == "critical":
            assert "pager" not in routed({**labels, "probe": "icmp"}), f"{name}: icmp pages"


def test_vantage_ipv6_lost_inhibits_every_guarded_alert_of_that_vantage() -> None:
    cfg = load(AM_CONFIG)
    [rule] = [
        r
        for r in cfg["inhibit_rules"]
        if r["source_matchers"] == ['alertname="DualstackVantageIPv6Lost"']
    ]
    assert rule["equal"] == ["vantage"]
    [target] = rule["target_matchers"]
    guarded = {n for n, r in alerts().items() if IPV6_GUARD.search(r["expr"])}
    assert alternatives(target) == guarded


def test_site_down_everywhere_inhibits_the_sites_ipv6_alerts() -> None:
    cfg = load(AM_CONFIG)
    [rule] = [
        r
        for r in cfg["inhibit_rules"]
        if r["source_matchers"] == ['alertname="DualstackIPv6DownEverywhere"']
    ]
    assert rule["equal"] == ["site"]
    [target] = rule["target_matchers"]
    guarded = {n for n, r in alerts().items() if IPV6_GUARD.search(r["expr"])}
    assert alternatives(target) == guarded | {"DualstackVantageIPv6Lost"}


def _alert(name: str, severity: str = "warning", **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": severity, **labels}}


def test_alertmanager_inhibits(tmp_path: Path) -> None:
    """A real Alertmanager with configs/alertmanager.yml on loopback: which alerts are muted."""
    tool("prometheus-alertmanager", "alertmanager")  # fails, not skips, when it is missing
    a, b, c, d = (f"vantage-{x}" for x in "abcd")
    e, f = "vantage-e", "vantage-f"  # both at site "home", whose IPv6 is down everywhere
    g = "vantage-g"  # nothing works from it, over either family
    site = {a: "a", b: "b", c: "c", d: "d", e: "home", f: "home", g: "g"}
    target = {"service": "s3", "region": "us-east-1", "target": "s3-us-east-1", "probe": "tcp"}
    iot = {"service": "iot", "region": "us-east-1", "target": "iot-api-us-east-1", "probe": "tls"}
    alb = {"service": "alb", "region": "us-east-1", "target": "alb-api-us-east-1", "probe": "tcp"}

    def at(v: str) -> dict[str, str]:
        return {"vantage": v, "site": site[v]}

    sent = [
        # vantage-a lost IPv6: its per-target IPv6 alerts are muted, vantage-b's are not.
        _alert("DualstackVantageIPv6Lost", **at(a)),
        _alert("DualstackIPv6Down", **at(a), **target),
        _alert("DualstackIPv6RecordMissing", **at(a), **target),
        _alert("DualstackIPv6Unreliable", **at(a), **iot),
        _alert("DualstackIPv6Down", **at(b), **target),
        _alert("DualstackTLSCertExpiringSoon", **at(a), family="ipv6", **target),
        # The critical multi-site alert mutes the per-vantage warnings of its target+probe.
        _alert("DualstackIPv6DownMultiVantage", "critical", **iot),
        _alert("DualstackIPv6Down", **at(c), **iot),
        _alert("DualstackIPv6Down", **at(c), **{**iot, "probe": "http2"}),
        # vantage-d degraded: its IPv6Down is muted, its RecordMissing (DNS) is not.
        _alert("DualstackVantageIPv6Degraded", **at(d)),
        _alert("DualstackIPv6Down", **at(d), **alb),
        _alert("DualstackIPv6RecordMissing", **at(d), **alb),
        # Site "home" is down everywhere: one alert for it; every per-target and vantage IPv6
        # alert of its two vantages is muted, its vantage-down and certificate alerts are not.
        _alert("DualstackIPv6DownEverywhere", site="home"),
        *(_alert("DualstackIPv6Down", **at(v), **t) for v in (e, f) for t in (target, iot, alb)),
        _alert("DualstackIPv6Unreliable", **at(e), **alb),
        _alert("DualstackIPv6Mismatch", **at(f), **alb),
        _alert("DualstackVantageIPv6Degraded", **at(e)),
        _alert("DualstackVantageIPv6Lost", **at(f)),
        _alert("DualstackProbesStale", **at(f)),
        # vantage-g cannot probe anything: its per-target alerts are muted, the same target
        # failing at vantage-b (an AWS incident seen elsewhere) is not.
        _alert("DualstackVantageCannotProbe", **at(g)),
        _alert("DualstackIPv6Down", **at(g), **target),
        _alert("DualstackIPv6RecordMissing", **at(g), **alb),
        _alert("DualstackTLSCertExpiringSoon", **at(g), family="ipv6", **iot),
    ]
    muted = {
        ("DualstackIPv6Down", a, "s3-us-east-1", "tcp"),
        ("DualstackIPv6RecordMissing", a, "s3-us-east-1", "tcp"),
        ("DualstackIPv6Unreliable", a, "iot-api-us-east-1", "tls"),
        ("DualstackIPv6Down", c, "iot-api-us-east-1", "tls"),
        ("DualstackIPv6Down", d, "alb-api-us-east-1", "tcp"),
        *(
            ("DualstackIPv6Down", v, t["target"], t["probe"])
            for v in (e, f)
            for t in (target, iot, alb)
        ),
        ("DualstackIPv6Unreliable", e, "alb-api-us-east-1", "tcp"),
        ("DualstackIPv6Mismatch", f, "alb-api-us-east-1", "tcp"),
        ("DualstackVantageIPv6Degraded", e, "", ""),
        ("DualstackVantageIPv6Lost", f, "", ""),
        ("DualstackIPv6Down", g, "s3-us-east-1", "tcp"),
        ("DualstackIPv6RecordMissing", g, "alb-api-us-east-1", "tcp"),
    }

    def key(labels: dict[str, str]) -> tuple[str, str, str, str]:
        return (
            labels["alertname"],
            labels.get("vantage", ""),
            labels.get("target", ""),
            labels.get("probe", ""),
        )

    with alertmanager(AM_CONFIG, tmp_path) as am:
        am.post(sent)
        expected = {
            key(x["labels"]): "suppressed" if key(x["labels"]) in muted else "active" for x in sent
        }
        # The inhibitor sees new alerts asynchronously: wait for the expected state.
        deadline = time.monotonic() + 20
        while True:
            states = {key(x["labels"]): x["status"]["state"] for x in am.alerts()}
            if states == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert states == expected

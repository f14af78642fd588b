"""The Prometheus rules and the Alertmanager configuration, checked with the real tools.

`promtool check rules` / `check config` / `test rules` (configs/prometheus/) and
`amtool check-config` (configs/alertmanager.yml) must pass; the inhibit rules are exercised
on a real Alertmanager on loopback. The conventions are checked from the YAML: no rule depends
on a scrape job name, every alert has a severity, a summary, a description naming what it is
about, a runbook link to an existing section of docs/runbook.md, and is seen firing in at
least one promtool test. A missing promtool, amtool or alertmanager fails the tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from promstack import alertmanager

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "configs" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
AM_CONFIG = ROOT / "configs" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/dualstack-monitor/dualstack-monitor/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning", "info"}
# What a per-target alert's description must name.
IDENTITY = ("target", "probe", "region", "vantage")
# The alerts about one target (they carry a `target` label); the others are about a vantage.
PER_TARGET = {
    "DualstackIPv6Down",
    "DualstackIPv6DownMultiVantage",
    "DualstackIPv6RecordMissing",
    "DualstackIPv6Mismatch",
    "DualstackIPv6LatencyRegression",
    "DualstackProbesStale",
    "DualstackTLSCertExpiringSoon",
}
ALERTS = PER_TARGET | {
    "DualstackVantageIPv6Lost",
    "DualstackVantageIPv6Degraded",
    "DualstackVantageDown",
    "DualstackConfigReloadFailed",
}
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
    # The vantages it scrapes, and the pushed ones it federates from the receiver (issue 13:
    # the remote-write receiver is a service of its own, on the internal network only).
    job, pushed = cfg["scrape_configs"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["vantage-a:9851", "vantage-b:9851"]
    assert pushed["metrics_path"] == "/federate" and pushed["honor_labels"] is True
    # A `vantage` target label would rename the exporter's own to `exported_vantage`.
    for j in (job, pushed):
        assert all("vantage" not in (sc.get("labels") or {}) for sc in j["static_configs"])


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
        assert rule["labels"]["severity"] in SEVERITIES, name
        ann = rule["annotations"]
        assert set(ann) >= {"summary", "description", "runbook"}, name
        assert ann["summary"].strip() and ann["description"].strip(), name
        url, _, anchor = ann["runbook"].partition("#")
        assert f"{url}#" == RUNBOOK_URL, f"{name}: runbook {ann['runbook']}"
        assert anchor == name.lower(), f"{name}: runbook anchor #{anchor}"
        assert anchor in anchors, f"{name}: docs/runbook.md has no section #{anchor}"


def test_severities() -> None:
    found = alerts()
    assert found["DualstackIPv6DownMultiVantage"]["labels"]["severity"] == "critical"
    assert found["DualstackIPv6Down"]["labels"]["severity"] == "warning"


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
    for name in set(found) - PER_TARGET:
        assert "$labels.vantage" in found[name]["annotations"]["description"], name


def test_per_target_ipv6_alerts_are_guarded_on_the_vantage_self_check() -> None:
    found = alerts()
    guarded = {name for name, rule in found.items() if IPV6_GUARD.search(rule["expr"])}
    assert guarded == {
        "DualstackIPv6Down",
        "DualstackIPv6RecordMissing",
        "DualstackIPv6Mismatch",
        "DualstackIPv6LatencyRegression",
        "DualstackVantageIPv6Degraded",
    }
    # The multi-vantage alert is guarded in the count it is built on.
    [count] = [r for r in rules() if r.get("record") == "dualstack:ipv6_failing_vantages:count"]
    assert IPV6_GUARD.search(count["expr"])


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
    assert cfg["route"]["receiver"] == "webhook"
    assert cfg["route"]["group_by"][:2] == ["alertname", "target"]
    [hook] = next(r for r in cfg["receivers"] if r["name"] == "webhook")["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9099/alerts"


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


def _alert(name: str, severity: str = "warning", **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": severity, **labels}}


def test_alertmanager_inhibits(tmp_path: Path) -> None:
    """A real Alertmanager with configs/alertmanager.yml on loopback: which alerts are muted."""
    tool("prometheus-alertmanager", "alertmanager")  # fails, not skips, when it is missing
    a, b, c, d = (f"vantage-{x}" for x in "abcd")
    target = {"service": "s3", "region": "us-east-1", "target": "s3-us-east-1", "probe": "tcp"}
    iot = {"service": "iot", "region": "us-east-1", "target": "iot-api-us-east-1", "probe": "tls"}
    alb = {"service": "alb", "region": "us-east-1", "target": "alb-api-us-east-1", "probe": "tcp"}
    sent = [
        # vantage-a lost IPv6: its per-target IPv6 alerts are muted, vantage-b's are not.
        _alert("DualstackVantageIPv6Lost", vantage=a),
        _alert("DualstackIPv6Down", vantage=a, **target),
        _alert("DualstackIPv6RecordMissing", vantage=a, **target),
        _alert("DualstackIPv6Down", vantage=b, **target),
        _alert("DualstackTLSCertExpiringSoon", vantage=a, family="ipv6", **target),
        # The critical multi-vantage alert mutes the per-vantage warnings of its target+probe.
        _alert("DualstackIPv6DownMultiVantage", "critical", **iot),
        _alert("DualstackIPv6Down", vantage=c, **iot),
        _alert("DualstackIPv6Down", vantage=c, **{**iot, "probe": "http2"}),
        # vantage-d degraded: its IPv6Down is muted, its RecordMissing (DNS) is not.
        _alert("DualstackVantageIPv6Degraded", vantage=d),
        _alert("DualstackIPv6Down", vantage=d, **alb),
        _alert("DualstackIPv6RecordMissing", vantage=d, **alb),
    ]
    muted = {
        ("DualstackIPv6Down", a, "s3-us-east-1", "tcp"),
        ("DualstackIPv6RecordMissing", a, "s3-us-east-1", "tcp"),
        ("DualstackIPv6Down", c, "iot-api-us-east-1", "tls"),
        ("DualstackIPv6Down", d, "alb-api-us-east-1", "tcp"),
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

"""scripts/gen_dashboards.py and the committed grafana/ tree: current, deterministic, and valid
Grafana JSON wired to the provisioned Prometheus datasource. No Grafana and no network: the
queries themselves run against a real Prometheus in test_dashboards_live.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboards import (
    BUILTINS,
    DASHBOARDS,
    DATASOURCE_UID,
    EXPECTATIONS,
    GRAFANA,
    REPO,
    all_panels,
    expand,
    load_dashboards,
    load_expectations,
    panel_queries,
    referenced_variables,
    regex_escape,
    variable_queries,
)

from monitor.engine.parity import VERDICTS
from monitor.serve.exporter import StoreCollector
from monitor.serve.state import Store

SCRIPT = REPO / "scripts" / "gen_dashboards.py"
SDK = "grafana-foundation-sdk"
VARIABLES = ["vantage", "service", "region", "target"]
TITLES = {
    "dualstack-parity.json": "Dualstack parity",
    "dualstack-endpoint.json": "Dualstack endpoint",
    "dualstack-vantage.json": "Dualstack vantage",
}
ALERTS_EXPR = (
    'ALERTS{alertstate="firing", alertname=~"Dualstack.*", alertname!="DualstackWatchdog"}'
)
PROVISIONED_PATH = "/var/lib/grafana/dashboards"


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def generated_files(root: Path) -> dict[str, bytes]:
    files = [*sorted((root / "dashboards").glob("*.json")), root / EXPECTATIONS.name]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def pinned_sdk() -> str:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    for req in pyproject["project"]["optional-dependencies"]["dev"]:
        name, sep, pin = req.partition("==")
        if name.strip() == SDK and sep:
            return str(pin).strip()
    raise AssertionError(f"pyproject.toml: the dev extra must pin {SDK}==<version>")


DASHBOARD_DATA = load_dashboards()


@pytest.fixture(params=sorted(DASHBOARD_DATA), ids=str)
def board(request: pytest.FixtureRequest) -> dict[str, Any]:
    data: dict[str, Any] = DASHBOARD_DATA[request.param]
    return data


def panel_exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(board) for t in p.get("targets") or []]


# --- the generator --------------------------------------------------------------------------


def test_the_sdk_installed_is_the_pinned_one() -> None:
    pin = pinned_sdk()
    try:
        installed = version(SDK)
    except PackageNotFoundError:
        pytest.fail(f"{SDK} is not installed; install {SDK}=={pin} (the dev extra)")
    assert installed == pin, (
        f"installed {SDK} {installed} != {pin} pinned in pyproject.toml: install {SDK}=={pin}, "
        "or move the pin and regenerate with scripts/gen_dashboards.py"
    )
    assert load_expectations()["generator"][SDK] == pin


def test_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        result = run_generator("--output", str(out))
        assert result.returncode == 0, result.stderr
    assert generated_files(first) == generated_files(second), "the generator is not deterministic"
    committed = generated_files(GRAFANA)
    fresh = generated_files(first)
    assert sorted(committed) == sorted(fresh)
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"{stale} are not current: run `python scripts/gen_dashboards.py`"


def test_check_passes_on_the_committed_tree_and_fails_on_drift(tmp_path: Path) -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "grafana"
    shutil.copytree(GRAFANA, copy)
    assert run_generator("--check", "--output", str(copy)).returncode == 0
    edited = copy / "dashboards" / "dualstack-parity.json"
    drifted = edited.read_text().replace('"Dualstack parity"', '"Parity"', 1)
    edited.write_text(drifted)
    (copy / "dashboards" / "hand-made.json").write_text("{}\n")
    result = run_generator("--check", "--output", str(copy))
    assert result.returncode == 1
    assert "dualstack-parity.json: differs" in result.stderr
    assert "hand-made.json: not generated any more" in result.stderr
    assert edited.read_text() == drifted, "--check must write nothing"


# --- Grafana JSON ---------------------------------------------------------------------------


def test_the_three_dashboards_are_there() -> None:
    assert {name: d["title"] for name, d in DASHBOARD_DATA.items()} == TITLES
    uids = [d["uid"] for d in DASHBOARD_DATA.values()]
    assert len(set(uids)) == len(uids)
    assert all(re.fullmatch(r"[a-z0-9-]{8,40}", uid) for uid in uids)


def test_dashboard_model_basics(board: dict[str, Any]) -> None:
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board.get("id") is None, "a provisioned dashboard carries no instance-specific id"
    assert board["panels"], "no panels"
    assert "dualstack" in board["tags"]
    assert all(p.get("type") for p in all_panels(board))


def test_panel_ids_are_unique_and_the_grid_is_sane(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in all_panels(board)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    taken: set[tuple[int, int]] = set()
    for p in all_panels(board):
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24, p["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


def test_every_panel_and_query_uses_the_provisioned_datasource(board: dict[str, Any]) -> None:
    panels = [p for p in all_panels(board) if p["type"] != "row"]
    assert panels
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, p["title"]
        targets = p.get("targets") or []
        assert targets, f"{p['title']}: no query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), p["title"]
        for t in targets:
            assert t["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, p["title"]
            assert t["expr"].strip(), p["title"]
    for var in board["templating"]["list"]:
        assert var["datasource"]["uid"] == DATASOURCE_UID, var["name"]
    for a in board["annotations"]["list"]:
        assert a["datasource"]["uid"] == DATASOURCE_UID, a["name"]


def test_template_variables_are_chained_query_variables(board: dict[str, Any]) -> None:
    variables = board["templating"]["list"]
    assert [v["name"] for v in variables] == VARIABLES
    for i, var in enumerate(variables):
        assert var["type"] == "query"
        assert var["multi"] is True and var["includeAll"] is True
        assert var["allValue"] == ".*"
        assert var["query"].startswith("label_values(dualstack_probe_success")
        assert var["query"].endswith(f", {var['name']})")
        # chained by the earlier ones, and by those only
        assert referenced_variables(var["query"]) == set(VARIABLES[:i]), var["query"]


def test_every_variable_a_query_uses_is_defined(board: dict[str, Any]) -> None:
    defined = {v["name"] for v in board["templating"]["list"]}
    texts = panel_exprs(board) + [a["expr"] for a in board["annotations"]["list"]]
    texts += [p.get("title", "") for p in all_panels(board)]
    used = set().union(*(referenced_variables(t) for t in texts))
    assert used <= defined | set(BUILTINS), used - defined - set(BUILTINS)
    assert "vantage" in used


def test_the_alerts_annotation_is_on_every_dashboard(board: dict[str, Any]) -> None:
    prom = [a for a in board["annotations"]["list"] if a.get("expr")]
    assert [a["expr"] for a in prom] == [ALERTS_EXPR]
    assert prom[0]["enable"] is True
    assert prom[0]["titleFormat"]


def exposed_series() -> set[str]:
    """Sample names the exporter exposes: from its collector, counters with _total and
    histograms with _bucket/_sum/_count."""
    names: set[str] = set()
    for family in StoreCollector(Store(vantage="t")).collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_queries_name_only_series_the_exporter_exposes(board: dict[str, Any]) -> None:
    exposed = exposed_series()
    texts = panel_exprs(board) + [v["query"] for v in board["templating"]["list"]]
    used = set().union(*(set(re.findall(r"\bdualstack_\w+", t)) for t in texts))
    assert used and used <= exposed, used - exposed


def test_verdict_mappings_cover_every_verdict() -> None:
    board = DASHBOARD_DATA["dualstack-parity.json"]
    names = {str(v) for v in VERDICTS}
    severity_maps = []
    for p in all_panels(board):
        for m in (p.get("fieldConfig") or {}).get("defaults", {}).get("mappings") or []:
            if set(m["options"]) == {str(i) for i in range(len(names))}:
                severity_maps.append(p["title"])
                assert {o["text"] for o in m["options"].values()} >= {"ok", "IPv6 failed"}
    # The worst-verdict matrix and timeline, the per-target table and the who-lost timeline.
    assert len(severity_maps) >= 4, severity_maps


def panel_by_title(board: dict[str, Any], title: str) -> dict[str, Any]:
    [panel] = [p for p in all_panels(board) if p.get("title") == title]
    return panel


def override_links(panel: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        link
        for o in panel["fieldConfig"]["overrides"]
        for prop in o["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]


def test_matrix_cells_link_to_the_endpoint_dashboard() -> None:
    """Each verdict cell of both matrices opens the endpoint dashboard with its row filled in
    (Grafana data links), keeping the time range."""
    board = DASHBOARD_DATA["dualstack-parity.json"]
    endpoint_uid = DASHBOARD_DATA["dualstack-endpoint.json"]["uid"]
    table = panel_by_title(board, "Verdict per target and probe")
    [link] = override_links(table)
    assert link["url"].startswith(f"/d/{endpoint_uid}/")
    assert "var-vantage=${__data.fields.vantage}" in link["url"]
    assert "var-target=${__data.fields.target}" in link["url"]
    assert "${__url_time_range}" in link["url"]
    # The fields the link reads are columns of the merged table (labels of every query).
    for t in table["targets"]:
        assert "max by (vantage, service, region, target)" in t["expr"]
    assert [t["id"] for t in table["transformations"]] == ["merge", "organize"]
    matrix = panel_by_title(board, "Worst verdict by service and region")
    [link] = override_links(matrix)
    assert link["url"].startswith(f"/d/{endpoint_uid}/")
    assert "var-region=${__field.name}" in link["url"]
    assert "var-service=${__data.fields[0]}" in link["url"]


def test_no_data_is_never_shown_as_a_value(board: dict[str, Any]) -> None:
    """A dead Prometheus must not look like a healthy 0: no panel sets a noValue text."""
    for p in all_panels(board):
        assert "noValue" not in (p.get("fieldConfig") or {}).get("defaults", {}), p["title"]


def test_new_panels_are_there() -> None:
    parity = DASHBOARD_DATA["dualstack-parity.json"]
    timeline = panel_by_title(parity, "Who lost IPv6, and since when: vantage · target")
    assert timeline["type"] == "state-timeline"
    assert "by (vantage, target)" in timeline["targets"][0]["expr"]
    vantage = DASHBOARD_DATA["dualstack-vantage.json"]
    fresh = panel_by_title(vantage, "Freshness")
    assert all("dualstack_probe_last_run_timestamp_seconds" in t["expr"] for t in fresh["targets"])
    endpoint = DASHBOARD_DATA["dualstack-endpoint.json"]
    for title in ("Success ratio by vantage and family", "Latency p50 / p95 by vantage and family"):
        panel = panel_by_title(endpoint, title)
        assert all("vantage, family" in t["expr"] for t in panel["targets"]), title


# --- expectations sidecar and the query helper ----------------------------------------------


def test_expectations_cover_every_query_exactly() -> None:
    expected = load_expectations()
    assert expected["datasource_uid"] == DATASOURCE_UID
    assert sorted(expected["dashboards"]) == [f"dashboards/{n}" for n in sorted(DASHBOARD_DATA)]
    for name, board in DASHBOARD_DATA.items():
        record = expected["dashboards"][f"dashboards/{name}"]
        assert record["title"] == board["title"] and record["uid"] == board["uid"]
        in_json = {
            (p["id"], t["refId"]): t["expr"]
            for p in all_panels(board)
            for t in p.get("targets") or []
        }
        listed = {(q["panel_id"], q["ref_id"]): q["expr"] for q in record["queries"]}
        assert listed == in_json
        for q in record["queries"] + record["annotations"]:
            assert isinstance(q["empty_by_design"], bool)
            assert bool(q["reason"]) == q["empty_by_design"], q
        assert [a["annotation"] for a in record["annotations"]] == [
            a["name"] for a in board["annotations"]["list"] if a.get("expr")
        ]


def test_only_what_cannot_have_data_is_marked_empty() -> None:
    queries = list(panel_queries())
    empty = {(q.dashboard, q.panel) for q in queries if q.empty_by_design}
    assert ("Dualstack parity", "Firing Dualstack alerts") in empty
    assert all(
        ("ALERTS" in q.expr) or q.panel == "Skipped runs" for q in queries if q.empty_by_design
    )
    assert all(q.empty_by_design for q in queries if "ALERTS" in q.expr)
    assert sum(not q.empty_by_design for q in queries) >= 25


def test_panel_queries_expand_every_variable() -> None:
    everything = list(panel_queries())
    assert everything and not any("$" in q.expr or "[[" in q.expr for q in everything)
    assert any('vantage=~".*"' in q.expr for q in everything)
    assert any("[30s]" in q.expr for q in everything)  # $__rate_interval
    concrete = list(panel_queries({"vantage": "lab", "region": ["us-east-1", "eu.west"]}))
    assert len(concrete) == len(everything)
    assert any('vantage=~"lab"' in q.expr for q in concrete)
    assert any('region=~"(us-east-1|eu\\\\.west)"' in q.expr for q in concrete)
    variables = list(variable_queries({"vantage": "lab"}))
    assert [v.name for v in variables] == VARIABLES * len(DASHBOARD_DATA)
    assert variables[0].selector == "dualstack_probe_success"
    assert variables[1].selector == 'dualstack_probe_success{vantage=~"lab"}'


def test_expand_escapes_like_grafana_and_rejects_unknown_variables() -> None:
    board = DASHBOARD_DATA["dualstack-parity.json"]
    assert regex_escape("a.b|c") == "a\\\\.b\\\\|c"
    assert expand('x{target=~"$target"}[$__range]', board, {"target": "a+b"}) == (
        'x{target=~"a\\\\+b"}[5m]'
    )
    with pytest.raises(KeyError):
        expand('x{zone=~"$zone"}', board)


# --- provisioning ---------------------------------------------------------------------------


def test_datasource_provisioning_names_the_fixed_uid() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert doc["apiVersion"] == 1
    [ds] = doc["datasources"]
    assert ds["uid"] == DATASOURCE_UID
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert ds["isDefault"] is True
    assert ds["access"] == "proxy"


def test_dashboard_provisioning_loads_the_mounted_folder() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dualstack.yml").read_text())
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == PROVISIONED_PATH
    # Grafana loads every *.json of that folder as a dashboard: nothing else may live there.
    for name, board in DASHBOARD_DATA.items():
        assert board.get("title") and board.get("uid") and "panels" in board, name
    assert EXPECTATIONS.parent != DASHBOARDS

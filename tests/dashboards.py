"""The committed Grafana dashboards as data, for tests: every panel query with its template
variables expanded the way Grafana's Prometheus datasource expands them, whether it is empty by
design on a healthy lab (grafana/panel-expectations.json), and every template-variable query.

    for q in panel_queries():                                   # every variable at "All" (.*)
        result = prom.query(q.expr)
    panel_queries({"vantage": "lab", "service": ["alb", "s3"]}) # concrete values
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
EXPECTATIONS = GRAFANA / "panel-expectations.json"
DATASOURCE_UID = "dualstack-prometheus"

# Grafana's built-in interval variables, as a test substitutes them into an instant query.
BUILTINS: dict[str, str] = {"__rate_interval": "30s", "__interval": "15s", "__range": "5m"}

# $name, ${name}, ${name:format}, [[name]] and [[name:format]]: the forms Grafana interpolates.
VARIABLE_REF = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")

Values = Mapping[str, str | Sequence[str]]


class PanelQuery(NamedTuple):
    dashboard: str  # dashboard title
    panel: str  # panel title; "annotation: NAME" for an annotation query
    expr: str  # PromQL with every variable expanded
    empty_by_design: bool  # True: no data on a healthy lab is correct (e.g. firing alerts)


class VariableQuery(NamedTuple):
    dashboard: str
    name: str  # the template variable
    selector: str  # label_values' series selector, earlier variables expanded
    label: str  # the label whose values the variable offers


def load_dashboards(folder: Path = DASHBOARDS) -> dict[str, dict[str, Any]]:
    """Every dashboard JSON of the folder, by file name, in name order."""
    return {
        p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))
    }


def load_expectations(path: Path = EXPECTATIONS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def referenced_variables(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE_REF.finditer(text)}


def regex_escape(value: str) -> str:
    """What Grafana's Prometheus datasource does to a value of a multi-value variable before it
    goes into `=~"..."`: escape regex metacharacters, with backslashes doubled for PromQL."""
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value.replace("\\", "\\\\\\\\"))


def expand(
    text: str,
    dashboard: Mapping[str, Any],
    values: Values | None = None,
    builtins: Mapping[str, str] | None = None,
) -> str:
    """Interpolate the dashboard's variables: a given value (or list of values) as Grafana would,
    otherwise "All", which is the variable's allValue (`.*`); built-ins from `builtins`."""
    values = values or {}
    builtins = {**BUILTINS, **(builtins or {})}
    all_values = {v["name"]: v.get("allValue") or ".*" for v in dashboard["templating"]["list"]}

    def one(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name in builtins:
            return builtins[name]
        if name not in all_values:
            raise KeyError(f"{dashboard.get('title')}: ${name} is not a template variable")
        given = values.get(name)
        if given is None:
            return str(all_values[name])
        chosen = [given] if isinstance(given, str) else list(given)
        escaped = [regex_escape(v) for v in chosen]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    return VARIABLE_REF.sub(one, text)


def _targets(dashboard: Mapping[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    return {
        (panel["id"], target["refId"]): target
        for panel in all_panels(dashboard)
        for target in panel.get("targets") or []
    }


def panel_queries(
    values: Values | None = None,
    *,
    builtins: Mapping[str, str] | None = None,
    folder: Path = DASHBOARDS,
    expectations: Path = EXPECTATIONS,
) -> Iterator[PanelQuery]:
    """(dashboard title, panel title, expanded expr, empty_by_design) for every panel query of
    every dashboard, then for its annotation queries. The exprs are read from the dashboard JSON
    (what Grafana runs); empty_by_design from the expectations file, which must cover them all."""
    expected = load_expectations(expectations)["dashboards"]
    for name, dashboard in load_dashboards(folder).items():
        targets = _targets(dashboard)
        record = expected[f"{folder.name}/{name}"]
        listed = {(q["panel_id"], q["ref_id"]) for q in record["queries"]}
        if listed != set(targets):
            raise AssertionError(f"{name}: panel-expectations.json does not list its queries")
        titles = {p["id"]: p.get("title", "") for p in all_panels(dashboard)}
        for q in record["queries"]:
            expr = targets[(q["panel_id"], q["ref_id"])]["expr"]
            yield PanelQuery(
                dashboard["title"],
                titles[q["panel_id"]],
                expand(expr, dashboard, values, builtins),
                bool(q["empty_by_design"]),
            )
        annotations = {a["name"]: a for a in dashboard["annotations"]["list"] if a.get("expr")}
        for a in record["annotations"]:
            yield PanelQuery(
                dashboard["title"],
                f"annotation: {a['annotation']}",
                expand(annotations[a["annotation"]]["expr"], dashboard, values, builtins),
                bool(a["empty_by_design"]),
            )


def variable_queries(
    values: Values | None = None, *, folder: Path = DASHBOARDS
) -> Iterator[VariableQuery]:
    """Every template variable's label_values(selector, label), with the variables it chains
    on expanded (to "All" unless `values` names them)."""
    for dashboard in load_dashboards(folder).values():
        for var in dashboard["templating"]["list"]:
            query = var["query"]
            text = query if isinstance(query, str) else query["query"]
            m = LABEL_VALUES.match(text.strip())
            if m is None:
                raise AssertionError(f"{var['name']}: not a label_values() query: {text!r}")
            yield VariableQuery(
                dashboard["title"],
                var["name"],
                expand(m.group("selector"), dashboard, values),
                m.group("label"),
            )

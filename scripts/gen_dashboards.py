"""Generate grafana/dashboards/*.json from typed builders of grafana-foundation-sdk.

Writes one JSON file per dashboard (sorted keys, fixed panel ids, no timestamps: the same input
gives the same bytes) and grafana/panel-expectations.json, which says for every panel query and
annotation whether it is empty by design on a healthy lab (e.g. firing alerts). That file sits
beside dashboards/, not in it: Grafana's file provider would try to load it as a dashboard.

    python scripts/gen_dashboards.py            # (re)write the files
    python scripts/gen_dashboards.py --check    # write nothing; exit 1 if they are not current

grafana-foundation-sdk is a dev-only dependency (the `dev` extra, pinned); the runtime never
imports it. Its build for Grafana 10.1 is used: the JSON then relies on nothing newer than
Grafana 10.1, and Grafana 10 and 11 both load it (and migrate its schemaVersion forward).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Self

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

from probes import kinds

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "grafana"
DASHBOARD_DIR = "dashboards"
EXPECTATIONS_FILE = "panel-expectations.json"
COMMAND = "python scripts/gen_dashboards.py"
SDK = "grafana-foundation-sdk"

# The provisioned datasource (grafana/provisioning/datasources/prometheus.yml): a fixed uid, so
# the dashboards need no datasource variable and no import-time mapping.
DATASOURCE_UID = "dualstack-prometheus"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)

# Template variables, each chained on the ones before it (label_values over the probe series).
VARIABLES = ("vantage", "service", "region", "target")
VAR_METRIC = "dualstack_probe_success"
ALL_VALUE = ".*"
# Every series labelled with the full target identity; the vantage-only ones use VANTAGE.
SEL = ", ".join(f'{v}=~"${v}"' for v in VARIABLES)
VANTAGE = 'vantage=~"$vantage"'

# The matrix's columns: every kind a configuration runs unless told otherwise, a host's
# defaults and a Route 53 name server's, in the registry's order.
PROBES = tuple(n for n in kinds.names() if n in {*kinds.default_names(), *kinds.NAMESERVER_DEFAULT})
# SEL for the per-family panels: the common per-result series of a kind run once over both
# families (the race) say nothing of the family they are filed under (its own panels show it).
ONCE = "|".join(k.name for k in kinds.kinds() if not k.per_family)
PER_FAMILY = f'probe!~"{ONCE}", {SEL}'
FAMILIES = ("ipv4", "ipv6")
# DualstackWatchdog always fires (a dead man's switch): it is no incident to show.
ALERTS_EXPR = (
    'ALERTS{alertstate="firing", alertname=~"Dualstack.*", alertname!="DualstackWatchdog"}'
)
NO_ALERTS = "ALERTS has series only while a Dualstack alert fires; a healthy lab fires none"


@dataclass(frozen=True)
class VerdictStyle:
    severity: int  # higher is worse for IPv6 parity; the worst one colours a matrix cell
    text: str
    color: str


# monitor.engine.parity.Verdict: every verdict, so a matrix cell never shows a bare number.
VERDICTS: dict[str, VerdictStyle] = {
    "ok": VerdictStyle(0, "ok", "green"),
    "skipped": VerdictStyle(1, "skipped", "#8e8e8e"),
    "ipv4_failed": VerdictStyle(2, "IPv4 failed", "blue"),
    "both_failed": VerdictStyle(3, "both failed", "purple"),
    "ipv6_slower": VerdictStyle(4, "IPv6 slower", "yellow"),
    "mismatch": VerdictStyle(5, "mismatch", "orange"),
    "ipv6_missing": VerdictStyle(6, "IPv6 missing", "dark-red"),
    "ipv6_failed": VerdictStyle(7, "IPv6 failed", "red"),
}


# --- small typed helpers ------------------------------------------------------------------


# Every panel builder used here: each is a Builder[Panel] with the common panel setters.
PanelBuilder = stat.Panel | table.Panel | timeseries.Panel | statetimeline.Panel


@dataclass(frozen=True)
class Q:
    """One panel query; `empty` says why it is empty by design on a healthy lab (else "")."""

    expr: str
    legend: str = ""
    empty: str = ""


class _PromAnnotationModel(model.AnnotationQuery):
    """Grafana's Prometheus annotation source reads `step`, `titleFormat`, `textFormat` and
    `tagKeys` beside `expr` (Grafana 10 and 11 alike); the SDK's model for 10.1 has `expr` only."""

    def __init__(self) -> None:
        super().__init__()
        self.step = "60s"
        self.title_format = ""
        self.text_format = ""
        self.tag_keys = ""

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(
            step=self.step,
            titleFormat=self.title_format,
            textFormat=self.text_format,
            tagKeys=self.tag_keys,
            useValueForTime=False,
        )
        return payload


class PromAnnotation(dash.AnnotationQuery):
    _internal: _PromAnnotationModel

    def __init__(self) -> None:
        self._internal = _PromAnnotationModel()

    def title_format(self, fmt: str) -> Self:
        self._internal.title_format = fmt
        return self

    def text_format(self, fmt: str) -> Self:
        self._internal.text_format = fmt
        return self

    def tag_keys(self, keys: Sequence[str]) -> Self:
        self._internal.tag_keys = ",".join(keys)
        return self


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def value_map(options: dict[str, tuple[str, str]]) -> list[model.ValueMapping]:
    return [
        model.ValueMap(
            options={
                key: model.ValueMappingResult(text=text, color=color, index=i)
                for i, (key, (text, color)) in enumerate(options.items())
            }
        )
    ]


def verdict_severity_mappings() -> list[model.ValueMapping]:
    """For the numbers worst_verdict() computes."""
    by_severity = sorted(VERDICTS.values(), key=lambda s: s.severity)
    return value_map({str(s.severity): (s.text, s.color) for s in by_severity})


def worst_verdict(by: str, matcher: str = "") -> str:
    """The worst current verdict per group, as its severity number (see VERDICTS); `matcher`
    narrows the series further (e.g. `probe="tcp"`)."""
    sel = f"{matcher}, {SEL}" if matcher else SEL
    parts = [
        f'(dualstack_parity{{verdict="{name}", {sel}}} == 1) * {style.severity}'
        for name, style in sorted(VERDICTS.items(), key=lambda kv: -kv[1].severity)
    ]
    return f"max by ({by}) (\n    " + "\n  or\n    ".join(parts) + "\n)"


def targets_with(verdict: str) -> str:
    """How many (vantage, target) pairs have a probe at `verdict`: 0 when the selected series
    exist but none has it, no data (not a green 0) when Prometheus has no series at all."""
    return (
        f'count(count by (vantage, target) (dualstack_parity{{verdict="{verdict}", {SEL}}} == 1))'
        f'\nor\n0 * count(dualstack_parity{{verdict="{verdict}", {SEL}}})'
    )


# The endpoint dashboard for the vantage and target of a table row (Grafana data link; the
# time range goes along). `${__data.fields.NAME}` is the row's value of column NAME.
ENDPOINT_LINK = (
    "/d/dualstack-endpoint/dualstack-endpoint?var-vantage=${__data.fields.vantage}"
    "&var-target=${__data.fields.target}&${__url_time_range}"
)


def links(title: str, url: str) -> list[model.DynamicConfigValue]:
    """A data link on the matched fields (an override, so only the verdict cells get it)."""
    return [model.DynamicConfigValue(id_val="links", value=[{"title": title, "url": url}])]


def legend(*, show: bool = True, table_mode: bool = False) -> VizLegendOptions:
    return (
        VizLegendOptions()
        .show_legend(show)
        .display_mode(
            common.LegendDisplayMode.TABLE if table_mode else common.LegendDisplayMode.LIST
        )
        .placement(common.LegendPlacement.BOTTOM)
        .calcs([])
    )


def tooltip() -> VizTooltipOptions:
    return (
        VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
    )


def dashed() -> list[model.DynamicConfigValue]:
    return [
        model.DynamicConfigValue(
            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
        )
    ]


def cell_background() -> list[model.DynamicConfigValue]:
    return [
        model.DynamicConfigValue(
            id_val="custom.cellOptions",
            value=common.TableColoredBackgroundCellOptions(
                mode=common.TableCellBackgroundDisplayMode.BASIC
            ),
        )
    ]


def matrix(
    row: str, column: str, value: str, order: Sequence[str], row_title: str
) -> list[model.DataTransformerConfig]:
    """Grafana's "grouping to matrix": one row per `row` value, one column per `column` value."""
    corner = f"{row}\\{column}"  # the name Grafana gives the row-label column
    return [
        model.DataTransformerConfig(
            id_val="groupingToMatrix",
            options={
                "rowField": row,
                "columnField": column,
                "valueField": value,
                "emptyValue": "null",
            },
        ),
        model.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {},
                "indexByName": {corner: 0, **{name: i + 1 for i, name in enumerate(order)}},
                "renameByName": {corner: row_title},
            },
        ),
    ]


def hide_columns(*names: str) -> model.DataTransformerConfig:
    return model.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(names, True),
            "indexByName": {},
            "renameByName": {},
        },
    )


def family_columns() -> str:
    return "^(" + "|".join(FAMILIES) + ")$"


# --- the dashboard assembler ------------------------------------------------------------


class Board:
    """A dashboard under construction: stable panel ids in reading order, the Prometheus
    datasource on every panel and query, and a record of what each query is expected to return."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid = uid
        self.title = title
        self._next_id = 1
        self.queries: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.builder = (
            dash.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(["dualstack", "ipv6"])
            .editable()
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .time("now-6h", "now")
            .timezone("browser")
            .refresh("30s")
            .timepicker(
                dash.TimePicker().refresh_intervals(["10s", "30s", "1m", "5m", "15m", "1h"])
            )
            .link(
                dash.DashboardLink("Dualstack dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags(["dualstack"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )
        chain: list[str] = []
        for name in VARIABLES:
            matchers = ", ".join(f'{v}=~"${v}"' for v in chain)
            selector = f"{VAR_METRIC}{{{matchers}}}" if matchers else VAR_METRIC
            self.builder.with_variable(
                dash.QueryVariable(name)
                .label(name.capitalize())
                .datasource(DATASOURCE)
                .query(f"label_values({selector}, {name})")
                .multi(True)
                .include_all(True)
                .all_value(ALL_VALUE)
                .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
                .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(model.VariableSort.ALPHABETICAL_ASC)
            )
            chain.append(name)
        self._alerts_annotation()

    def _take_id(self) -> int:
        n = self._next_id
        self._next_id += 1
        return n

    def _alerts_annotation(self) -> None:
        name = "Firing Dualstack alerts"
        self.builder.annotation(
            PromAnnotation()
            .name(name)
            .datasource(DATASOURCE)
            .enable(True)
            .hide(False)
            .icon_color("red")
            .expr(ALERTS_EXPR)
            .title_format("{{alertname}}")
            .text_format("{{vantage}} {{service}} {{region}} {{target}} {{probe}}")
            .tag_keys(["alertname", "severity", "vantage", "target", "probe"])
        )
        self.annotations.append(
            {"annotation": name, "expr": ALERTS_EXPR, "empty_by_design": True, "reason": NO_ALERTS}
        )

    def row(self, title: str) -> None:
        self.builder.with_row(dash.Row(title).id(self._take_id()).collapsed(False))

    def add(
        self,
        panel: PanelBuilder,
        title: str,
        description: str,
        queries: Sequence[Q],
        *,
        w: int,
        h: int,
        instant: bool = False,
        table_format: bool = False,
    ) -> None:
        pid = self._take_id()
        notes = [q.empty for q in queries if q.empty]
        text = description + "".join(
            f"\n\nEmpty by design on a healthy system: {n}." for n in notes
        )
        panel.id(pid).title(title).description(text).datasource(DATASOURCE).span(w).height(h)
        for i, q in enumerate(queries):
            ref = chr(ord("A") + i)
            target = (
                prom.Dataquery()
                .ref_id(ref)
                .datasource(DATASOURCE)
                .editor_mode(QueryEditorMode.CODE)
                .expr(q.expr)
                .legend_format(q.legend or "__auto")
            )
            if instant:
                target.instant()
            else:
                target.range()
            if table_format:
                target.format(PromQueryFormat.TABLE)
            panel.with_target(target)
            self.queries.append(
                {
                    "panel_id": pid,
                    "panel": title,
                    "ref_id": ref,
                    "expr": q.expr,
                    "empty_by_design": bool(q.empty),
                    "reason": q.empty,
                }
            )
        self.builder.with_panel(panel)

    def render(self) -> str:
        return JSONEncoder(sort_keys=True, indent=2).encode(self.builder.build()) + "\n"

    def expectations(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "queries": self.queries,
            "annotations": self.annotations,
        }


# --- panels ---------------------------------------------------------------------------------


def count_stat(verdict: str, color: str) -> stat.Panel:
    # No `no_value`: "No data" (Prometheus down, nothing scraped) must not read as a green 0;
    # the query itself returns 0 when there is data and nothing at `verdict`.
    return (
        stat.Panel()
        .unit("none")
        .decimals(0)
        .thresholds(thresholds((None, "green"), (1, color)))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE)
        .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"]))
    )


def up_down_stat(up: str, down: str) -> stat.Panel:
    # No `no_value`: an absent series shows as "No data", whatever the reason (explained in
    # each panel's description), never as a state it is not.
    return (
        stat.Panel()
        .mappings(value_map({"1": (up, "green"), "0": (down, "red")}))
        .thresholds(thresholds((None, "red"), (1, "green")))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"]))
    )


def grid() -> table.Panel:
    return table.Panel().show_header(True).cell_height(common.TableCellHeight.SM)


def lines(unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .unit(unit)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .legend(legend(table_mode=False))
        .tooltip(tooltip())
    )


def bars(unit: str) -> timeseries.Panel:
    return (
        lines(unit)
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(StackingConfig().mode(common.StackingMode.NORMAL).group("A"))
    )


def overview() -> Board:
    b = Board(
        "dualstack-parity",
        "Dualstack parity",
        "Is IPv6 at parity with IPv4? Current verdicts per vantage, service, region, target and "
        "probe, from dualstack_parity (1 for the current verdict).",
    )
    b.row("Now")
    for verdict, title, color in (
        ("ipv6_failed", "Targets with IPv6 failed", "red"),
        ("ipv6_missing", "Targets with IPv6 missing", "dark-red"),
        ("mismatch", "Targets with a mismatch", "orange"),
    ):
        b.add(
            count_stat(verdict, color),
            title,
            f"(vantage, target) pairs with at least one probe whose verdict is {verdict} now.",
            [Q(targets_with(verdict))],
            w=4,
            h=4,
            instant=True,
        )
    b.add(
        stat.Panel()
        .unit("percentunit")
        .decimals(1)
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "red"), (0.9, "orange"), (1, "green")))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"])),
        "Pairs at parity",
        "Share of (target, probe) pairs whose verdict is ok.",
        [
            Q(
                f'sum(dualstack_parity{{verdict="ok", {SEL}}}) '
                f'/ count(dualstack_parity{{verdict="ok", {SEL}}})'
            )
        ],
        w=4,
        h=4,
    )
    b.add(
        up_down_stat("IPv6", "no IPv6"),
        "Vantage IPv6 availability",
        "1 when the vantage has a usable route to a target's IPv6 address; without one, IPv6 "
        "results are skipped rather than blamed on the endpoints. No data: no IPv6 target to "
        "test, or no data at all.",
        [Q(f"max by (vantage) (dualstack_vantage_ipv6_available{{{VANTAGE}}})", "{{vantage}}")],
        w=8,
        h=4,
        instant=True,
    )

    b.row("Parity matrix")
    b.add(
        grid()
        .mappings(verdict_severity_mappings())
        .thresholds(thresholds((None, "transparent")))
        .override_by_regexp(".*", cell_background())
        .override_by_name(
            "service\\region",
            [
                model.DynamicConfigValue(
                    id_val="custom.cellOptions", value=common.TableAutoCellOptions()
                )
            ],
        )
        # Every region column: the endpoint dashboard for that service and region, with the
        # vantages selected here (`${__data.fields[0]}`: the row's service).
        .override_by_regexp(
            "^(?!service\\\\region$).*",
            links(
                "Endpoints of ${__data.fields[0]} in ${__field.name}",
                "/d/dualstack-endpoint/dualstack-endpoint?${vantage:queryparam}"
                "&var-service=${__data.fields[0]}&var-region=${__field.name}&${__url_time_range}",
            ),
        )
        .with_transformation(
            model.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={
                    "rowField": "service",
                    "columnField": "region",
                    "valueField": "Value",
                    "emptyValue": "null",
                },
            )
        ),
        "Worst verdict by service and region",
        "For each service (rows) and region (columns), the worst verdict of any selected "
        "vantage, target and probe there now. A cell opens the endpoint dashboard for it.",
        [Q(worst_verdict("service, region"))],
        w=8,
        h=9,
        instant=True,
        table_format=True,
    )
    b.add(
        statetimeline.Panel()
        .mappings(verdict_severity_mappings())
        .thresholds(thresholds((None, "transparent")))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(80)
        .line_width(0)
        .legend(legend())
        .tooltip(VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE)),
        "Worst verdict over time: vantage · service · region",
        "The worst verdict per vantage, service and region, over the time range.",
        [Q(worst_verdict("vantage, service, region"), "{{vantage}} · {{service}} · {{region}}")],
        w=16,
        h=9,
    )
    probe_columns = "^(" + "|".join(PROBES) + ")$"
    b.add(
        grid()
        .mappings(verdict_severity_mappings())
        .thresholds(thresholds((None, "transparent")))
        .override_by_regexp(probe_columns, cell_background())
        .override_by_regexp(
            probe_columns,
            links("Endpoint ${__data.fields.target} from ${__data.fields.vantage}", ENDPOINT_LINK),
        )
        # One query per probe kind (A: dns, B: dns_tcp, ...), each a table of the label columns
        # and `Value #X`; merged into one row per vantage and target, one column per probe.
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "indexByName": {
                        name: i
                        for i, name in enumerate(
                            ["vantage", "service", "region", "target", *PROBES]
                        )
                    },
                    "renameByName": {
                        f"Value #{chr(ord('A') + i)}": probe for i, probe in enumerate(PROBES)
                    },
                },
            )
        ),
        "Verdict per target and probe",
        "The verdict of each (target, probe) now, one row per vantage and target. A cell opens "
        "the endpoint dashboard for that vantage and target.",
        [Q(worst_verdict("vantage, service, region, target", f'probe="{p}"')) for p in PROBES],
        w=24,
        h=12,
        instant=True,
        table_format=True,
    )
    b.add(
        statetimeline.Panel()
        .mappings(verdict_severity_mappings())
        .thresholds(thresholds((None, "transparent")))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(80)
        .line_width(0)
        .legend(legend(show=False))
        .tooltip(VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE)),
        "Who lost IPv6, and since when: vantage · target",
        "One row per vantage and target, coloured while its worst verdict is not ok (empty "
        "while ok): when each target started and stopped failing, from where.",
        [
            Q(
                worst_verdict("vantage, target") + " > 0",
                "{{vantage}} · {{target}}",
            )
        ],
        w=24,
        h=10,
    )

    b.row("History and alerts")
    verdict_colors = lines("none").decimals(0).min(0)
    for name, style in VERDICTS.items():
        verdict_colors.override_by_name(
            name,
            [
                model.DynamicConfigValue(
                    id_val="color", value={"mode": "fixed", "fixedColor": style.color}
                )
            ],
        )
    b.add(
        verdict_colors,
        "(Target, probe) pairs per verdict",
        "How many pairs have each verdict, over time; the alert annotations mark firing alerts.",
        [Q(f"count by (verdict) (dualstack_parity{{{SEL}}} == 1)", "{{verdict}}")],
        w=16,
        h=8,
    )
    b.add(
        grid().with_transformation(hide_columns("Time", "Value")),
        "Firing Dualstack alerts",
        "Alerts named Dualstack* that fire now, from Prometheus' ALERTS series.",
        [
            Q(
                "sum by (alertname, severity, vantage, service, region, target, probe) "
                f"({ALERTS_EXPR})",
                empty=NO_ALERTS,
            )
        ],
        w=8,
        h=8,
        instant=True,
        table_format=True,
    )
    return b


def endpoint() -> Board:
    b = Board(
        "dualstack-endpoint",
        "Dualstack endpoint",
        "Drill-down for the selected targets: IPv4 against IPv6 latency, success, errors, "
        "negotiated HTTP version, certificates and DNS answers.",
    )
    b.row("Latency")
    b.add(
        lines("s").override_by_regexp("^ipv6 .*", dashed()),
        "Phase duration by family",
        "Duration of each phase of the last probe, averaged over the selected targets "
        "(IPv6 dashed).",
        [
            Q(
                "avg by (family, probe, phase) "
                f"(dualstack_probe_phase_duration_seconds{{{PER_FAMILY}}})",
                "{{family}} {{probe}}/{{phase}}",
            )
        ],
        w=8,
        h=9,
    )
    b.add(
        lines("s").override_by_regexp(".* ipv6$", dashed()),
        "Latency p50 / p95 by vantage and family",
        "Quantiles of the latency histogram of successful probes, all selected probe kinds "
        "together, per vantage (IPv6 dashed). Only successes count: when IPv6 fails its slower "
        "probes, its quantiles drop; compare per probe on the next panel.",
        [
            Q(
                f"histogram_quantile({q}, sum by (le, vantage, family) "
                f"(rate(dualstack_probe_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                f"p{round(q * 100)} {{{{vantage}}}} {{{{family}}}}",
            )
            for q in (0.5, 0.95)
        ],
        w=8,
        h=9,
    )
    b.add(
        lines("s").override_by_regexp("^ipv6 .*", dashed()),
        "Latency p95 by probe and family",
        "p95 latency of successful probes per probe kind: like against like (IPv6 dashed).",
        [
            Q(
                "histogram_quantile(0.95, sum by (le, family, probe) "
                f"(rate(dualstack_probe_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "{{family}} {{probe}}",
            )
        ],
        w=8,
        h=9,
    )

    b.row("Success and errors")
    b.add(
        lines("percentunit").min(0).max(1).override_by_regexp(".* ipv6$", dashed()),
        "Success ratio by vantage and family",
        "Share of probes that succeeded, per vantage and address family (IPv6 dashed): a "
        "failure seen from one vantage only is that vantage's path.",
        [
            Q(
                "avg by (vantage, family) "
                f"(avg_over_time(dualstack_probe_success{{{PER_FAMILY}}}[$__rate_interval]))",
                "{{vantage}} {{family}}",
            )
        ],
        w=8,
        h=8,
    )
    b.add(
        stat.Panel()
        .unit("percentunit")
        .decimals(1)
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "red"), (0.95, "orange"), (0.99, "green")))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"])),
        "Success over the range",
        "Share of probes that succeeded over the whole time range, per vantage and family.",
        [
            Q(
                "avg by (vantage, family) "
                f"(avg_over_time(dualstack_probe_success{{{PER_FAMILY}}}[$__range]))",
                "{{vantage}} {{family}}",
            )
        ],
        w=4,
        h=8,
        instant=True,
    )
    b.add(
        lines("percentunit").min(0).max(1).override_by_regexp("^ipv6 .*", dashed()),
        "Success ratio by probe and family",
        "Share of probes that succeeded, per probe kind (IPv6 dashed).",
        [
            Q(
                "avg by (family, probe) "
                f"(avg_over_time(dualstack_probe_success{{{PER_FAMILY}}}[$__rate_interval]))",
                "{{family}} {{probe}}",
            )
        ],
        w=12,
        h=8,
    )
    b.add(
        bars("none").decimals(0),
        "Errors by kind",
        "Failed probes per family, probe and error kind (the closed set of docs/probes.md).",
        [
            Q(
                "sum by (family, probe, kind) "
                f"(increase(dualstack_probe_errors_total{{{PER_FAMILY}}}[$__rate_interval]))",
                "{{family}} {{probe}} {{kind}}",
            )
        ],
        w=24,
        h=8,
    )

    b.row("Happy Eyeballs")
    b.add(
        lines("percentunit").min(0).max(1),
        "Races IPv4 won, per target",
        "Share of the Happy Eyeballs (RFC 8305) races of each target that IPv4 won, per "
        "vantage: a browser-like client tries IPv6 first, so anything above 0 is IPv6 failing "
        "or too slow for it (probe race; only targets that list it).",
        [
            Q(
                "sum by (vantage, target) (increase(dualstack_race_wins_total"
                f'{{family="ipv4", {SEL}}}[$__rate_interval]))\n/ sum by (vantage, target) '
                f"(increase(dualstack_race_wins_total{{{SEL}}}[$__rate_interval]))",
                "{{vantage}} {{target}}",
            )
        ],
        w=12,
        h=8,
    )
    b.add(
        lines("s").min(0),
        "What IPv6 cost the race, per target",
        "The last race's IPv6 penalty: 0 when IPv6 won; when IPv4 won, its connect time less "
        "a direct IPv4 connect (about the connection attempt delay for a blackholed IPv6).",
        [
            Q(
                f"max by (vantage, target) (dualstack_race_ipv6_penalty_seconds{{{SEL}}})",
                "{{vantage}} {{target}}",
            )
        ],
        w=12,
        h=8,
    )

    b.row("Protocol, certificate and DNS")
    b.add(
        grid()
        .mappings(
            value_map(
                {"1.1": ("HTTP/1.1", "blue"), "2": ("HTTP/2", "green"), "3": ("HTTP/3", "purple")}
            )
        )
        .override_by_regexp(family_columns(), cell_background())
        .transformations(
            matrix("endpoint", "family", "version", FAMILIES, "vantage / target / probe")
        ),
        "HTTP version per family",
        "The HTTP version negotiated over IPv4 and over IPv6 by the last http2/http3 probe.",
        [
            Q(
                "label_join(max by (vantage, target, probe, family, version) "
                f'(dualstack_http_version_info{{{SEL}}} == 1), "endpoint", " / ", '
                '"vantage", "target", "probe")'
            )
        ],
        w=8,
        h=10,
        instant=True,
        table_format=True,
    )
    b.add(
        grid()
        .unit("s")
        .decimals(0)
        .thresholds(thresholds((None, "red"), (0, "orange"), (14 * 86400, "green")))
        .override_by_regexp(family_columns(), cell_background())
        .transformations(matrix("endpoint", "family", "Value", FAMILIES, "vantage / target")),
        "Certificate expires in, per family",
        "Time until the leaf certificate presented over each family expires (negative: "
        "expired; orange: under 14 days).",
        [
            Q(
                "label_join(min by (vantage, target, family) "
                f"(dualstack_tls_cert_not_after_timestamp_seconds{{{SEL}}}) - time(), "
                '"endpoint", " / ", "vantage", "target")'
            )
        ],
        w=8,
        h=10,
        instant=True,
        table_format=True,
    )
    b.add(
        grid()
        .decimals(0)
        .thresholds(thresholds((None, "red"), (1, "green")))
        .override_by_regexp(family_columns(), cell_background())
        .transformations(matrix("endpoint", "family", "Value", FAMILIES, "vantage / target")),
        "DNS addresses per family",
        "Addresses in the last A (ipv4) and AAAA (ipv6) answer; 0 AAAA means no native IPv6.",
        [
            Q(
                f"label_join(max by (vantage, target, family) (dualstack_dns_records{{{SEL}}}), "
                '"endpoint", " / ", "vantage", "target")'
            )
        ],
        w=8,
        h=10,
        instant=True,
        table_format=True,
    )
    return b


def vantage() -> Board:
    b = Board(
        "dualstack-vantage",
        "Dualstack vantage",
        "The vantage points themselves: IPv6 availability, scheduler health, probe throughput, "
        "configuration reloads and build.",
    )
    b.row("Status")
    b.add(
        up_down_stat("IPv6", "no IPv6"),
        "IPv6 available",
        "1 when the vantage has a usable route to a target's IPv6 address. No data: no IPv6 "
        "target to test, or no data at all.",
        [Q(f"max by (vantage) (dualstack_vantage_ipv6_available{{{VANTAGE}}})", "{{vantage}}")],
        w=6,
        h=4,
        instant=True,
    )
    b.add(
        up_down_stat("loaded", "reload failed"),
        "Configuration",
        "Whether the last configuration (re)load succeeded.",
        [
            Q(
                f"min by (vantage) (dualstack_config_last_reload_successful{{{VANTAGE}}})",
                "{{vantage}}",
            )
        ],
        w=6,
        h=4,
        instant=True,
    )
    b.add(
        stat.Panel()
        .unit("s")
        .decimals(0)
        .color_mode(common.BigValueColorMode.NONE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"])),
        "Configuration loaded ago",
        "Time since the last successful configuration load.",
        [
            Q(
                "time() - max by (vantage) "
                f"(dualstack_config_last_reload_success_timestamp_seconds{{{VANTAGE}}})",
                "{{vantage}}",
            )
        ],
        w=6,
        h=4,
        instant=True,
    )
    b.add(
        stat.Panel()
        .decimals(0)
        .color_mode(common.BigValueColorMode.NONE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"])),
        "Scheduled jobs",
        "(target, probe) jobs the scheduler runs.",
        [Q(f"sum by (vantage) (dualstack_scheduler_jobs{{{VANTAGE}}})", "{{vantage}}")],
        w=3,
        h=4,
        instant=True,
    )
    b.add(
        stat.Panel()
        .unit("s")
        .decimals(0)
        .thresholds(thresholds((None, "green"), (120, "orange"), (300, "red")))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"])),
        "Freshness",
        "How long ago each vantage started its latest probe (newest) and its most overdue one "
        "(oldest); red past 300 s, where DualstackProbesStale fires. No data: the vantage is "
        "not scraped (DualstackVantageDown).",
        [
            Q(
                f"time() - max by (vantage) (dualstack_probe_last_run_timestamp_seconds{{{SEL}}})",
                "{{vantage}} newest",
            ),
            Q(
                f"time() - min by (vantage) (dualstack_probe_last_run_timestamp_seconds{{{SEL}}})",
                "{{vantage}} oldest",
            ),
        ],
        w=3,
        h=4,
        instant=True,
    )
    b.add(
        statetimeline.Panel()
        .thresholds(thresholds((None, "red"), (1, "green")))
        .override_by_query(
            "A",
            [
                model.DynamicConfigValue(
                    id_val="mappings",
                    value=value_map({"1": ("IPv6", "green"), "0": ("no IPv6", "red")}),
                )
            ],
        )
        .override_by_query(
            "B",
            [
                model.DynamicConfigValue(
                    id_val="mappings",
                    value=value_map({"1": ("loaded", "green"), "0": ("reload failed", "red")}),
                )
            ],
        )
        .show_value(common.VisibilityMode.AUTO)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(80)
        .line_width(0)
        .legend(legend(show=False))
        .tooltip(VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE)),
        "IPv6 availability and configuration over time",
        "IPv6 route availability and configuration reload status of each vantage.",
        [
            Q(
                f"max by (vantage) (dualstack_vantage_ipv6_available{{{VANTAGE}}})",
                "{{vantage}} IPv6",
            ),
            Q(
                f"min by (vantage) (dualstack_config_last_reload_successful{{{VANTAGE}}})",
                "{{vantage}} configuration",
            ),
        ],
        w=14,
        h=7,
    )
    b.add(
        grid().with_transformation(hide_columns("Time", "Value")),
        "Build",
        "Version of dualstack-monitor and of Python each vantage runs.",
        [Q(f"max by (vantage, version, python) (dualstack_build_info{{{VANTAGE}}})")],
        w=10,
        h=7,
        instant=True,
        table_format=True,
    )

    b.row("Scheduler")
    b.add(
        lines("s"),
        "Scheduler lag p50 / p95 / p99",
        "How late probes start after their slot.",
        [
            Q(
                f"histogram_quantile({q}, sum by (le, vantage) "
                f"(rate(dualstack_scheduler_lag_seconds_bucket{{{VANTAGE}}}[$__rate_interval])))",
                f"p{round(q * 100)} {{{{vantage}}}}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        w=12,
        h=8,
    )
    b.add(
        lines("ops").override_by_regexp(".* ipv6$", dashed()),
        "Probe throughput",
        "Probes run per second, in total and per family (IPv6 dashed).",
        [
            Q(
                f"sum by (vantage) (rate(dualstack_probe_runs_total{{{SEL}}}[$__rate_interval]))",
                "{{vantage}}",
            ),
            Q(
                "sum by (vantage, family) "
                f"(rate(dualstack_probe_runs_total{{{SEL}}}[$__rate_interval]))",
                "{{vantage}} {{family}}",
            ),
        ],
        w=12,
        h=8,
    )
    b.add(
        bars("none").decimals(0),
        "Skipped runs",
        "Runs skipped because the previous run of the same job was still going.",
        [
            Q(
                "sum by (vantage, target, probe) (increase(dualstack_scheduler_skipped_total"
                f'{{{VANTAGE}, target=~"$target"}}[$__rate_interval]))',
                "{{vantage}} {{target}} {{probe}}",
                empty="the counter has series only once a run outlasted its interval and the "
                "next was skipped; a vantage whose runs fit their interval has none",
            )
        ],
        w=24,
        h=7,
    )
    return b


BOARDS = (overview, endpoint, vantage)


# --- output -------------------------------------------------------------------------------


def render() -> dict[str, str]:
    """Every generated file, by path relative to the output folder."""
    files: dict[str, str] = {}
    expectations: dict[str, Any] = {}
    for make in BOARDS:
        board = make()
        name = f"{DASHBOARD_DIR}/{board.uid}.json"
        files[name] = board.render()
        expectations[name] = board.expectations()
    sidecar = {
        "about": (
            "Per panel query and annotation: empty_by_design is true when the query returns no "
            f"data on a healthy lab, with the reason. Generated by `{COMMAND}`; do not edit."
        ),
        "datasource_uid": DATASOURCE_UID,
        "generator": {"script": "scripts/gen_dashboards.py", SDK: version(SDK)},
        "dashboards": expectations,
    }
    files[EXPECTATIONS_FILE] = JSONEncoder(sort_keys=True, indent=2).encode(sidecar) + "\n"
    return files


def stale(output: Path, files: dict[str, str]) -> list[Path]:
    """Dashboard JSON in the output folder that the generator no longer writes."""
    folder = output / DASHBOARD_DIR
    wanted = {output / name for name in files}
    return sorted(p for p in folder.glob("*.json") if p not in wanted) if folder.is_dir() else []


def check(output: Path, files: dict[str, str]) -> list[str]:
    problems: list[str] = []
    for name, text in files.items():
        path = output / name
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current is None:
            problems.append(f"{path}: missing")
        elif current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), "committed", "generated", lineterm="", n=1
            )
            problems.append(f"{path}: differs\n" + "\n".join(list(diff)[:40]))
    problems += [f"{p}: not generated any more" for p in stale(output, files)]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"folder to write {DASHBOARD_DIR}/*.json and {EXPECTATIONS_FILE} into (or to --check)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files differ from what would be generated",
    )
    args = parser.parse_args(argv)
    output: Path = args.output
    files = render()
    if args.check:
        problems = check(output, files)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"dashboards are not current: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    for path in stale(output, files):
        path.unlink()
    for name, text in files.items():
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files under {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

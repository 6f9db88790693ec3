"""deploy/grafana/routeplane.json: every query is PromQL (parsed by promql-parser) naming only
series the control plane exports, and the dashboard covers what README says to monitor."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import promql_parser
import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from control_plane import metrics
from control_plane.dev.mesh import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "routeplane.json"
# Grafana's own variables, and the dashboard's, as a query would see them
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SUFFIXES = {
    "counter": ("_total",),  # `serve` turns _created off (disable_created_metrics)
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
}


def _families() -> Iterator[Metric]:
    """Every family `serve` exposes at /metrics: the module-level metrics in the default
    registry, and the collectors `serve` registers (fed one row so they yield their families)."""
    for family in REGISTRY.collect():
        if family.name.startswith("routeplane_"):
            yield family
    yield from metrics.LiveCollector(lambda: ["edge/us-west@0.0.0.0:10000"]).collect()
    revision = SimpleNamespace(revision="v1", requests_per_second=1.0, errors_per_second=0.0)
    row = SimpleNamespace(
        server="echo",
        region="*",
        in_flight=1,
        requests_per_second=1.0,
        desired_replicas=1,
        revisions=[revision],
    )

    class OneServer:
        version = 1

        def servers(self) -> list[str]:
            return ["echo"]

        def rows_of(self, server: str) -> list[Any]:
            return [row]

        def changes_since(self, version: int) -> frozenset[str] | None:
            return None

    text = metrics.LoadExposition(OneServer()).render().decode()
    yield from text_string_to_metric_families(text)


def exported_series() -> frozenset[str]:
    """Series names as Prometheus stores them (counter _total, histogram _bucket/_sum/_count)."""
    return frozenset(
        family.name + suffix for family in _families() for suffix in SUFFIXES[family.type]
    )


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every target of every panel, nested rows included."""
    found = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        found.extend((panel["title"], t["expr"]) for t in panel.get("targets", []) if "expr" in t)
    return found


def metric_names(expr: str, variables: dict[str, str]) -> set[str]:
    """The metric names a query selects; raises ValueError for what cannot be checked."""
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            by_label = [
                m.value
                for m in node.matchers.matchers
                if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal
            ]
            if not node.name and not by_label:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            names.update([node.name] if node.name else by_label)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def unknown_metrics(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Per panel, the metric names its queries use that the control plane does not export."""
    variables = dict(GRAFANA_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        variables["$" + variable["name"]] = "x"
    exported = exported_series()
    unknown: dict[str, set[str]] = {}
    for title, expr in queries(dashboard):
        missing = metric_names(expr, variables) - exported
        if missing:
            unknown.setdefault(title, set()).update(missing)
    return unknown


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_query_names_only_metrics_the_control_plane_exports() -> None:
    dashboard = _dashboard()
    assert len(queries(dashboard)) >= 10
    assert unknown_metrics(dashboard) == {}


def test_exported_series_carry_the_suffixes_prometheus_stores() -> None:
    exported = exported_series()
    assert {
        "routeplane_convergence_seconds_bucket",
        "routeplane_convergence_seconds_count",
        "routeplane_xds_nacks_total",
        "routeplane_connected_proxies",
        "routeplane_server_requests_per_second",
        "routeplane_registry_degraded",
    } <= exported
    assert "routeplane_xds_nacks" not in exported  # a counter is only ever X_total
    assert "routeplane_convergence_seconds" not in exported


@pytest.mark.parametrize(
    "expr",
    [
        'sum(rate(routeplane_no_such_metric_total{job=~"$job"}[$__rate_interval]))',
        "routeplane_xds_nacks",  # the counter without _total
        "histogram_quantile(0.99, rate(routeplane_convergence_seconds[5m]))",  # no _bucket
        'sum(routeplane_connected_proxies) / on() group_left count({__name__="up"})',
    ],
    ids=["unknown", "counter without _total", "histogram without _bucket", "by __name__"],
)
def test_a_query_naming_an_unknown_metric_is_reported(expr: str) -> None:
    broken = copy.deepcopy(_dashboard())
    broken["panels"][0]["targets"][0]["expr"] = expr
    unknown = unknown_metrics(broken)
    assert list(unknown) == [broken["panels"][0]["title"]]


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(routeplane_xds_nacks_total[5m]",  # not PromQL
        '{__name__=~"routeplane_.+"}',  # names no metric that can be checked
        'routeplane_xds_nacks_total{job=~"$cluster"}',  # a variable the dashboard lacks
    ],
    ids=["unparsable", "no metric name", "unknown variable"],
)
def test_a_query_that_cannot_be_checked_fails_the_check(expr: str) -> None:
    broken = copy.deepcopy(_dashboard())
    broken["panels"][0]["targets"][0]["expr"] = expr
    with pytest.raises(ValueError):  # noqa: PT011 - promql-parser's and ours alike
        unknown_metrics(broken)


def test_the_dashboard_shows_everything_readme_says_to_monitor() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("**What to monitor.**", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"routeplane_[a-z_]+", section))
    assert len(named) >= 8
    used = set().union(
        *(
            metric_names(expr, {**GRAFANA_VARIABLES, "$job": "x", "$datasource": "x"})
            for _, expr in queries(_dashboard())
        )
    )
    for name in named:
        assert any(series.startswith(name) for series in used), f"{name} has no panel"

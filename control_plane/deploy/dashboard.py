"""The Grafana dashboard for routeplane (``deploy/grafana/routeplane.json``, written with the
manifests by ``deploy/kubernetes.py``): what README's "What to monitor" names, read from the
control plane's ``/metrics`` as scraped by the job in ``deploy/kubernetes/prometheus.yaml``.

Every query names only metrics ``control_plane/metrics.py`` exports (checked by
``tests/unit/deploy/test_dashboard.py``). Series are summed over control-plane replicas where each
replica sees only its own proxies (connected proxies, load reports).
"""

from __future__ import annotations

from typing import Any

SELECTOR = '{job=~"$job"}'
RATE = "$__rate_interval"

# (title, unit, [(PromQL, legend)]), in rows of two panels
Panel = tuple[str, str, list[tuple[str, str]]]


def _p99(metric: str, by: str) -> str:
    keys = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({keys}) (rate({metric}_bucket{SELECTOR}[{RATE}])))"


PANELS: tuple[Panel, ...] = (
    (
        "Convergence p99 per type (registry commit -> proxy ACK)",
        "s",
        [(_p99("routeplane_convergence_seconds", "type"), "{{type}}")],
    ),
    (
        "NACKs per second per type (any NACK: `routeplane proxies`)",
        "ops",
        [(f"sum by (type) (rate(routeplane_xds_nacks_total{SELECTOR}[{RATE}]))", "{{type}}")],
    ),
    (
        "Connected proxies per node group",
        "short",
        [(f"sum by (group) (routeplane_connected_proxies{SELECTOR})", "{{group}}")],
    ),
    (
        "Registry degraded (1 = cannot read) and rows left out",
        "short",
        [
            (f"max by (pod) (routeplane_registry_degraded{SELECTOR})", "degraded {{pod}}"),
            (f"max(routeplane_registry_problems{SELECTOR})", "problems"),
        ],
    ),
    (
        "Registry watch lag p99 (commit -> control plane)",
        "s",
        [(_p99("routeplane_registry_watch_lag_seconds", "pod"), "{{pod}}")],
    ),
    (
        "Admission: streams refused per second by reason",
        "ops",
        [
            (
                f"sum by (reason) (rate(routeplane_xds_streams_refused_total{SELECTOR}[{RATE}]))",
                "{{reason}}",
            ),
            (
                f"sum(rate(routeplane_node_groups_dropped_total{SELECTOR}[{RATE}]))",
                "node groups dropped",
            ),
        ],
    ),
    (
        "Pushes per second per type",
        "ops",
        [(f"sum by (type) (rate(routeplane_xds_pushes_total{SELECTOR}[{RATE}]))", "{{type}}")],
    ),
    (
        "Push bytes per second per type",
        "Bps",
        [
            (
                f"sum by (type) (rate(routeplane_xds_push_bytes_total{SELECTOR}[{RATE}]))",
                "{{type}}",
            )
        ],
    ),
    (
        "Snapshot build p99",
        "s",
        [(_p99("routeplane_snapshot_build_seconds", ""), "p99")],
    ),
    (
        "Requests per second per server (load reports)",
        "reqps",
        [
            (
                'sum by (server) (routeplane_server_requests_per_second{job=~"$job", region="*"})',
                "{{server}}",
            )
        ],
    ),
    (
        "Requests in flight per server and region",
        "short",
        [
            (
                "sum by (server, region) "
                '(routeplane_server_requests_in_flight{job=~"$job", region!="*"})',
                "{{server}} {{region}}",
            )
        ],
    ),
    (
        "Load reports: taken and refused per second, reporting proxies",
        "short",
        [
            (f"sum(rate(routeplane_load_reports_total{SELECTOR}[{RATE}]))", "taken/s"),
            (
                f"sum by (reason) (rate(routeplane_load_reports_rejected_total{SELECTOR}[{RATE}]))",
                "refused/s {{reason}}",
            ),
            (f"sum(routeplane_load_reporters{SELECTOR})", "reporting proxies"),
        ],
    ),
    (
        "Cold starts per second: requests that met a server with no replica",
        "reqps",
        [
            (
                f"sum by (server, mode) (rate(routeplane_cold_starts_total{SELECTOR}[{RATE}]))",
                "{{server}} ({{mode}})",
            )
        ],
    ),
)


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (import it, or provision the file)."""
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels = []
    for index, (title, unit, queries) in enumerate(PANELS):
        panels.append(
            {
                "id": index + 1,
                "type": "timeseries",
                "title": title,
                "datasource": datasource,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": chr(ord("A") + n),
                        "datasource": datasource,
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for n, (expr, legend) in enumerate(queries)
                ],
            }
        )
    return {
        "uid": "routeplane",
        "title": "routeplane",
        "tags": ["routeplane", "envoy", "xds"],
        "editable": True,
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                },
                {
                    "name": "job",
                    "label": "scrape job",
                    "type": "textbox",
                    "query": "routeplane",
                    "current": {"text": "routeplane", "value": "routeplane"},
                },
            ]
        },
        "panels": panels,
    }

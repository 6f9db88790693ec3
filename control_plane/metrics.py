"""Prometheus metrics, served at ``http://ADMIN/metrics``. Names are an API.

Counters and histograms live in the default registry; per-group gauges of live state are
collected at scrape time from the running server (``LiveCollector``), so they never drift.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)

PUSHES = Counter("routeplane_xds_pushes", "xDS responses sent", ["type"])
PUSH_BYTES = Counter("routeplane_xds_push_bytes", "Bytes of xDS responses sent", ["type"])
ACKS = Counter("routeplane_xds_acks", "ACKs received", ["type"])
NACKS = Counter("routeplane_xds_nacks", "NACKs received", ["type"])
CONVERGENCE = Histogram(
    "routeplane_convergence_seconds",
    "Registry commit to a proxy's ACK of the config that contains it (one per proxy per change)",
    ["type"],
    buckets=_LATENCY,
)
SNAPSHOT_BUILD = Histogram(
    "routeplane_snapshot_build_seconds",
    "Translate + build one node group's snapshot",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
)
WATCH_LAG = Histogram(
    "routeplane_registry_watch_lag_seconds",
    "Registry commit to the control plane applying it",
    buckets=_LATENCY,
)
PROBLEMS = Gauge("routeplane_registry_problems", "Registry rows left out of routing")
DEGRADED = Gauge("routeplane_registry_degraded", "1 while the registry cannot be read")
WATCH_POLLS = Counter(
    "routeplane_registry_watch_polls", "Times the registry watch looked at the store for a change"
)
GROUPS_DROPPED = Counter(
    "routeplane_node_groups_dropped", "Node groups forgotten after no stream watched them"
)
LOAD_REPORTS = Counter("routeplane_load_reports", "Load reports taken (LRS)")
LOAD_REPORTS_REJECTED = Counter(
    "routeplane_load_reports_rejected", "Load reports or streams refused", ["reason"]
)
LOAD_REPORT_ITEMS_IGNORED = Counter(
    "routeplane_load_report_items_ignored",
    "Load-report entries left out (clusters, localities, endpoints routeplane does not serve) "
    "and reports scaled down to the per-proxy bound (clipped)",
    ["reason"],
)
LOAD_REPORT_SECONDS = Histogram(
    "routeplane_load_report_seconds",
    "CPU-side time to take one load report",
    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
)
COLD_STARTS = Counter(
    "routeplane_cold_starts",
    "Requests that met a server with no replica (dropped in reject mode, held in hold mode)",
    ["server", "mode"],
)
LOAD_REPORTERS = Gauge("routeplane_load_reporters", "Proxies whose load report counts now")
STREAMS_REFUSED = Counter("routeplane_xds_streams_refused", "Streams refused", ["reason"])


class LoadCollector(Collector):  # type: ignore[misc]
    """Per server and region: requests in flight, requests/s and desired replicas, read from
    the load service at scrape time (rows with region "*" are the server's totals)."""

    def __init__(self, rows: Callable[[], Iterable[object]]) -> None:
        self._rows = rows

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ["server", "region"]
        in_flight = GaugeMetricFamily(
            "routeplane_server_requests_in_flight",
            "Requests in flight, summed over proxies",
            labels=labels,
        )
        rate = GaugeMetricFamily(
            "routeplane_server_requests_per_second",
            "Requests per second, summed over proxies",
            labels=labels,
        )
        desired = GaugeMetricFamily(
            "routeplane_server_desired_replicas",
            "Replicas the autoscaling rule recommends (servers with autoscaling only)",
            labels=labels,
        )
        for row in self._rows():
            key = [row.server, row.region]  # type: ignore[attr-defined]
            in_flight.add_metric(key, row.in_flight)  # type: ignore[attr-defined]
            rate.add_metric(key, row.requests_per_second)  # type: ignore[attr-defined]
            if row.desired_replicas is not None:  # type: ignore[attr-defined]
                desired.add_metric(key, row.desired_replicas)  # type: ignore[attr-defined]
        yield from (in_flight, rate, desired)


class LiveCollector(Collector):  # type: ignore[misc]
    """Connected proxies per node group, read from the server at scrape time."""

    def __init__(self, groups_of_streams: Callable[[], Iterable[str]]) -> None:
        self._groups = groups_of_streams

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "routeplane_connected_proxies", "Connected xDS streams per node group", labels=["group"]
        )
        for group, count in sorted(Tally(self._groups()).items()):
            family.add_metric([group], count)
        yield family

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
GROUPS_DROPPED = Counter(
    "routeplane_node_groups_dropped", "Node groups forgotten after no stream watched them"
)
STREAMS_REFUSED = Counter("routeplane_xds_streams_refused", "Streams refused", ["reason"])


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

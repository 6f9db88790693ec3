"""Prometheus metrics, served at ``http://ADMIN/metrics``. Names are an API.

Counters and histograms live in the default registry; per-group gauges of live state are
collected at scrape time from the running server (``LiveCollector``), so they never drift. The
per-server load families are rendered from a load view by ``LoadExposition``, which keeps each
server's lines until its rows change (10,000 servers are 90,000 series).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
FLEET_WRITES = Counter(
    "routeplane_fleet_load_writes", "Load records this process wrote to the registry (fleet)"
)
FLEET_WRITE_BYTES = Counter(
    "routeplane_fleet_load_write_bytes", "Bytes of load records this process wrote (fleet)"
)
FLEET_WRITES_FAILED = Counter(
    "routeplane_fleet_load_writes_failed", "Load records this process could not write (fleet)"
)
FLEET_RECORDS_IGNORED = Counter(
    "routeplane_fleet_load_records_ignored",
    "Other publishers' load records ignored or bounded: malformed, future, huge, clipped, behind",
    ["reason"],
)
FLEET_PARTIAL = Gauge(
    "routeplane_fleet_load_partial",
    "1 while the fleet's load records cannot be read: the load view is this process's own",
)
FLEET_PUBLISHERS = Gauge(
    "routeplane_fleet_load_publishers", "Other control-plane processes whose load counts here"
)
LOAD_REPORTERS = Gauge("routeplane_load_reporters", "Proxies whose load report counts now")
STREAMS_REFUSED = Counter("routeplane_xds_streams_refused", "Streams refused", ["reason"])
# Rollouts (control_plane/rollout/): one series per server with a rollout row (at most the
# driver's MAX_ROWS rows read; a server whose row goes loses its series), and three results.
# In a registry of their own, exported by the process that runs the driver (a lone serve, or
# a group's supervisor: its workers run none), appended to its /metrics.
ROLLOUT_REGISTRY = CollectorRegistry(auto_describe=True)
ROLLOUT_STEP = Gauge(
    "routeplane_rollout_step",
    "Percent of the running rollout's current step (0: none running)",
    ["server"],
    registry=ROLLOUT_REGISTRY,
)
ROLLOUT_VERDICTS = Counter(
    "routeplane_rollout_verdicts",
    "Rollouts ended by this process's driver, by result",
    ["result"],
    registry=ROLLOUT_REGISTRY,
)
for _result in ("succeeded", "rolled_back", "stopped"):
    ROLLOUT_VERDICTS.labels(result=_result)


def rollout_exposition() -> bytes:
    """The rollout families, as exposition text (``/metrics`` appends them)."""
    text: bytes = generate_latest(ROLLOUT_REGISTRY)
    return text


class LoadView(Protocol):
    """What the load families are rendered from: rows per server, a version that moves with
    any row, and which servers changed since an earlier version (None: too far back)."""

    @property
    def version(self) -> int: ...

    def servers(self) -> Sequence[str]: ...

    def rows_of(self, server: str) -> Sequence[Any]: ...

    def changes_since(self, version: int) -> frozenset[str] | None: ...


_LOAD_FAMILIES = (
    ("routeplane_server_requests_in_flight", "Requests in flight, summed over proxies"),
    ("routeplane_server_requests_per_second", "Requests per second, summed over proxies"),
    (
        "routeplane_server_desired_replicas",
        "Replicas the autoscaling rule recommends (servers with autoscaling only)",
    ),
    (
        "routeplane_revision_requests_per_second",
        "Requests per second to a server's replicas of one revision (servers with revisions "
        'only; revision "": replicas that carry none)',
    ),
    (
        "routeplane_revision_errors_per_second",
        "Errors per second from a server's replicas of one revision (servers with revisions only)",
    ),
    (
        "routeplane_utilization",
        "Mean utilization (ORCA, a fraction) of a server's replicas that report one, per region "
        "(absent while none does)",
    ),
)


# Where the load families start in an exposition (they come last).
LOAD_FAMILIES_START = f"# HELP {_LOAD_FAMILIES[0][0]} ".encode()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class LoadExposition:
    """Per server and region (region "*": the server's total): requests in flight,
    requests/s and desired replicas; per server and revision (servers whose replicas carry
    revisions): requests/s and errors/s; as exposition text appended to ``/metrics``.

    Every row is exported, zero load included (a series Prometheus knows of reads 0, not
    absent: ``avg_over_time`` and alerts on absence stay right, and an autoscaler reading
    ``desired_replicas`` never sees a gap). A server's lines are rendered when its rows
    change, not at every scrape, and the whole text once per version: an idle view of 10,000
    servers is served from memory."""

    def __init__(self, view: LoadView) -> None:
        self._view = view
        self._lines: dict[str, tuple[str, ...]] = {}  # server -> its lines per family
        self._version = -1
        self._text = b""

    def render(self) -> bytes:
        view = self._view
        version = view.version
        if version == self._version:
            return self._text
        changed = view.changes_since(self._version) if self._version >= 0 else None
        servers = view.servers()
        if changed is None:
            self._lines = {name: self._render(view.rows_of(name)) for name in servers}
        else:
            for name in changed:
                rows = view.rows_of(name)
                if rows:
                    self._lines[name] = self._render(rows)
                else:
                    self._lines.pop(name, None)
        lines = self._lines
        parts: list[str] = []
        for index, (family, help_text) in enumerate(_LOAD_FAMILIES):
            parts.append(f"# HELP {family} {help_text}\n# TYPE {family} gauge\n")
            parts.extend(lines[name][index] for name in servers if name in lines)
        self._text = "".join(parts).encode()
        self._version = version
        return self._text

    @staticmethod
    def _render(rows: Sequence[Any]) -> tuple[str, ...]:
        in_flight, rate, desired, revision_rate, revision_errors = [], [], [], [], []
        utilization = []
        for row in rows:
            labels = f'{{region="{_label(row.region)}",server="{_label(row.server)}"}}'
            in_flight.append(
                f"routeplane_server_requests_in_flight{labels} {floatToGoString(row.in_flight)}\n"
            )
            rate.append(
                f"routeplane_server_requests_per_second{labels} "
                f"{floatToGoString(row.requests_per_second)}\n"
            )
            used = getattr(row, "utilization", None)
            if used is not None:
                utilization.append(f"routeplane_utilization{labels} {floatToGoString(used)}\n")
            wanted = row.desired_replicas
            if wanted is not None and wanted >= 0:
                desired.append(
                    f"routeplane_server_desired_replicas{labels} {floatToGoString(wanted)}\n"
                )
            # "*" rows carry the server's revisions (at most 64: a bounded label set).
            for revision in row.revisions:
                by = f'{{revision="{_label(revision.revision)}",server="{_label(row.server)}"}}'
                revision_rate.append(
                    f"routeplane_revision_requests_per_second{by} "
                    f"{floatToGoString(revision.requests_per_second)}\n"
                )
                revision_errors.append(
                    f"routeplane_revision_errors_per_second{by} "
                    f"{floatToGoString(revision.errors_per_second)}\n"
                )
        return (
            "".join(in_flight),
            "".join(rate),
            "".join(desired),
            "".join(revision_rate),
            "".join(revision_errors),
            "".join(utilization),
        )


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

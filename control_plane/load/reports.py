"""Load reports -> load per server, region and replica. Pure: time is an argument, no I/O.

Every proxy (by node id) has at most one report in the book: its newest, per cluster. A report's
counters cover the interval Envoy says they do (``load_report_interval``), so rates are
``issued / interval``; requests in flight are Envoy's gauge at report time. Summing across
proxies gives a server's load; a proxy that goes (its stream ends, or it has not reported for
three intervals) stops counting, and one that reconnects replaces its own entry, so it is never
counted twice.

A report naming a cluster, a locality or an endpoint routeplane does not serve is ignored and
counted in :class:`Ignored`; counters past what one proxy could carry in one interval are
clipped. Nothing here raises on a report's content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# What one proxy can plausibly report for one locality in one interval; beyond is clipped.
MAX_COUNT = 10_000_000
MAX_INTERVAL = 3600.0
STALE_INTERVALS = 3.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalog:
    """What routeplane serves, as reports name it: cluster name -> server, the server's
    regions, and endpoint (ip, port) -> (replica id, region) per cluster."""

    servers: Mapping[str, str]
    regions: Mapping[str, frozenset[str]]
    endpoints: Mapping[str, Mapping[tuple[str, int], tuple[str, str]]]


@dataclass(slots=True)
class Counters:
    in_flight: float = 0.0
    issued: float = 0.0
    successful: float = 0.0
    errors: float = 0.0
    dropped: float = 0.0
    seconds: float = 0.0  # the interval the counts cover

    def add(self, other: Counters) -> None:
        self.in_flight += other.in_flight
        self.issued += other.issued
        self.successful += other.successful
        self.errors += other.errors
        self.dropped += other.dropped


@dataclass(slots=True)
class Ignored:
    clusters: int = 0
    localities: int = 0
    endpoints: int = 0
    clipped: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """The load of one server in one region ("*": all regions), summed over proxies."""

    in_flight: float
    requests_per_second: float
    errors_per_second: float
    dropped_per_second: float


@dataclass(slots=True)
class _ProxyReport:
    stream: int
    at: float
    interval: float
    # (server, region) -> counters; replica id -> counters
    localities: dict[tuple[str, str], Counters] = field(default_factory=dict)
    replicas: dict[str, Counters] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)  # server -> dropped / s


def _clip(value: int, ignored: Ignored) -> float:
    if value > MAX_COUNT:
        ignored.clipped += 1
        return float(MAX_COUNT)
    return float(value)


_NO_REGIONS: frozenset[str] = frozenset()
_NO_ENDPOINTS: Mapping[tuple[str, int], tuple[str, str]] = {}


class LoadBook:
    """The newest report of every proxy. Not thread-safe."""

    def __init__(self) -> None:
        self._proxies: dict[str, _ProxyReport] = {}
        self.ignored = Ignored()
        # Running sums of every proxy's report: (server, region) and replica -> [in flight,
        # requests/s, errors/s, dropped/s].
        self._totals: dict[tuple[str, str], list[float]] = {}
        self._replica_totals: dict[str, list[float]] = {}
        # Per server: requests that met no replica since the book began (cold starts), and
        # when the last one was seen. Reported drops are all cold starts (routeplane drops
        # only there); held requests are told by the control plane (``note_cold_start``).
        self.cold_starts: dict[str, int] = {}
        self.cold_start_events = 0  # moves with every cold start noted
        self.last_cold_start: dict[str, float] = {}

    def record(
        self,
        node_id: str,
        cluster_stats: Iterable[object],
        *,
        stream: int,
        now: float,
        asked_interval: float,
        catalog: Catalog,
    ) -> None:
        """Take one LoadStatsRequest's ``cluster_stats`` from ``node_id`` (on ``stream``).

        The hot path of load reporting: idle localities and endpoints (all counters zero) are
        skipped before anything else is read, and counters are read once each."""
        report = _ProxyReport(stream=stream, at=now, interval=asked_interval)
        ignored = self.ignored
        servers, all_regions, all_endpoints = catalog.servers, catalog.regions, catalog.endpoints
        localities, replicas = report.localities, report.replicas
        for stats in cluster_stats:
            name = stats.cluster_service_name or stats.cluster_name  # type: ignore[attr-defined]
            server = servers.get(name)
            if server is None:
                ignored.clusters += 1
                continue
            interval = _seconds(stats.load_report_interval)  # type: ignore[attr-defined]
            if 0 < interval <= MAX_INTERVAL:
                report.interval = interval
            dropped = stats.total_dropped_requests  # type: ignore[attr-defined]
            if dropped:
                clipped = _clip(dropped, ignored)
                report.dropped[server] = report.dropped.get(server, 0.0) + clipped
                self.note_cold_start(server, now=now, count=int(clipped))
            regions = all_regions.get(name, _NO_REGIONS)
            endpoints = all_endpoints.get(name, _NO_ENDPOINTS)
            for locality in stats.upstream_locality_stats:  # type: ignore[attr-defined]
                in_flight = locality.total_requests_in_progress
                issued = locality.total_issued_requests
                errors = locality.total_error_requests
                if not (in_flight or issued or errors):
                    continue  # idle: nothing to add
                region = locality.locality.region
                if region not in regions:
                    ignored.localities += 1
                    continue
                counters = localities.get((server, region))
                if counters is None:
                    counters = localities[(server, region)] = Counters()
                counters.in_flight += _clip(in_flight, ignored)
                counters.issued += _clip(issued, ignored)
                counters.errors += _clip(errors, ignored)
                for point in locality.upstream_endpoint_stats:
                    point_in_flight = point.total_requests_in_progress
                    point_issued = point.total_issued_requests
                    if not (point_in_flight or point_issued):
                        continue
                    socket = point.address.socket_address
                    replica = endpoints.get((socket.address, socket.port_value))
                    if replica is None:
                        ignored.endpoints += 1
                        continue
                    counted = replicas.get(replica[0])
                    if counted is None:
                        counted = replicas[replica[0]] = Counters()
                    counted.in_flight += _clip(point_in_flight, ignored)
                    counted.issued += _clip(point_issued, ignored)
                    counted.errors += _clip(point.total_error_requests, ignored)
        self._replace(node_id, report)

    def note_cold_start(self, server: str, *, now: float, count: int = 1) -> None:
        """``count`` requests for ``server`` met no replica."""
        self.cold_starts[server] = self.cold_starts.get(server, 0) + count
        self.last_cold_start[server] = now
        self.cold_start_events += 1

    def last_report(self, node_id: str) -> float | None:
        report = self._proxies.get(node_id)
        return report.at if report is not None else None

    def forget(self, node_id: str, *, stream: int) -> None:
        """The proxy's stream ``stream`` ended: its report stops counting (unless a newer
        stream of the same node already replaced it)."""
        report = self._proxies.get(node_id)
        if report is not None and report.stream == stream:
            self._apply(self._proxies.pop(node_id), sign=-1.0)

    def expire(self, now: float) -> list[str]:
        """Forget proxies silent for three of their intervals; returns their node ids."""
        gone = [
            node
            for node, report in self._proxies.items()
            if now - report.at > STALE_INTERVALS * report.interval
        ]
        for node in gone:
            self._apply(self._proxies.pop(node), sign=-1.0)
        return gone

    @property
    def proxies(self) -> int:
        return len(self._proxies)

    def loads(self) -> tuple[dict[tuple[str, str], Load], dict[str, Load]]:
        """Per (server, region), with (server, "*") the server's total; and per replica id.
        Kept up to date report by report, so this costs the number of keys, not of proxies."""
        return (
            {key: _load(*rates) for key, rates in self._totals.items() if any(rates)},
            {key: _load(*rates) for key, rates in self._replica_totals.items() if any(rates)},
        )

    def _replace(self, node_id: str, report: _ProxyReport) -> None:
        previous = self._proxies.get(node_id)
        if previous is not None:
            self._apply(previous, sign=-1.0)
        self._proxies[node_id] = report
        self._apply(report, sign=1.0)

    def _apply(self, report: _ProxyReport, *, sign: float) -> None:
        """Add (``sign`` 1) or take away (-1) one report's rates from the running totals."""
        per_second = sign / max(report.interval, 1e-3)
        totals = self._totals
        for (server, region), counters in report.localities.items():
            for key in ((server, region), (server, "*")):
                rates = totals.get(key)
                if rates is None:
                    rates = totals[key] = [0.0, 0.0, 0.0, 0.0]
                rates[0] += sign * counters.in_flight
                rates[1] += per_second * counters.issued
                rates[2] += per_second * counters.errors
        for server, dropped in report.dropped.items():
            rates = totals.get((server, "*"))
            if rates is None:
                rates = totals[(server, "*")] = [0.0, 0.0, 0.0, 0.0]
            rates[3] += per_second * dropped
        replica_totals = self._replica_totals
        for replica, counters in report.replicas.items():
            rates = replica_totals.get(replica)
            if rates is None:
                rates = replica_totals[replica] = [0.0, 0.0, 0.0, 0.0]
            rates[0] += sign * counters.in_flight
            rates[1] += per_second * counters.issued
            rates[2] += per_second * counters.errors
        if sign < 0:  # keep the totals small and exact at zero
            for table in (totals, replica_totals):
                for key in set(_keys(report, table is totals)):
                    rates = table.get(key)
                    if rates is not None and all(abs(v) < 1e-9 for v in rates):
                        del table[key]


def _keys(report: _ProxyReport, totals: bool) -> list[Any]:
    if not totals:
        return list(report.replicas)
    keys: list[Any] = [(server, "*") for server in report.dropped]
    for server, region in report.localities:
        keys.extend(((server, region), (server, "*")))
    return keys


def _load(in_flight: float, issued: float, errors: float, dropped: float) -> Load:
    return Load(
        in_flight=max(0.0, in_flight),
        requests_per_second=max(0.0, issued),
        errors_per_second=max(0.0, errors),
        dropped_per_second=max(0.0, dropped),
    )


def _seconds(duration: object) -> float:
    seconds: int = duration.seconds  # type: ignore[attr-defined]
    nanos: int = duration.nanos  # type: ignore[attr-defined]
    return float(seconds) + nanos / 1e9

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
    regions, and endpoint ``ip:port`` -> (replica id, region) per cluster."""

    servers: Mapping[str, str]
    regions: Mapping[str, frozenset[str]]
    endpoints: Mapping[str, Mapping[str, tuple[str, str]]]


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


def _count(value: int, ignored: Ignored) -> float:
    if value > MAX_COUNT:
        ignored.clipped += 1
        return float(MAX_COUNT)
    return float(value)


class LoadBook:
    """The newest report of every proxy. Not thread-safe."""

    def __init__(self) -> None:
        self._proxies: dict[str, _ProxyReport] = {}
        self.ignored = Ignored()

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
        """Take one LoadStatsRequest's ``cluster_stats`` from ``node_id`` (on ``stream``)."""
        report = _ProxyReport(stream=stream, at=now, interval=asked_interval)
        ignored = self.ignored
        for stats in cluster_stats:
            name = stats.cluster_service_name or stats.cluster_name  # type: ignore[attr-defined]
            server = catalog.servers.get(name)
            if server is None:
                ignored.clusters += 1
                continue
            interval = _seconds(stats.load_report_interval)  # type: ignore[attr-defined]
            if 0 < interval <= MAX_INTERVAL:
                report.interval = interval
            regions = catalog.regions.get(name, frozenset())
            endpoints = catalog.endpoints.get(name, {})
            dropped = _count(stats.total_dropped_requests, ignored)  # type: ignore[attr-defined]
            report.dropped[server] = report.dropped.get(server, 0.0) + dropped
            for locality in stats.upstream_locality_stats:  # type: ignore[attr-defined]
                region = locality.locality.region
                if region not in regions:
                    ignored.localities += 1
                    continue
                counters = report.localities.setdefault((server, region), Counters())
                counters.add(_counters(locality, ignored))
                for endpoint in locality.upstream_endpoint_stats:
                    socket = endpoint.address.socket_address
                    replica = endpoints.get(f"{socket.address}:{socket.port_value}")
                    if replica is None:
                        ignored.endpoints += 1
                        continue
                    report.replicas.setdefault(replica[0], Counters()).add(
                        _counters(endpoint, ignored)
                    )
        self._proxies[node_id] = report

    def last_report(self, node_id: str) -> float | None:
        report = self._proxies.get(node_id)
        return report.at if report is not None else None

    def forget(self, node_id: str, *, stream: int) -> None:
        """The proxy's stream ``stream`` ended: its report stops counting (unless a newer
        stream of the same node already replaced it)."""
        report = self._proxies.get(node_id)
        if report is not None and report.stream == stream:
            del self._proxies[node_id]

    def expire(self, now: float) -> list[str]:
        """Forget proxies silent for three of their intervals; returns their node ids."""
        gone = [
            node
            for node, report in self._proxies.items()
            if now - report.at > STALE_INTERVALS * report.interval
        ]
        for node in gone:
            del self._proxies[node]
        return gone

    @property
    def proxies(self) -> int:
        return len(self._proxies)

    def loads(self) -> tuple[dict[tuple[str, str], Load], dict[str, Load]]:
        """Per (server, region), with (server, "*") the server's total; and per replica id."""
        totals: dict[Any, tuple[Counters, float]] = {}
        replicas: dict[Any, tuple[Counters, float]] = {}
        for report in self._proxies.values():
            seconds = max(report.interval, 1e-3)
            for (server, region), counters in report.localities.items():
                for key in ((server, region), (server, "*")):
                    _accumulate(totals, key, counters, seconds)
            for server, dropped in report.dropped.items():
                entry = totals.setdefault((server, "*"), (Counters(), 0.0))
                totals[(server, "*")] = (entry[0], entry[1] + dropped / seconds)
            for replica, counters in report.replicas.items():
                _accumulate(replicas, replica, counters, seconds)
        return (
            {key: _load(*value) for key, value in totals.items()},
            {key: _load(*value) for key, value in replicas.items()},
        )


def _accumulate(
    into: dict[Any, tuple[Counters, float]], key: object, counters: Counters, seconds: float
) -> None:
    entry = into.get(key)
    rates = entry[0] if entry is not None else Counters()
    rates.in_flight += counters.in_flight
    rates.issued += counters.issued / seconds
    rates.errors += counters.errors / seconds
    into[key] = (rates, entry[1] if entry is not None else 0.0)


def _load(rates: Counters, dropped_per_second: float) -> Load:
    return Load(
        in_flight=rates.in_flight,
        requests_per_second=rates.issued,
        errors_per_second=rates.errors,
        dropped_per_second=dropped_per_second,
    )


def _counters(stats: object, ignored: Ignored) -> Counters:
    return Counters(
        in_flight=_count(stats.total_requests_in_progress, ignored),  # type: ignore[attr-defined]
        issued=_count(stats.total_issued_requests, ignored),  # type: ignore[attr-defined]
        successful=_count(stats.total_successful_requests, ignored),  # type: ignore[attr-defined]
        errors=_count(stats.total_error_requests, ignored),  # type: ignore[attr-defined]
    )


def _seconds(duration: object) -> float:
    seconds: int = duration.seconds  # type: ignore[attr-defined]
    nanos: int = duration.nanos  # type: ignore[attr-defined]
    return float(seconds) + nanos / 1e9

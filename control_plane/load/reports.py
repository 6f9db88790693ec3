"""Load reports -> load per server, region and replica. Pure: time is an argument, no I/O.

Every LRS stream has at most one report in the book: its newest. A stream replaces only its own
report, never another stream's, even one that claims the same node id: a proxy can describe
only itself, so a forged report can add at most one proxy's bounded load and can never hide a
real one. A report's counters cover the interval Envoy says they do (``load_report_interval``),
so rates are ``issued / interval``; requests in flight are Envoy's gauge at report time. Summing
across streams gives a server's load; a stream that ends, or has not reported for three
intervals, stops counting (a proxy that reconnects is counted by its new stream once the old
one ends or goes quiet).

A report is merged first (entries naming the same cluster, locality or endpoint are added up),
then bounded: what one report can contribute per server and in total (:data:`PER_SERVER`,
:data:`PER_PROXY`) is scaled down to the bound. A report naming a cluster, a locality or an
endpoint routeplane does not serve is ignored; both are counted in :class:`Ignored`. Reported
drops are cold-start demand only for a server with no ready replica. Nothing here raises on a
report's content.

Utilization (ORCA, issue 27): Envoy puts the metrics a cluster names in
``lrs_report_endpoint_metrics`` (``translate/clusters.py``) in each endpoint's
``load_metric_stats``: per metric, the sum of the values the replica reported on the requests
that finished in the interval, and how many did. One metric per server is read (the catalog's:
the autoscaling rule's ``metric``, or Envoy's order: ``application_utilization`` where above 0,
else ``cpu_utilization``; Envoy 1.40 reports a standard metric a response left out as 0). An
entry's mean (``total / count``) is a fraction: a negative one counts as 0 and one above 1 as 1
(a named metric too: it is read as a utilization); a NaN or infinite one, or a count of
none, is left out; each such entry is counted (``Ignored.utilization``). At most
:data:`MAX_METRIC_ENTRIES` entries are read per endpoint (an honest Envoy sends one per named
metric). A replica's utilization over several proxies is the mean weighted by the requests that
carried it: kept as two rates that add up, ``value`` (mean x requests per second) and
``weight`` (requests with the metric per second), bounded like requests per second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from typing import Any

MAX_INTERVAL = 3600.0
STALE_INTERVALS = 3.0
MAX_METRIC_ENTRIES = 16  # load_metric_stats read per endpoint (Envoy sends one per metric)
DEFAULT_METRICS = ("application_utilization", "cpu_utilization")  # Envoy's order


@dataclass(frozen=True, slots=True, kw_only=True)
class Bound:
    """The most one proxy's report can contribute: requests in flight, and requests, errors
    and drops per second."""

    in_flight: float
    requests_per_second: float
    errors_per_second: float
    dropped_per_second: float


# One proxy, one server (summed over its regions, and over its replicas): Envoy's default
# circuit breaker holds 1,024 requests per cluster; one proxy sending 100,000 requests a second
# to one server is already far past one Envoy's few cores.
PER_SERVER = Bound(
    in_flight=10_000,
    requests_per_second=100_000,
    errors_per_second=100_000,
    dropped_per_second=100_000,
)
# One proxy, all servers together.
PER_PROXY = Bound(
    in_flight=100_000,
    requests_per_second=1_000_000,
    errors_per_second=1_000_000,
    dropped_per_second=1_000_000,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalog:
    """What routeplane serves, as reports name it: cluster name -> server, the server's
    regions, endpoint (ip, port) -> (replica id, region) per cluster, the cluster names of
    servers with no ready replica (where a drop is a cold start)."""

    servers: Mapping[str, str]
    regions: Mapping[str, frozenset[str]]
    endpoints: Mapping[str, Mapping[tuple[str, int], tuple[str, str]]]
    idle: frozenset[str] = frozenset()
    # Clusters of routeplane's own bootstrap (the xDS cluster): reported, never load, never
    # counted as ignored.
    own: frozenset[str] = frozenset()
    # Cluster name -> the ORCA metric read as its replicas' utilization ("" or absent: Envoy's
    # order, ``DEFAULT_METRICS``).
    metrics: Mapping[str, str] = field(default_factory=dict)
    # The clusters whose endpoint entries are read (per replica load and utilization: those
    # of servers with an autoscaling rule, utilization balancing or revisions); None: every
    # cluster's. Another cluster's endpoint entries are skipped unread.
    per_replica: frozenset[str] | None = None

    @property
    def granular(self) -> bool:
        """Whether any cluster's endpoint entries are read (proxies are asked for them)."""
        return self.per_replica is None or bool(self.per_replica)


@dataclass(slots=True)
class Ignored:
    """What reports named that routeplane does not serve (clusters, localities, endpoints),
    and the reports scaled down to a bound (``clipped``)."""

    clusters: int = 0
    localities: int = 0
    endpoints: int = 0
    clipped: int = 0
    utilization: int = 0  # metric entries clipped to [0, 1] or left out (NaN, inf, too many)

    def add(self, other: Ignored) -> None:
        for name in _IGNORED_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def items(self) -> list[tuple[str, int]]:
        """(reason, count) for every reason with a count."""
        return [(name, getattr(self, name)) for name in _IGNORED_FIELDS if getattr(self, name)]


_IGNORED_FIELDS = tuple(f.name for f in fields(Ignored))


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """The load of one server in one region ("*": all regions), summed over proxies."""

    in_flight: float
    requests_per_second: float
    errors_per_second: float
    dropped_per_second: float


@dataclass(slots=True)
class _ProxyReport:
    node_id: str
    at: float
    interval: float
    # Rates, bounded: (server, region) -> [in flight, requests/s, errors/s]; (server, replica
    # id) -> the same and utilization value/s, weight/s; server -> dropped / s.
    localities: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    replicas: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)


class Draft:
    """One report being read, merged before it is bounded: counters are exact integers added
    up per (server, region), per (server, replica) and per server, whatever order and however
    many times a report repeats an entry. ``add`` may be called with slices of a report."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.ignored = Ignored()
        self.interval = 0.0
        # (server, region) -> [in flight, issued, errors]; (server, replica) -> the same.
        self.localities: dict[tuple[str, str], list[int]] = {}
        self.replicas: dict[tuple[str, str], list[int]] = {}
        # (server, replica) -> [sum of clipped means x requests, requests with the metric].
        self.utilization: dict[tuple[str, str], list[float]] = {}
        self.dropped: dict[str, int] = {}  # server -> drops
        self.idle_dropped: dict[str, int] = {}  # the same, for servers with no ready replica
        # A locality whose endpoint entries are read had load and none: the report was sent
        # per locality (before its proxy read an ask for endpoint entries), so its replicas'
        # load is not in it. (Envoy lists every endpoint with load when asked to.)
        self.coarse = False

    def add(self, cluster_stats: Iterable[object]) -> None:
        """Read ``cluster_stats`` (``ClusterStats`` messages). The hot path of load reporting:
        idle localities and endpoints (all counters zero) are skipped before anything else is
        read, and counters are read once each."""
        ignored = self.ignored
        catalog = self.catalog
        servers, all_regions, all_endpoints = catalog.servers, catalog.regions, catalog.endpoints
        localities, replicas = self.localities, self.replicas
        per_replica = catalog.per_replica
        for stats in cluster_stats:
            name = stats.cluster_service_name or stats.cluster_name  # type: ignore[attr-defined]
            server = servers.get(name)
            if server is None:
                if name not in catalog.own:
                    ignored.clusters += 1
                continue
            duration = stats.load_report_interval  # type: ignore[attr-defined]
            interval = duration.seconds + duration.nanos / 1e9
            if 0 < interval <= MAX_INTERVAL:
                self.interval = interval
            dropped = stats.total_dropped_requests  # type: ignore[attr-defined]
            if dropped:
                self.dropped[server] = self.dropped.get(server, 0) + dropped
                if name in catalog.idle:
                    self.idle_dropped[server] = self.idle_dropped.get(server, 0) + dropped
            regions = all_regions.get(name, _NO_REGIONS)
            # Endpoint entries are read only for a server whose replicas are (its endpoints
            # and metric looked up once it has one).
            read_points = per_replica is None or name in per_replica
            endpoints: Mapping[tuple[str, int], tuple[str, str]] | None = None
            metric = ""
            for locality in stats.upstream_locality_stats:  # type: ignore[attr-defined]
                in_flight = locality.total_requests_in_progress
                issued = locality.total_issued_requests
                errors = locality.total_error_requests
                if not (in_flight or issued or errors or locality.load_metric_stats):
                    continue  # idle: nothing to add (metrics come of requests that finished)
                region = locality.locality.region
                if region not in regions:
                    ignored.localities += 1
                    continue
                counts = localities.get((server, region))
                if counts is None:
                    localities[(server, region)] = [in_flight, issued, errors]
                else:
                    counts[0] += in_flight
                    counts[1] += issued
                    counts[2] += errors
                if not read_points:
                    continue
                points = locality.upstream_endpoint_stats
                if not points:
                    self.coarse = True
                    continue
                for point in points:
                    point_in_flight = point.total_requests_in_progress
                    point_issued = point.total_issued_requests
                    point_errors = point.total_error_requests
                    metric_stats = point.load_metric_stats
                    if not (point_in_flight or point_issued or point_errors or metric_stats):
                        continue
                    if endpoints is None:
                        endpoints = all_endpoints.get(name, _NO_ENDPOINTS)
                        metric = catalog.metrics.get(name, "")
                    socket = point.address.socket_address
                    replica = endpoints.get((socket.address, socket.port_value))
                    if replica is None:
                        ignored.endpoints += 1
                        continue
                    key = (server, replica[0])
                    if metric_stats:
                        self._utilization(key, metric_stats, metric)
                    counts = replicas.get(key)
                    if counts is None:
                        replicas[key] = [point_in_flight, point_issued, point_errors]
                    else:
                        counts[0] += point_in_flight
                        counts[1] += point_issued
                        counts[2] += point_errors

    def _utilization(self, key: tuple[str, str], stats: Any, metric: str) -> None:
        """Add one endpoint's ``load_metric_stats`` entry for ``metric`` ("": Envoy's order)
        to ``key``'s utilization, clipped (see the module docstring). Each entry's name is
        read once; its figures only if it is the one."""
        if len(stats) > MAX_METRIC_ENTRIES:
            self.ignored.utilization += 1
            stats = stats[:MAX_METRIC_ENTRIES]
        chosen = None
        if metric:
            for entry in stats:
                if entry.metric_name == metric:
                    chosen = entry
                    break
        else:
            first, second = DEFAULT_METRICS
            fallback = None
            for entry in stats:
                name = entry.metric_name
                if name == first:
                    if entry.total_metric_value > 0:
                        chosen = entry
                        break
                    fallback = fallback or entry
                elif name == second:
                    fallback = entry
            chosen = chosen or fallback
        if chosen is None:
            return
        total, count = chosen.total_metric_value, chosen.num_requests_finished_with_metric
        if count <= 0 or not math.isfinite(total):
            self.ignored.utilization += 1
            return
        mean = total / count
        if not 0.0 <= mean <= 1.0:
            self.ignored.utilization += 1
            mean = min(max(mean, 0.0), 1.0)
        sums = self.utilization.get(key)
        if sums is None:
            self.utilization[key] = [mean * count, float(count)]
        else:
            sums[0] += mean * count
            sums[1] += count


_NO_REGIONS: frozenset[str] = frozenset()
_NO_ENDPOINTS: Mapping[tuple[str, int], tuple[str, str]] = {}


def _bounded(
    draft: Draft, *, node_id: str, now: float, asked_interval: float
) -> tuple[_ProxyReport, dict[str, float]]:
    """The draft as rates within :data:`PER_SERVER` and :data:`PER_PROXY`, and the cold starts
    it tells of (drops, bounded alike, for servers with no ready replica)."""
    # Rates are over the interval Envoy says the counts cover, within a quarter and four times
    # what was asked: a claimed interval far shorter would inflate every rate.
    interval = min(max(draft.interval or asked_interval, asked_interval / 4), 4 * asked_interval)
    interval = max(interval, 1e-3)
    report = _ProxyReport(node_id=node_id, at=now, interval=interval)
    per_second = 1.0 / interval
    # Rates per server, each within PER_SERVER (scaled: the regions keep their proportions),
    # then all of them within PER_PROXY. Each bound's sums are kept in one pass, in the order
    # ``_scale`` would add them, and a group is scaled only when they pass it (an honest
    # report never does): the per-report cost is one pass over its entries.
    localities = report.localities
    server_sums: dict[str, list[float]] = {}
    proxy_sums = [0.0, 0.0, 0.0]
    for key, counts in draft.localities.items():
        rates = [float(counts[0]), counts[1] * per_second, counts[2] * per_second]
        localities[key] = rates
        _add_to(server_sums, key[0], rates)
        proxy_sums[0] += rates[0]
        proxy_sums[1] += rates[1]
        proxy_sums[2] += rates[2]
    replicas = report.replicas
    replica_sums: dict[str, list[float]] = {}
    replica_proxy = [0.0, 0.0, 0.0]
    utilization = draft.utilization
    for key, counts in draft.replicas.items():
        rates = [float(counts[0]), counts[1] * per_second, counts[2] * per_second, 0.0, 0.0]
        if utilization:
            used = utilization.get(key)
            if used is not None:
                rates[3], rates[4] = used[0] * per_second, used[1] * per_second
        replicas[key] = rates
        _add_to(replica_sums, key[0], rates)
        replica_proxy[0] += rates[0]
        replica_proxy[1] += rates[1]
        replica_proxy[2] += rates[2]
    clipped = False
    limits = (PER_SERVER.in_flight, PER_SERVER.requests_per_second, PER_SERVER.errors_per_second)
    scaled = False
    for sums, entries in ((server_sums, localities), (replica_sums, replicas)):
        for server, total in sums.items():
            if _past(total, limits):
                group = [rates for key, rates in entries.items() if key[0] == server]
                clipped |= _scale(group, limits)
                scaled = True
    # Utilization: the requests that carried it within the bound of requests per second,
    # value and weight scaled together (the mean stays).
    if utilization:
        by_server: dict[str, list[list[float]]] = {}
        for (server, _), rates in replicas.items():
            by_server.setdefault(server, []).append(rates)
        for rows in by_server.values():
            clipped |= _scale_pairs(rows, PER_SERVER.requests_per_second)
        clipped |= _scale_pairs(list(replicas.values()), PER_PROXY.requests_per_second)
    proxy_limits = (PER_PROXY.in_flight, PER_PROXY.requests_per_second, PER_PROXY.errors_per_second)
    if scaled or _past(proxy_sums, proxy_limits):
        clipped |= _scale(list(localities.values()), proxy_limits)
    if scaled or _past(replica_proxy, proxy_limits):
        clipped |= _scale(list(replicas.values()), proxy_limits)
    total_dropped = 0.0
    for server, count in draft.dropped.items():
        rate = count * per_second
        if rate > PER_SERVER.dropped_per_second:
            rate, clipped = PER_SERVER.dropped_per_second, True
        report.dropped[server] = rate
        total_dropped += rate
    if total_dropped > PER_PROXY.dropped_per_second:
        factor = PER_PROXY.dropped_per_second / total_dropped
        clipped = True
        for server in report.dropped:
            report.dropped[server] *= factor
    cold: dict[str, float] = {}
    for server in draft.idle_dropped:
        # The share of the server's (bounded) drops that met no ready replica.
        share = draft.idle_dropped[server] / draft.dropped[server]
        cold[server] = report.dropped[server] * share * interval
    if clipped:
        draft.ignored.clipped += 1
    return report, cold


def _add_to(sums: dict[str, list[float]], server: str, rates: list[float]) -> None:
    have = sums.get(server)
    if have is None:
        sums[server] = [rates[0], rates[1], rates[2]]
    else:
        have[0] += rates[0]
        have[1] += rates[1]
        have[2] += rates[2]


def _past(sums: list[float], limits: tuple[float, ...]) -> bool:
    return sums[0] > limits[0] or sums[1] > limits[1] or sums[2] > limits[2]


def _scale(rows: list[list[float]], limits: tuple[float, ...]) -> bool:
    """Scale column ``i`` of ``rows`` down so that it sums to at most ``limits[i]``; True if
    any column was."""
    scaled = False
    for column, limit in enumerate(limits):
        total = sum(row[column] for row in rows)
        if total > limit:
            factor = limit / total
            for row in rows:
                row[column] *= factor
            scaled = True
    return scaled


def _scale_pairs(rows: list[list[float]], limit: float) -> bool:
    """Scale columns 3 and 4 (utilization value and weight) of ``rows`` down together so that
    the weights sum to at most ``limit``; True if they were."""
    total = sum(row[4] for row in rows)
    if total <= limit:
        return False
    factor = limit / total
    for row in rows:
        row[3] *= factor
        row[4] *= factor
    return True


class LoadBook:
    """The newest report of every stream. Not thread-safe."""

    def __init__(self) -> None:
        self._streams: dict[int, _ProxyReport] = {}
        self.ignored = Ignored()
        # Running sums of every stream's report: (server, region) -> [in flight, requests/s,
        # errors/s, dropped/s]; (server, replica id) -> [in flight, requests/s, errors/s,
        # utilization value/s, utilization weight/s].
        self._totals: dict[tuple[str, str], list[float]] = {}
        self._replicas: dict[str, dict[str, list[float]]] = {}  # by server, then replica id
        # Per server: requests that met no replica since the book began (cold starts), and
        # when the last one was seen. Reported drops of a server with no ready replica are
        # cold starts (routeplane drops only there); held requests are told by the control
        # plane (``note_cold_start``).
        self.cold_starts: dict[str, int] = {}
        self.cold_start_events = 0  # moves with every cold start noted
        self.last_cold_start: dict[str, float] = {}
        # Per stream whose report in force carries the endpoint entries of every locality with
        # load it read them for (``Draft.coarse``): when its reading began (its catalog was the
        # one of then). A server whose replicas' load starts to be read waits for every
        # stream's report read after that (``lagging``).
        self._granular: dict[int, float] = {}

    def record(
        self,
        node_id: str,
        cluster_stats: Iterable[object],
        *,
        stream: int,
        now: float,
        asked_interval: float,
        catalog: Catalog,
    ) -> Ignored:
        """Take one LoadStatsRequest's ``cluster_stats`` from ``stream`` (which said it is
        ``node_id``), read with ``catalog`` at ``now``; returns what this report had ignored or
        clipped."""
        draft = Draft(catalog)
        draft.add(cluster_stats)
        return self.commit(
            draft,
            node_id=node_id,
            stream=stream,
            now=now,
            asked_interval=asked_interval,
            read_from=now,
        )

    def commit(
        self,
        draft: Draft,
        *,
        node_id: str,
        stream: int,
        now: float,
        asked_interval: float,
        read_from: float | None = None,
    ) -> Ignored:
        """Bound ``draft`` and make it ``stream``'s report in force; returns what it had
        ignored or clipped. ``read_from``: when its reading began (its catalog was the one of
        then; None: not known)."""
        report, cold = _bounded(draft, node_id=node_id, now=now, asked_interval=asked_interval)
        for server, count in cold.items():
            # A count made back from a rate (drops / interval * interval) may be a hair under
            # the whole it was (0.9999999999999999 for one drop): rounded first, not truncated.
            whole = int(round(count, 6))
            if whole >= 1:
                self.note_cold_start(server, now=now, count=whole)
        previous = self._streams.get(stream)
        self._streams[stream] = report
        if read_from is not None and not draft.coarse:
            self._granular[stream] = read_from
        else:
            self._granular.pop(stream, None)
        if previous is None:
            self._apply(report, sign=1.0)
        else:
            self._replace(previous, report)
        self.ignored.add(draft.ignored)
        return draft.ignored

    def note_cold_start(self, server: str, *, now: float, count: int = 1) -> None:
        """``count`` requests for ``server`` met no replica."""
        self.cold_starts[server] = self.cold_starts.get(server, 0) + count
        self.last_cold_start[server] = now
        self.cold_start_events += 1

    def forget_server(self, server: str) -> None:
        """``server`` left the routing table: its cold starts are forgotten, so a server
        created again under the same name starts from none (not from the old count, which
        would read as new demand and wake it)."""
        self.cold_starts.pop(server, None)
        self.last_cold_start.pop(server, None)

    def last_report(self, stream: int) -> float | None:
        report = self._streams.get(stream)
        return report.at if report is not None else None

    def oldest_read(self, live: AbstractSet[int] = frozenset()) -> float:
        """When the reading of the oldest report in force began, counting a report that lacks
        endpoint entries (``Draft.coarse``), and a ``live`` stream with none in force yet, as
        read never (-inf): every stream's replica load, as the catalog of after that time
        reads it, is in. One pass over the streams, whatever the servers waiting on it."""
        granular, streams = self._granular, self._streams
        if any(stream not in streams for stream in live):
            return -math.inf
        return min((granular.get(stream, -math.inf) for stream in streams), default=math.inf)

    def lagging(self, since: float, live: AbstractSet[int] = frozenset()) -> int:
        """How many streams' reports in force (or ``live`` streams with none) were not read
        after ``since`` with their endpoint entries (for a log line)."""
        granular, streams = self._granular, self._streams
        missing = sum(1 for stream in live if stream not in streams)
        return missing + sum(1 for stream in streams if granular.get(stream, since) <= since)

    def forget(self, stream: int) -> None:
        """``stream`` ended: its report stops counting."""
        self._granular.pop(stream, None)
        report = self._streams.pop(stream, None)
        if report is not None:
            self._apply(report, sign=-1.0)

    def expire(self, now: float) -> list[str]:
        """Forget streams silent for three of their intervals; returns their node ids."""
        gone = [
            stream
            for stream, report in self._streams.items()
            if now - report.at > STALE_INTERVALS * report.interval
        ]
        nodes = []
        for stream in gone:
            report = self._streams.pop(stream)
            self._granular.pop(stream, None)
            self._apply(report, sign=-1.0)
            nodes.append(report.node_id)
        return nodes

    @property
    def proxies(self) -> int:
        """Streams whose report counts now."""
        return len(self._streams)

    def loads(self) -> tuple[dict[tuple[str, str], Load], dict[tuple[str, str], Load]]:
        """Per (server, region), with (server, "*") the server's total; and per (server,
        replica id). Kept up to date report by report, so this costs the number of keys, not
        of proxies."""
        replicas = {
            (server, replica): _load(rates[0], rates[1], rates[2], 0.0)
            for server, mine in self._replicas.items()
            for replica, rates in mine.items()
            if _some(rates)
        }
        return self.region_loads(), replicas

    def region_loads(self) -> dict[tuple[str, str], Load]:
        """Per (server, region), with (server, "*") the server's total."""
        return {key: _load(*rates) for key, rates in self._totals.items() if _some(rates)}

    def replica_loads(self, server: str) -> list[tuple[str, int, int, int, int, int]]:
        """``server``'s replicas with requests in flight, or requests or errors per second, or
        utilization: (replica id, in flight, requests per second, errors per second,
        utilization value and weight per second), in whole millionths, sorted by id. The hot
        path of a tick for a server with many replicas: costs its replicas with load, a
        multiplication per figure."""
        mine = self._replicas.get(server)
        if not mine:
            return []
        found = []
        for replica, rates in mine.items():
            in_flight = round(rates[0] * 1_000_000)
            requests = round(rates[1] * 1_000_000)
            errors = round(rates[2] * 1_000_000)
            weight = round(rates[4] * 1_000_000)
            if in_flight > 0 or requests > 0 or errors > 0 or weight > 0:
                value = round(rates[3] * 1_000_000) if weight > 0 else 0
                found.append(
                    (
                        replica,
                        max(in_flight, 0),
                        max(requests, 0),
                        max(errors, 0),
                        min(max(value, 0), weight) if weight > 0 else 0,
                        max(weight, 0),
                    )
                )
        found.sort()
        return found

    def _replace(self, old: _ProxyReport, new: _ProxyReport) -> None:
        """A stream's report in force goes from ``old`` to ``new``: the running totals move
        by the difference, in one pass over each report (a stream's reports mostly name the
        same keys: each is touched once, not taken away and added again). Totals that only
        ``old`` fed are dropped once back at zero, as ``_apply`` does."""
        totals = self._totals
        emptied: list[tuple[str, str]] = []
        was = old.localities
        for key, values in new.localities.items():
            before = was.get(key)
            if before is None:
                d0, d1, d2 = values[0], values[1], values[2]
            else:
                d0, d1, d2 = values[0] - before[0], values[1] - before[1], values[2] - before[2]
            for at in (key, (key[0], "*")):
                rates = totals.get(at)
                if rates is None:
                    rates = totals[at] = [0.0, 0.0, 0.0, 0.0]
                rates[0] += d0
                rates[1] += d1
                rates[2] += d2
        now = new.localities
        for key, before in was.items():
            if key in now:
                continue
            for at in (key, (key[0], "*")):
                rates = totals.get(at)
                if rates is not None:
                    rates[0] -= before[0]
                    rates[1] -= before[1]
                    rates[2] -= before[2]
                    emptied.append(at)
        dropped = old.dropped
        for server, rate in new.dropped.items():
            at = (server, "*")
            rates = totals.get(at)
            if rates is None:
                rates = totals[at] = [0.0, 0.0, 0.0, 0.0]
            rates[3] += rate - dropped.get(server, 0.0)
        for server, rate in dropped.items():
            if server not in new.dropped:
                rates = totals.get((server, "*"))
                if rates is not None:
                    rates[3] -= rate
                    emptied.append((server, "*"))
        for at in emptied:
            rates = totals.get(at)
            if rates is not None and not _some(rates):
                del totals[at]
        replicas = self._replicas
        was = old.replicas
        for key, values in new.replicas.items():
            before = was.get(key)
            mine = replicas.get(key[0])
            if mine is None:
                mine = replicas[key[0]] = {}
            rates = mine.get(key[1])
            if rates is None:
                rates = mine[key[1]] = [0.0, 0.0, 0.0, 0.0, 0.0]
            if before is None:
                rates[0] += values[0]
                rates[1] += values[1]
                rates[2] += values[2]
                rates[3] += values[3]
                rates[4] += values[4]
            else:
                rates[0] += values[0] - before[0]
                rates[1] += values[1] - before[1]
                rates[2] += values[2] - before[2]
                rates[3] += values[3] - before[3]
                rates[4] += values[4] - before[4]
        now = new.replicas
        for key, before in was.items():
            if key in now:
                continue
            server, replica = key
            mine = replicas.get(server)
            rates = mine.get(replica) if mine is not None else None
            if rates is None:
                continue
            rates[0] -= before[0]
            rates[1] -= before[1]
            rates[2] -= before[2]
            rates[3] -= before[3]
            rates[4] -= before[4]
            if not _some(rates):
                del mine[replica]  # type: ignore[union-attr]
                if not mine:
                    del replicas[server]

    def _apply(self, report: _ProxyReport, *, sign: float) -> None:
        """Add (``sign`` 1) or take away (-1) one report's rates from the running totals."""
        totals = self._totals
        for (server, region), values in report.localities.items():
            for key in ((server, region), (server, "*")):
                rates = totals.get(key)
                if rates is None:
                    rates = totals[key] = [0.0, 0.0, 0.0, 0.0]
                rates[0] += sign * values[0]
                rates[1] += sign * values[1]
                rates[2] += sign * values[2]
        for server, dropped in report.dropped.items():
            rates = totals.get((server, "*"))
            if rates is None:
                rates = totals[(server, "*")] = [0.0, 0.0, 0.0, 0.0]
            rates[3] += sign * dropped
        replicas = self._replicas
        for (server, replica), values in report.replicas.items():
            mine = replicas.get(server)
            if mine is None:
                mine = replicas[server] = {}
            rates = mine.get(replica)
            if rates is None:
                rates = mine[replica] = [0.0, 0.0, 0.0, 0.0, 0.0]
            rates[0] += sign * values[0]
            rates[1] += sign * values[1]
            rates[2] += sign * values[2]
            rates[3] += sign * values[3]
            rates[4] += sign * values[4]
        if sign < 0:  # keep the totals small and exact at zero
            for key in set(_keys(report)):
                rates = totals.get(key)
                if rates is not None and all(abs(v) < 1e-6 for v in rates):
                    del totals[key]
            for server, replica in report.replicas:
                mine = replicas.get(server)
                rates = mine.get(replica) if mine is not None else None
                if rates is not None and all(abs(v) < 1e-6 for v in rates):
                    del mine[replica]  # type: ignore[union-attr]
                    if not mine:
                        del replicas[server]


def _keys(report: _ProxyReport) -> list[Any]:
    keys: list[Any] = [(server, "*") for server in report.dropped]
    for server, region in report.localities:
        keys.extend(((server, region), (server, "*")))
    return keys


def _some(rates: list[float]) -> bool:
    return any(abs(v) >= 1e-6 for v in rates)


def _load(in_flight: float, issued: float, errors: float, dropped: float) -> Load:
    # Rounded: scaled reports added to and taken from the running sums leave float dust
    # (4 requests in flight must read 4, not 4.000000000001).
    return Load(
        in_flight=max(0.0, round(in_flight, 6)),
        requests_per_second=max(0.0, round(issued, 6)),
        errors_per_second=max(0.0, round(errors, 6)),
        dropped_per_second=max(0.0, round(dropped, 6)),
    )

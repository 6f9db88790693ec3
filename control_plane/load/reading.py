"""What the load view reads per replica, and when (issue 29): the catalog a routing table gives
reports (``catalog_of``: which clusters' endpoint entries are read), the servers whose
replicas' load is always read (``needs_replicas``) and those that read it while scaling down
(``scaling_down``), and the wait of a server that has just begun to read it (``Warming``): its
scale-down candidates are withheld until every connected stream's report carrying that load is
in, or ``WARM_INTERVALS`` have passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Set

import structlog

from control_plane.load.autoscale import raw_desired
from control_plane.load.reports import Catalog, LoadBook
from control_plane.load.totals import LoadRow
from control_plane.registry.spec import Autoscaling, view_metric
from control_plane.routing.model import RoutedServer, RoutingTable
from control_plane.translate import names
from control_plane.translate.clusters import cluster_name, cluster_revisions
from control_plane.translate.endpoints import endpoints_of

log = structlog.get_logger("routeplane.load")

# Report intervals a server's candidates wait at most for its newly read replica load (it is
# in once every stream's report read with its endpoint entries has come; a stream whose reports
# are shed or late is not waited for past this).
WARM_INTERVALS = 10.0


def catalog_of(table: RoutingTable) -> Catalog:
    servers: dict[str, str] = {}
    regions: dict[str, frozenset[str]] = {}
    endpoints: dict[str, dict[tuple[str, int], tuple[str, str]]] = {}
    idle: set[str] = set()  # no ready replica: a reported drop there is a cold start
    metrics_of: dict[str, str] = {}  # cluster -> the utilization metric its rule names
    per_replica: set[str] = set()  # clusters whose endpoint entries are read
    for server in table.servers:
        # One cluster per revision of a server with a traffic split (issue 26): each one's
        # reports are the server's. A drop is a cold start only while the server has no ready
        # replica at all (a tag's empty revision drops too, with others serving).
        server_idle = all(e.draining for e in server.endpoints)
        server_regions = frozenset(e.region for e in server.endpoints) | frozenset(
            server.spec.regions
        )
        metric = view_metric(server.spec)  # the rule's, else the balancing's
        replicas_read = needs_replicas(server)
        for revision in cluster_revisions(server):
            name = cluster_name(server, revision)
            mine = endpoints_of(server, revision)
            servers[name] = server.name
            regions[name] = server_regions
            endpoints[name] = {(e.host, e.port): (e.replica_id, e.region) for e in mine}
            if metric:
                metrics_of[name] = metric
            if replicas_read:
                per_replica.add(name)
            if server_idle:
                idle.add(name)
    return Catalog(
        servers=servers,
        regions=regions,
        endpoints=endpoints,
        idle=frozenset(idle),
        own=frozenset({names.XDS_CLUSTER}),
        metrics=metrics_of,
        per_replica=frozenset(per_replica),
    )


def needs_replicas(server: RoutedServer) -> bool:
    """Whether the load view always reads ``server``'s load per replica (proxies report it
    per endpoint only while some server's is read): for a utilization target or a metric in
    its autoscaling rule, its utilization balancing (the rows' utilization) or its revisions
    (load by revision, the rollout judge). A concurrency rule reads them only while it is
    scaling down (``scaling_down``: its candidates are the idlest replicas). Parsing endpoint
    entries is most of a report's cost at fleet scale (``bench/lrs_fleet.py``)."""
    spec = server.spec
    rule = spec.autoscaling
    return (
        (rule is not None and (rule.target_utilization > 0 or bool(rule.metric)))
        or spec.utilization is not None
        or any(e.revision for e in server.endpoints)
    )


def scaling_down(rows: Iterable[LoadRow], rule: Autoscaling) -> bool:
    """Whether a server's rows under a concurrency ``rule`` name scale-down candidates, or
    will once the scale-down window has passed: a recommendation below the ready replicas, or
    a load that alone asks for fewer (``raw_desired``)."""
    for row in rows:
        if row.desired_replicas is None:
            continue
        ready = row.ready_replicas
        if row.desired_replicas < ready:
            return True
        if raw_desired(row.in_flight, rule, utilization=row.utilization, ready=ready) < ready:
            return True
    return False


class Warming:
    """The servers waiting for their replicas' load, each since when it was first asked for;
    ``limit``: the longest wait, in seconds (0: none ever waits). Not thread-safe."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._since: dict[str, float] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._since

    def start(self, name: str, now: float) -> None:
        self._since[name] = now

    def stop(self, name: str) -> None:
        self._since.pop(name, None)

    def ended(self, now: float, book: LoadBook, live: Set[int]) -> set[str]:
        """The servers whose wait ends ``now``, no longer waiting: every stream's report read
        with their endpoint entries is in (``live``: the connected streams, one with no report
        yet counting as not in), or ``limit`` has passed (one log line for all of them, with
        the streams still lagging). One pass over the streams, however many servers wait."""
        waiting = self._since
        if not waiting:
            return set()
        oldest = book.oldest_read(live)
        done = {name for name, since in waiting.items() if oldest > since}
        late = {
            name
            for name, since in waiting.items()
            if name not in done and now - since >= self.limit
        }
        if late:
            # One line for all of them (a fleet's servers may begin to scale down together).
            since = min(waiting[name] for name in late)
            log.warning(
                "load_replicas_late",
                servers=len(late),
                first=sorted(late)[:5],
                lagging_streams=book.lagging(since, live),
                waited=round(now - since, 3),
            )
        done |= late
        for name in done:
            del waiting[name]
        return done

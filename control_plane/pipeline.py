"""The pipeline: registry state + wanted node groups -> one snapshot per wanted group.

:meth:`Pipeline.step` is the whole of it, one pure step (no I/O, clock, logging or asyncio), and
it owns every piece of incremental reuse, so that a change costs the change, not the fleet:
servers, Clusters, ClusterLoadAssignments and snapshots are built again only where they differ
by value from the last step's, and views (region, zone, listen address) share whatever they
can. The rules are owned by tests under ``tests/unit/pipeline/``: the result equals a build
from scratch, resource by resource (``test_differential.py``, over random edit sequences),
unchanged rows are not judged again (``test_step.py``); what a change costs is measured by
``bench.pipeline``.

Imports ``registry.model``, ``routing``, ``translate`` and ``xds`` (snapshots, node groups) and
nothing that does I/O; the driver (``reconcile``) does the waiting and the logging.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.routing.build import (
    Verdicts,
    claim_hostnames,
    claim_of,
    evaluate_with,
    server_problems,
    to_routed,
    unknown_server_problems,
)
from control_plane.routing.model import (
    Claim,
    Problem,
    RoutedServer,
    RoutingTable,
    ServerEval,
    same_except_endpoints,
)
from control_plane.translate import (
    ProxyView,
    api_listener_resources,
    cluster_resources,
    endpoints_resource,
    listener_resource,
    route_resource,
)
from control_plane.translate import names as resource_names
from control_plane.translate.clusters import cluster_revisions
from control_plane.translate.endpoints import EncodedEndpoints, encode_endpoints, endpoints_of
from control_plane.xds.nodes import GRPC, NodeGroup
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource
from control_plane.xds.snapshot import InconsistentSnapshotError, Snapshot, build_from_types


def view_of(group: NodeGroup) -> ProxyView:
    """The view of ``group``: its region, zone, and the address its listener binds as the
    group parsed it (gRPC clients bind nothing: their view is their region and zone)."""
    return ProxyView(
        region=group.region,
        zone=group.zone,
        listen_host=group.listen_host,
        listen_port=group.listen_port,
        kind=group.kind,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """What one step produced. ``snapshots`` has every wanted group that has one (a group that
    failed keeps none here; its last good snapshot stays wherever it was published)."""

    table: RoutingTable
    snapshots: Mapping[NodeGroup, Snapshot]
    # Groups whose snapshot differs from the one the previous step returned for them.
    changed: frozenset[NodeGroup]
    # Groups whose snapshot could not be built, and why.
    failures: Mapping[NodeGroup, str]
    # Servers whose rows differ from the previous step's (added and removed included).
    changed_servers: frozenset[str]
    cause: str


@dataclass(frozen=True, slots=True)
class _ServerMemo:
    """One server as the last step saw it: its rows and what routing made of them."""

    row: Server
    replicas: tuple[Replica, ...]
    eval: ServerEval
    claim: Claim | None
    # Each replica row as judged, aligned with ``replicas`` (reused for rows equal to the
    # next step's).
    verdicts: Verdicts


@dataclass(frozen=True, slots=True)
class _Routed:
    """What routing made of one server, given the claims of every other one."""

    routed: RoutedServer | None
    problems: tuple[Problem, ...]


class Pipeline:
    """Not thread-safe; one per driver. After :meth:`step` raised, call :meth:`reset`."""

    def __init__(self, *, cold_epochs: Mapping[str, tuple[int, bool]] | None = None) -> None:
        # Hold-mode servers: name -> (epoch, held). The one piece of history the output
        # depends on (a held server's cluster name is new for every cold period), kept across
        # ``reset``; a pipeline given another's epochs builds what that one builds.
        self.cold_epochs: dict[str, tuple[int, bool]] = dict(cold_epochs or {})
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next step builds from scratch."""
        self._servers: dict[str, _ServerMemo] = {}
        self._order: tuple[str, ...] = ()
        self._rows: tuple[Server, ...] = ()
        # server name -> its index in the table's servers (routed servers only)
        self._positions: dict[str, int] = {}
        self._claims: dict[str, tuple[tuple[str, ...], tuple[Problem, ...]]] = {}
        self._routed: dict[str, _Routed] = {}
        self._unknown: tuple[Problem, ...] = ()
        self._table: RoutingTable | None = None
        # server name -> (the routed server it was built from, its Clusters: one, or one per
        # revision of a server with a traffic split)
        self._clusters: dict[str, tuple[RoutedServer, tuple[Resource, ...]]] = {}
        # (server name, region, zone) -> (the routed server it was built from, its CLAs,
        # aligned with its Clusters)
        self._endpoints: dict[tuple[str, str, str], tuple[RoutedServer, tuple[Resource, ...]]] = {}
        # server name -> revision -> the endpoints of its cluster of that revision, encoded:
        # every view's CLA of that cluster is joined from these
        self._encoded: dict[str, dict[str, EncodedEndpoints]] = {}
        # Every live Cluster, and every CLA per (region, zone), by name: one map each, shared
        # by the snapshots of every view (never altered once a snapshot holds it; a step that
        # changes them makes new ones).
        self._cluster_map: dict[str, Resource] | None = None
        self._endpoint_maps: dict[tuple[str, str], dict[str, Resource]] = {}
        self._route: Resource | None = None
        self._listeners: dict[ProxyView, Resource] = {}
        # The API listeners of gRPC views, and the route they were built beside.
        self._api_listeners: dict[str, Resource] | None = None
        self._api_listeners_of = ""
        self._views: dict[ProxyView, Snapshot] = {}
        self._localities: frozenset[tuple[str, str]] = frozenset()
        self._last: dict[NodeGroup, Snapshot] = {}

    @property
    def table(self) -> RoutingTable | None:
        return self._table

    def step(self, state: RegistryState, wanted: Collection[NodeGroup]) -> Step:
        """The snapshot of every group in ``wanted`` for ``state``."""
        first = self._table is None
        dirty = self._route_servers(state)
        table = self._table
        assert table is not None
        cluster_names = self._translate_shared(dirty)
        views: dict[NodeGroup, ProxyView] = {}
        failures: dict[NodeGroup, str] = {}
        for group in wanted:
            if group.listen_problem:
                # Never a stream's group (those are refused at the stream's start).
                failures[group] = group.listen_problem
            else:
                views[group] = view_of(group)
        cause = _cause(state, None if first else dirty)
        distinct = set(views.values())
        self._update_maps(dirty, cluster_names, table, {(v.region, v.zone) for v in distinct})
        built: dict[ProxyView, Snapshot] = {}
        for view in distinct:
            try:
                built[view] = self._snapshot(view, dirty, cluster_names, table, cause)
            except InconsistentSnapshotError as exc:
                for group, group_view in views.items():
                    if group_view == view:
                        failures[group] = str(exc)
        self._views = built
        self._forget_unused_views(built)
        snapshots = {group: built[view] for group, view in views.items() if view in built}
        changed = frozenset(
            group
            for group, snapshot in snapshots.items()
            if (last := self._last.get(group)) is None or last.version != snapshot.version
        )
        self._last = snapshots
        return Step(
            table=table,
            snapshots=MappingProxyType(snapshots),
            changed=changed,
            failures=MappingProxyType(failures),
            changed_servers=frozenset(dirty),
            cause=cause,
        )

    # Routing: rows -> RoutingTable, re-evaluating only servers whose rows changed.

    def _route_servers(self, state: RegistryState) -> set[str]:
        """Update the routing table for ``state``; returns the servers whose routed form or
        problems changed (added and removed included)."""
        old = self._servers
        memo = dict(old)
        changed: set[str] = set()
        claims_dirty = False
        by_server = state.replicas_by_server
        for server in state.servers:
            replicas = by_server.get(server.name, ())
            entry = old.get(server.name)
            # Equal values, compared field by field (``is`` only short-cuts equal objects).
            if (
                entry is not None
                and (entry.row is server or entry.row == server)
                and (entry.replicas is replicas or entry.replicas == replicas)
            ):
                continue
            ev, verdicts = evaluate_with(
                server,
                replicas,
                previous=(entry.replicas, entry.verdicts) if entry is not None else None,
            )
            claim = claim_of(server, ev)
            claims_dirty = claims_dirty or entry is None or entry.claim != claim
            memo[server.name] = _ServerMemo(
                row=server, replicas=replicas, eval=ev, claim=claim, verdicts=verdicts
            )
            changed.add(server.name)
        order = self._order
        if state.servers is not self._rows and state.servers != self._rows:
            order = tuple(server.name for server in state.servers)
        reordered = order != self._order
        if reordered:
            claims_dirty = True
            present = set(order)
            gone = [name for name in old if name not in present]
            for name in gone:
                del memo[name]
                self.cold_epochs.pop(name, None)
            changed.update(gone)
        if claims_dirty:
            claims = claim_hostnames(memo[name].claim for name in order)
            changed.update(name for name in order if claims.get(name) != self._claims.get(name))
        else:
            claims = self._claims
        routed_memo = dict(self._routed)
        dirty: set[str] = set()
        problems_dirty = reordered
        shape_dirty = reordered
        for name in changed:
            before = self._routed.get(name)
            entry = memo.get(name)
            if entry is None:
                del routed_memo[name]
                dirty.add(name)
                continue
            mine, lost = claims.get(name, ((), ()))
            routed = to_routed(entry.row, entry.eval, mine) if mine else None
            if routed is not None:
                routed = self._cold_start(routed, state.revision)
            own = server_problems(entry.eval, lost)
            if before is not None and before.routed == routed and before.problems == own:
                continue
            if before is not None and before.routed == routed:
                routed = before.routed  # equal value: keep one object downstream
            routed_memo[name] = _Routed(routed=routed, problems=own)
            dirty.add(name)
            problems_dirty = problems_dirty or before is None or before.problems != own
            shape_dirty = (
                shape_dirty or before is None or (before.routed is None) != (routed is None)
            )
        previous = self._table
        orphans = by_server.keys() - memo.keys()
        unknown = tuple(unknown_server_problems(by_server, memo)) if orphans else ()
        if previous is None or shape_dirty:
            routed_servers = [r for name in order if (r := routed_memo[name].routed)]
            servers = tuple(routed_servers)
            self._positions = {server.name: i for i, server in enumerate(servers)}
        elif dirty:
            replaced = list(previous.servers)
            for name in dirty:
                # The shape is unchanged: routed before and after, or neither.
                routed = routed_memo[name].routed
                if routed is not None:
                    replaced[self._positions[name]] = routed
            servers = tuple(replaced)
        else:
            servers = previous.servers
        if previous is None or problems_dirty or unknown != self._unknown:
            problems = (*(p for name in order for p in routed_memo[name].problems), *unknown)
            if previous is not None and problems == previous.problems:
                problems = previous.problems
        else:
            problems = previous.problems
        self._servers, self._order, self._claims, self._routed = memo, order, claims, routed_memo
        self._rows = state.servers
        self._unknown = unknown
        self._table = RoutingTable(
            servers=servers,
            problems=problems,
            revision=state.revision,
            committed_at=state.committed_at,
        )
        return dirty

    def _cold_start(self, routed: RoutedServer, revision: int) -> RoutedServer:
        """``routed`` with its hold-mode fields: held while it has no replica at all (not even
        a draining one, whose open streams still use the cluster); a new cold period takes
        the registry revision that started it as its epoch."""
        if routed.spec.cold_start.mode != "hold":
            self.cold_epochs.pop(routed.name, None)
            return routed
        held = not routed.endpoints
        epoch, was_held = self.cold_epochs.get(routed.name, (0, False))
        if held and not was_held:
            epoch = revision
        self.cold_epochs[routed.name] = (epoch, held)
        return replace(routed, held=held, cold_epoch=epoch)

    # Translation shared by every view: Clusters and the RouteConfiguration.

    def _translate_shared(self, dirty: set[str]) -> set[str]:
        """Update Clusters and the route for the ``dirty`` servers; returns every resource name
        those servers had or have (the names a view must look at again)."""
        touched: set[str] = set()
        route_dirty = self._route is None
        for name in dirty:
            routed = self._routed.get(name)
            server = routed.routed if routed is not None else None
            before = self._clusters.get(name)
            if before is not None:
                touched.update(cluster.name for cluster in before[1])
            if server is None or server.held:
                # Gone, or held: a held server's route names a cluster no snapshot carries.
                if before is not None:
                    del self._clusters[name]
                    self._drop_endpoints(name)
                # Its route went, or changed (held routes are in no cluster memo to tell).
                route_dirty = True
                continue
            if before is None or not same_except_endpoints(before[0], server):
                clusters = cluster_resources(server)
                route_dirty = True
                if before is not None:
                    if [c.name for c in before[1]] != [c.name for c in clusters]:
                        self._drop_endpoints(name)
                    elif [c.version for c in before[1]] == [c.version for c in clusters]:
                        clusters = before[1]  # equal (a split moved): keep one object
            else:
                clusters = before[1]
            self._clusters[name] = (server, clusters)
            touched.update(cluster.name for cluster in clusters)
        if route_dirty:
            assert self._table is not None
            route = route_resource(self._table.servers)
            if self._route is None or self._route.version != route.version:
                self._route = route
        return touched

    def _drop_endpoints(self, server: str) -> None:
        for key in [k for k in self._endpoints if k[0] == server]:
            del self._endpoints[key]
        self._encoded.pop(server, None)

    def _endpoints_for(self, server: RoutedServer, region: str, zone: str) -> tuple[Resource, ...]:
        key = (server.name, region, zone)
        cached = self._endpoints.get(key)
        if cached is not None and cached[0] == server:
            return cached[1]
        # One changed replica of many: encoded again alone, its locality joined again.
        kept = self._encoded.get(server.name, {})
        encodings = {}
        resources = []
        for revision in cluster_revisions(server):
            encoded = encode_endpoints(endpoints_of(server, revision), previous=kept.get(revision))
            encodings[revision] = encoded
            resources.append(
                endpoints_resource(
                    server, region=region, zone=zone, revision=revision, encoded=encoded
                )
            )
        self._encoded[server.name] = encodings
        self._endpoints[key] = (server, tuple(resources))
        return tuple(resources)

    def _listener_for(self, view: ProxyView) -> Resource:
        listener = self._listeners.get(view)
        if listener is None:
            listener = self._listeners[view] = listener_resource(view)
        return listener

    # Shared by every view: the Clusters, and the CLAs of each (region, zone).

    def _update_maps(
        self,
        dirty: set[str],
        touched: set[str],
        table: RoutingTable,
        localities: set[tuple[str, str]],
    ) -> None:
        """The Cluster map, and the CLA map of each of ``localities``, for this step: the last
        step's with the ``dirty`` servers' resources replaced (one copy per step, however many
        views share them), or built from every live server when there is none to start from."""
        live: list[RoutedServer] | None = None  # every server with a cluster, when needed
        if self._cluster_map is None:
            live = [s for s in table.servers if not s.held]
            self._cluster_map = {c.name: c for s in live for c in self._clusters[s.name][1]}
        elif dirty:
            self._cluster_map = self._replaced(self._cluster_map, dirty, touched, None)
        maps: dict[tuple[str, str], dict[str, Resource]] = {}
        for locality in localities:
            last = self._endpoint_maps.get(locality)
            if last is None:
                if live is None:
                    live = [s for s in table.servers if not s.held]
                maps[locality] = {
                    e.name: e for server in live for e in self._endpoints_for(server, *locality)
                }
            else:
                maps[locality] = self._replaced(last, dirty, touched, locality) if dirty else last
        self._endpoint_maps = maps

    def _replaced(
        self,
        last: dict[str, Resource],
        dirty: set[str],
        touched: set[str],
        locality: tuple[str, str] | None,
    ) -> dict[str, Resource]:
        """``last`` (Clusters, or with ``locality`` its CLAs) with every name the ``dirty``
        servers had or have (``touched``) replaced by what they have now."""
        resources = dict(last)
        for name in touched:
            resources.pop(name, None)
        for name in dirty:
            entry = self._clusters.get(name)
            if entry is None:
                continue
            server, clusters = entry
            for resource in (
                clusters if locality is None else self._endpoints_for(server, *locality)
            ):
                resources[resource.name] = resource
        return resources

    # Per view: one snapshot, built from the previous one in time proportional to the change.

    def _snapshot(
        self,
        view: ProxyView,
        dirty: set[str],
        touched: set[str],
        table: RoutingTable,
        cause: str,
    ) -> Snapshot:
        previous = self._views.get(view)
        listeners: dict[str, Resource]
        routes: dict[str, Resource]
        if view.kind == GRPC:
            listeners, routes = self._grpc_listeners(table), {}
            unchanged = not dirty
        else:
            assert self._route is not None
            route = self._route
            listener = self._listener_for(view)
            listeners, routes = {listener.name: listener}, {route.name: route}
            unchanged = (
                previous is not None
                and not dirty
                and previous.of_type(ROUTE).get(resource_names.ROUTE_CONFIG) is route
            )
        assert self._cluster_map is not None
        clusters = self._cluster_map
        endpoints = self._endpoint_maps[(view.region, view.zone)]
        if previous is None:
            return build_from_types(
                {CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: listeners, ROUTE: routes},
                committed_at=table.committed_at,
                revision=table.revision,
                cause=cause,
            )
        if unchanged:
            return previous
        if view.kind == GRPC:
            # API listeners depend on every grpc/http2 server: compare them all (few, small).
            listener_names = set(previous.of_type(LISTENER)) | set(listeners)
            candidates = {CLUSTER: touched, ENDPOINT: touched, LISTENER: listener_names}
        else:
            candidates = {CLUSTER: touched, ENDPOINT: touched, ROUTE: set(routes)}
        return build_from_types(
            {CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: dict(listeners), ROUTE: routes},
            previous=previous,
            candidates=candidates,
            committed_at=table.committed_at,
            revision=table.revision,
            cause=cause,
        )

    def _grpc_listeners(self, table: RoutingTable) -> dict[str, Resource]:
        """The API listeners of gRPC views: a function of the RouteConfiguration's content (both
        are built from every server's routes and hostnames), so built again only when its
        version changed, keeping each listener whose bytes are equal."""
        route_version = self._route.version if self._route is not None else ""
        if self._api_listeners is None or self._api_listeners_of != route_version:
            built = api_listener_resources(table.servers)
            old = self._api_listeners or {}
            self._api_listeners = {
                name: old[name]
                if name in old and old[name].version == resource.version
                else resource
                for name, resource in built.items()
            }
            self._api_listeners_of = route_version
        return self._api_listeners

    def _forget_unused_views(self, live: Iterable[ProxyView]) -> None:
        views = set(live)
        self._listeners = {v: r for v, r in self._listeners.items() if v in views}
        localities = frozenset((v.region, v.zone) for v in views)
        if localities != self._localities:
            self._endpoints = {
                key: value for key, value in self._endpoints.items() if key[1:] in localities
            }
            self._localities = localities


def _cause(state: RegistryState, changed: set[str] | None) -> str:
    """Why a snapshot was built, for `snapshot history`."""
    if changed is None:
        return f"registry revision {state.revision}: full read"
    names = sorted(changed)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"registry revision {state.revision}: servers {shown}"

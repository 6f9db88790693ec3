"""The load view: every server's totals (``load/totals.py``: load per region and per replica,
ready replicas, cold starts) from the reports ``load.intake`` takes into the book, and its rows
from ``recommend``; ticked every half interval and at once on a cold start; and hold-mode
demand (held cluster names asked for by proxies). Under ``serve --workers`` a worker's totals
and specs are what its supervisor merges (``group/admin.py``), with the same ``recommend``.
The other control planes' totals, read from the registry (``control_plane/fleet/``), come in
through ``take_remote``: the rows are this process's own totals merged with them, and
``totals()`` stays this process's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import replace

import grpc
import structlog

from control_plane import metrics
from control_plane.load.intake import ReportIntake
from control_plane.load.quiet import ChangeLog
from control_plane.load.reading import (
    WARM_INTERVALS,
    Warming,
    catalog_of,
    needs_replicas,
    scaling_down,
)
from control_plane.load.reports import Catalog, Load, LoadBook
from control_plane.load.totals import (
    History,
    LoadRow,
    LoadSpec,
    LoadTotals,
    RegionTotals,
    ReplicaTotals,
    ServerTotals,
    Wakes,
    idle,
    millionths,
    recommend,
)
from control_plane.routing.model import RoutedServer, RoutingTable
from control_plane.translate import names
from control_plane.xds.resources import CLUSTER as CLUSTER_TYPE

log = structlog.get_logger("routeplane.load")

# A held name asked for before this process saw its server go cold (the route came from another
# worker or replica, whose watch was ahead): counted when it does, if within this long.
PENDING_COLD_SECONDS = 30.0
MAX_PENDING_COLD = 1000  # distinct (name, proxy) kept waiting (they come from proxies: bounded)
# (held server, proxy) pairs remembered so that a proxy counts once per cold period (a hash
# each: a few MB at most).
MAX_COLD_PROXIES = 100_000
COLD_START_COALESCE = 0.05  # seconds: cold starts this close together make one early tick
CHANGES_KEPT = 64  # versions whose changed servers are kept for watchers a little behind


def spec_of(server: RoutedServer) -> LoadSpec:
    """What ``recommend`` needs of a server's spec."""
    return LoadSpec(
        regions=tuple(server.spec.regions),
        cold_start_mode=server.spec.cold_start.mode,
        autoscaling=server.spec.autoscaling,
    )


class LoadService:
    """The LRS streams, the book of reports and the recommendation; one per control plane."""

    def __init__(
        self,
        *,
        table: Callable[[], RoutingTable | None],
        interval: float = 1.0,
        require_identity: bool = False,
        clock: Callable[[], float] = time.monotonic,
        admit: Callable[[], bool] = lambda: True,
        xds_nodes: Callable[[], Iterable[tuple[str, str]]] = tuple,
        warm_intervals: float = WARM_INTERVALS,
    ) -> None:
        self.interval = interval
        self.book = LoadBook()
        self._table = table
        self._clock = clock
        self._catalog_for: RoutingTable | None = None
        self._base_catalog = Catalog(
            servers={},
            regions={},
            endpoints={},
            own=frozenset({names.XDS_CLUSTER}),
            per_replica=frozenset(),
        )
        self._catalog: Catalog | None = self._base_catalog
        self._clusters_of: dict[str, list[str]] = {}  # server -> its cluster names
        # Servers under a concurrency rule that are scaling down (``scaling_down``) as of the
        # last tick: their endpoint entries are read too, for their candidates.
        self._scaling_down: frozenset[str] = frozenset()
        # Those of them whose replicas' load was not read before they began to: when they
        # began. Their candidates are withheld (``ServerTotals.withheld``: a supervisor's or
        # another control plane's sum withholds them too) until every stream's report read
        # with their endpoint entries is in (``Warming``: asked again at a stream's next
        # report, sent with its next one), or ``WARM_INTERVALS`` have passed.
        self._warming = Warming(warm_intervals * interval)
        self._history = History()
        # The view, per server: its totals and its rows; the table they follow (compared by
        # identity: a new table is a new routing state), its servers by name, their order,
        # and their specs (a new dict, and a new ``specs_version``, when one changes).
        self._totals: dict[str, ServerTotals] = {}
        self._by_server: dict[str, tuple[LoadRow, ...]] = {}
        self._rows_for: RoutingTable | None = None
        self._servers: dict[str, RoutedServer] = {}
        # Per server, what its totals take from its routing entry (kept while the entry is
        # the same object): ``_Shape``.
        self._shapes: dict[str, _Shape] = {}
        self._order: list[str] = []
        self._specs: dict[str, LoadSpec] = {}
        self._specs_made = 0
        self._specs_version = f"{secrets.randbits(64):x}.0"
        # Servers to look at next tick though nothing else says so: load at the last tick (it
        # may be gone now) or a recommendation not settled yet.
        self._active: set[str] = set()
        self._ticked_at = clock()
        self._events_seen = -1
        self._rows: list[LoadRow] = []
        self._rows_version = -1
        self._log = ChangeLog(CHANGES_KEPT)  # the view's version, and what each one changed
        # Per server: the cold starts the last tick saw, so a new one is told apart, and
        # when new ones last met no ready replica (a wake).
        self._wakes = Wakes()
        self._cold_start_seen = asyncio.Event()
        self._held: dict[tuple[str, str], str] = {}  # a held server's (workspace, name) -> name
        self._held_for: RoutingTable | None = None
        # Cold names asked for while their server was not held here: ((workspace, server),
        # proxy) -> when first asked.
        self._pending_cold: dict[tuple[tuple[str, str], int], float] = {}
        # Per held server: the proxies (node id hashes) counted in its cold period, which is
        # the one of ``_cold_epochs[server]``; at most MAX_COLD_PROXIES in all.
        self._cold_proxies: dict[str, set[int]] = {}
        self._cold_proxies_kept = 0
        self._cold_epochs: dict[str, int] = {}
        self._changed = asyncio.Condition()
        # The other control planes' totals (``take_remote``), the servers whose remote totals
        # moved since the last tick, and whether the fleet's could not be read.
        self._remote: dict[str, ServerTotals] = {}
        self._remote_proxies = 0
        self._remote_moved: set[str] = set()
        self._remote_totals: LoadTotals = LoadTotals()
        self.remote_version = 0  # moves with every ``take_remote`` (a worker sends them on)
        self.partial = False
        self.intake = ReportIntake(
            book=self.book,
            catalog=self.catalog,
            on_cold_start=self._cold_start_seen.set,
            interval=interval,
            require_identity=require_identity,
            clock=clock,
            admit=admit,
            xds_nodes=xds_nodes,
        )

    # The view.

    @property
    def rows(self) -> list[LoadRow]:
        """Every server's rows, in the routing table's order (built when asked, once per
        version)."""
        if self._rows_version != self._log.version:
            by_server = self._by_server
            self._rows = [row for name in self._order for row in by_server.get(name, ())]
            self._rows_version = self._log.version
        return self._rows

    @property
    def version(self) -> int:
        """Moves whenever a row does."""
        return self._log.version

    def changes_since(self, version: int) -> frozenset[str] | None:
        """The servers whose rows changed (or went) after ``version``; None when that is too
        far back to tell (send everything)."""
        return self._log.since(version)

    @property
    def reporting_proxies(self) -> int:
        return self.book.proxies + self._remote_proxies

    def remote_totals(self) -> tuple[LoadTotals, bool]:
        """The other control planes' totals last taken, and whether they are missing."""
        return self._remote_totals, self.partial

    def take_remote(self, totals: LoadTotals, *, partial: bool) -> None:
        """The other control planes' totals (every server's: one not in them has none), and
        whether they are missing (``partial``); the next tick comes at once."""
        servers = {server.server: server for server in totals.servers}
        before = self._remote
        self._remote_moved |= {
            name for name in before.keys() | servers.keys() if before.get(name) != servers.get(name)
        }
        self._remote = servers
        self._remote_proxies = totals.proxies
        self._remote_totals = totals
        self.remote_version += 1
        dropped = partial and not self.partial
        self.partial = partial
        # A new version (no server's rows changed yet): the answers say partial, and a worker's
        # supervisor is sent the remote totals.
        self._log.add(frozenset())
        if dropped:
            self.tick()  # the fleet's sums leave the rows now: never shown as fresh
        self._cold_start_seen.set()  # not a cold start: the same early tick

    @property
    def report_interval(self) -> float:
        return self.interval

    def servers(self) -> list[str]:
        """The servers of the view, in the routing table's order."""
        return self._order

    def rows_of(self, server: str) -> tuple[LoadRow, ...]:
        """One server's rows (none: it is gone)."""
        return self._by_server.get(server, ())

    def totals(self, servers: Iterable[str] | None = None) -> LoadTotals:
        """The view's totals as of the last tick: every server's, or those of ``servers``
        (a server gone is left out)."""
        mine = self._totals
        names_ = sorted(mine) if servers is None else sorted(n for n in servers if n in mine)
        return LoadTotals(
            servers=tuple(mine[name] for name in names_),
            proxies=self.book.proxies,
            interval=self.interval,
            at=self._ticked_at,
        )

    @property
    def specs(self) -> Mapping[str, LoadSpec]:
        """Every server's spec as ``recommend`` reads it (do not alter it)."""
        return self._specs

    @property
    def specs_version(self) -> str:
        """Moves whenever ``specs`` does (unique to this view: a worker that starts again
        never repeats one)."""
        return self._specs_version

    def note_subscribed(
        self, type_url: str, cluster_names: frozenset[str], *, node_id: str
    ) -> None:
        """Proxy ``node_id`` asked for clusters: a held server's cluster means a held request,
        counted once per proxy per cold period (a proxy that unsubscribes and subscribes again
        is the same demand)."""
        if type_url != CLUSTER_TYPE:
            return
        table = self._table()
        if table is None:
            return
        held = self._held_in(table)
        now = self._clock()
        proxy = hash(node_id)  # kept as a hash: a node id may be long
        for name in cluster_names:
            # Any epoch of a held server's name: the route the proxy holds on may come from
            # another worker or control-plane replica, whose epoch (its own count of registry
            # revisions, on Spanner) can differ from this one's; the demand is the same.
            parsed = names.parse_cluster(name)
            if parsed is None or not parsed.epoch:
                continue
            prefix = (parsed.workspace, parsed.server)
            server = held.get(prefix)
            if server is not None:
                if self._first_in_period(server, proxy):
                    self.book.note_cold_start(server, now=now)
                    self._cold_start_seen.set()
            elif (prefix, proxy) not in self._pending_cold and (
                len(self._pending_cold) < MAX_PENDING_COLD
            ):
                # That route's process saw the server go cold before this one did.
                self._pending_cold[(prefix, proxy)] = now

    def _first_in_period(self, server: str, proxy: int) -> bool:
        """Whether ``proxy`` is new demand for held ``server`` in its current cold period.
        Past ``MAX_COLD_PROXIES`` remembered (server, proxy) pairs, every ask counts: more
        demand shown, never demand hidden."""
        seen = self._cold_proxies.setdefault(server, set())
        if proxy in seen:
            return False
        if self._cold_proxies_kept < MAX_COLD_PROXIES:
            seen.add(proxy)
            self._cold_proxies_kept += 1
        return True

    def _held_in(self, table: RoutingTable) -> dict[tuple[str, str], str]:
        if table is not self._held_for:
            self._held = {(s.workspace, s.name): s.name for s in table.servers if s.held}
            self._held_for = table
            # A cold period ends when its server is no longer held (its epoch moves with the
            # next one): the proxies it counted may count again.
            epochs = {s.name: s.cold_epoch for s in table.servers if s.held}
            for server in list(self._cold_proxies):
                if self._cold_epochs.get(server) != epochs.get(server):
                    self._cold_proxies_kept -= len(self._cold_proxies.pop(server))
            self._cold_epochs = epochs
        return self._held

    def _resolve_pending(self, table: RoutingTable | None, now: float) -> None:
        """Count the cold names asked for early whose server this process now holds; forget
        those that waited past ``PENDING_COLD_SECONDS``."""
        if not self._pending_cold or table is None:
            return
        held = self._held_in(table)
        for (prefix, proxy), since in list(self._pending_cold.items()):
            server = held.get(prefix)
            if server is not None:
                if self._first_in_period(server, proxy):
                    self.book.note_cold_start(server, now=now)
                del self._pending_cold[(prefix, proxy)]
            elif now - since > PENDING_COLD_SECONDS:
                del self._pending_cold[(prefix, proxy)]

    def catalog(self) -> Catalog:
        """What the routing table serves, as reports name it; endpoint entries are read for
        the servers that always need them (``needs_replicas``) and those scaling down."""
        table = self._table()
        if table is not None and table is not self._catalog_for:
            self._base_catalog, self._catalog_for = catalog_of(table), table
            self._clusters_of = {}
            for cluster, server in self._base_catalog.servers.items():
                self._clusters_of.setdefault(server, []).append(cluster)
            self._catalog = None
        if self._catalog is None:
            base = self._base_catalog
            extra = [c for s in self._scaling_down for c in self._clusters_of.get(s, ())]
            self._catalog = (
                dataclasses.replace(base, per_replica=base.per_replica | frozenset(extra))
                if extra and base.per_replica is not None
                else base
            )
        return self._catalog

    def tick(self) -> list[LoadRow]:
        """Bring the rows and recommendations up to date now; wakes ``watch``ers when a row
        moved. Only the servers that need it are touched: those with load now or at the last
        tick, a new cold start, a new or changed routing entry, or a recommendation that has
        not settled (``load/quiet.py``). A quiet server with a settled recommendation costs
        nothing, whatever the number of servers."""
        now = self._clock()
        self._ticked_at = now
        for node in self.book.expire(now):
            log.info("load_reporter_expired", node_id=node)
        table = self._table()
        self._resolve_pending(table, now)
        totals = self.book.region_loads()
        # Per server with load: the regions its load came from (one pass, not one per server).
        reported: dict[str, set[str]] = {}
        for server_name, region in totals:
            regions = reported.setdefault(server_name, set())
            if region != "*":
                regions.add(region)
        loaded = set(reported)
        # The fleet's totals: only the servers whose remote totals moved (a recommendation
        # still moving stays in ``_active``).
        # Servers whose wait for their replicas' load is over: their candidates are named
        # again from this tick.
        ready_now = self._warming.ended(now, self.book, self.intake.live)
        touch = self._active | loaded | self._remote_moved | ready_now
        self._remote_moved = set()
        gone: set[str] = set()
        order = self._order
        if table is not self._rows_for:
            fresh, gone = self._take_table(table)
            touch |= fresh
        cold_starts = self.book.cold_starts
        if self.book.cold_start_events != self._events_seen:
            self._events_seen = self.book.cold_start_events
            touch |= {s for s, n in cold_starts.items() if n != self._wakes.counted(s)}
        active: set[str] = set(loaded)
        changed = gone
        touched = []
        reading = self.catalog().per_replica  # as of the last tick
        for name in touch:
            server = self._servers.get(name)
            if server is None:
                continue
            mine = self._server_totals(server, totals, reported.get(name, set()), now)
            if self._withholds(name, name in loaded, reading):
                mine = replace(mine, withheld=True)
            before = self._totals.get(name)
            if mine != before:
                self._totals[name] = mine
                changed.add(name)
            elif before is not None:
                mine = before  # the same value: rows compared with it compare by identity
            theirs = self._remote.get(name)
            touched.append(mine if theirs is None else mine.merge(theirs))
        recommended = recommend(
            LoadTotals(servers=tuple(sorted(touched, key=_name))),
            self._specs,
            self._history,
            now=now,
        )
        down: set[str] | None = None
        for name, answer in recommended.items():
            if answer.moving:
                active.add(name)
            rows = answer.rows
            rule = self._specs[name].autoscaling if name in self._specs else None
            now_down = rule is not None and scaling_down(rows, rule)
            if now_down != (name in self._scaling_down):
                down = set(self._scaling_down) if down is None else down
                down ^= {name}
                server = self._servers.get(name)
                # Waited for only where some stream reports here, or is connected and has not
                # yet (none: no load to come).
                warm = (
                    now_down
                    and self._warming.limit > 0
                    and bool(self.book.proxies or self.intake.live)
                    and server is not None
                    and not needs_replicas(server)
                )
                if warm:
                    self._warming.start(name, now)  # its replicas' load is asked for from now
                    # Never named from load not read yet: none until it has come.
                    rows = tuple(
                        replace(row, scale_down_candidates=()) if row.scale_down_candidates else row
                        for row in rows
                    )
                else:
                    self._warming.stop(name)
                # No longer scaling down: its load here is not read per replica from now.
                unread = (
                    not now_down
                    and self._warming.limit > 0
                    and name in loaded
                    and self._base_reads(name) is False
                )
                self._withhold(name, warm or unread, changed)
            if name in self._warming:
                active.add(name)  # looked at every tick until the wait is over
            if rows != self._by_server.get(name):
                self._by_server[name] = rows
                changed.add(name)
        left = self._scaling_down - self._servers.keys()  # servers gone from the table
        if left:
            down = set(self._scaling_down) if down is None else down
            down -= left
            for name in left:
                self._warming.stop(name)
        if down is not None:
            self._scaling_down = frozenset(down)
            self._catalog = None  # made again, with these servers' endpoint entries read
        self._active = active
        if changed or order != self._order:
            self._log.add(frozenset(changed))
        metrics.LOAD_REPORTERS.set(self.book.proxies)
        return self.rows

    def _withholds(self, name: str, loaded: bool, reading: frozenset[str] | None) -> bool:
        """Whether ``name``'s totals withhold its scale-down candidates (``ServerTotals``):
        while its replicas' load is coming (``_warming``), and while it has load here
        (``loaded``) that is not read per replica (a concurrency rule not scaling down here;
        ``reading``: the clusters read per replica). A sum of parts names candidates from
        every part's ready ids: it must not while one part's share of the load is not per
        replica (the parts' routing tables differ for a moment, so one may scale down first;
        a part that has no load lacks nothing)."""
        if name in self._warming:
            return True
        if not loaded or reading is None or self._warming.limit <= 0:  # 0: never (tests)
            return False
        if not self._ruled(name):
            return False  # no candidates to withhold
        return not any(c in reading for c in self._clusters_of.get(name, ()))

    def _ruled(self, name: str) -> bool:
        """Whether ``name``'s rule recommends (names candidates): a target to scale to."""
        spec = self._specs.get(name)
        rule = spec.autoscaling if spec is not None else None
        return rule is not None and (rule.target_concurrency > 0 or rule.target_utilization > 0)

    def _base_reads(self, name: str) -> bool | None:
        """Whether ``name``'s replicas' load is always read (``needs_replicas``; None: no
        rule, nothing to withhold)."""
        if not self._ruled(name):
            return None
        per_replica = self._base_catalog.per_replica
        clusters = self._clusters_of.get(name, ())
        return per_replica is None or any(c in per_replica for c in clusters)

    def _withhold(self, name: str, withheld: bool, changed: set[str]) -> None:
        """Mark ``name``'s totals as withholding candidates (or no longer), for whoever sums
        them (a worker's supervisor is sent them)."""
        kept = self._totals.get(name)
        if kept is not None and kept.withheld != withheld:
            self._totals[name] = replace(kept, withheld=withheld)
            changed.add(name)

    def _take_table(self, table: RoutingTable | None) -> tuple[set[str], set[str]]:
        """A new routing table: the servers that are new or differ, to be recomputed, and
        those gone, forgotten with their recommendations."""
        servers = {s.name: s for s in table.servers} if table is not None else {}
        previous = self._servers
        touch = {
            name
            for name, server in servers.items()
            if (old := previous.get(name)) is not server and old != server
        }
        gone = previous.keys() - servers.keys()
        specs = None
        for name in touch:
            spec = spec_of(servers[name])
            if self._specs.get(name) != spec:
                specs = specs if specs is not None else dict(self._specs)
                specs[name] = spec
        for name in gone:
            self._history.forget_server(name)
            self._totals.pop(name, None)
            self._shapes.pop(name, None)
            self._by_server.pop(name, None)
            self._wakes.forget(name)
            self.book.forget_server(name)
            if name in self._specs:
                specs = specs if specs is not None else dict(self._specs)
                del specs[name]
        if specs is not None:
            self._specs = specs
            self._specs_made += 1
            nonce = self._specs_version.partition(".")[0]
            self._specs_version = f"{nonce}.{self._specs_made}"
        self._servers = servers
        order = list(servers)
        if order != self._order:
            self._order = order  # a new list: the old one may be someone's
        self._rows_for = table
        return touch, set(gone)

    def _server_totals(
        self,
        server: RoutedServer,
        totals: dict[tuple[str, str], Load],
        reported: set[str],
        now: float,
    ) -> ServerTotals:
        """One server's totals now (``reported``: the regions its load came from): its load
        and ready replicas per region, its replicas with load (those of its routing entry
        only), its ready replicas, its cold starts, and its latest wake (new cold starts while
        it has no ready replica: scale from zero now, whatever the scale-up window)."""
        shape = self._shapes.get(server.name)
        if shape is None or shape.server is not server:
            shape = self._shapes[server.name] = _Shape.of(server)
        ready_by_region = shape.ready_by_region
        ready_total = shape.ready_total
        replicas: tuple[ReplicaTotals, ...] = ()
        replica_loads = self.book.replica_loads(server.name)
        if replica_loads:
            known = shape.replica_ids
            revision_of = shape.revision_of
            region_of = shape.region_of
            replicas = tuple(
                ReplicaTotals(
                    replica=replica,
                    in_flight=in_flight,
                    requests=requests,
                    errors=errors,
                    revision=revision_of.get(replica, ""),
                    utilization_value=value,
                    utilization_weight=weight,
                    region=region_of.get(replica, "") if weight else "",
                )
                for replica, in_flight, requests, errors, value, weight in replica_loads
                if replica in known
            )
        cold_starts = self.book.cold_starts.get(server.name, 0)
        new_cold, woken_at = self._wakes.see(server.name, cold_starts, ready=ready_total, now=now)
        if new_cold > 0:
            metrics.COLD_STARTS.labels(server.name, server.spec.cold_start.mode).inc(new_cold)
        regions = []
        for region in ["*", *sorted(set(ready_by_region) | reported)]:
            load = totals.get((server.name, region))
            ready = ready_total if region == "*" else ready_by_region.get(region, 0)
            if load is None:
                regions.append(idle(region, ready))
                continue
            regions.append(
                RegionTotals(
                    region=region,
                    in_flight=millionths(load.in_flight),
                    requests=millionths(load.requests_per_second),
                    errors=millionths(load.errors_per_second),
                    dropped=millionths(load.dropped_per_second),
                    ready=ready,
                )
            )
        return ServerTotals(
            server=server.name,
            regions=tuple(regions),
            replicas=replicas,
            ready_replicas=shape.ready_replicas,
            cold_starts=cold_starts,
            woken_at=woken_at,
            revisions=shape.ready_revisions,
        )

    async def run(self) -> None:
        """Tick every half interval until cancelled, waking ``watch``ers each time; a cold
        start ticks at once (after ``COLD_START_COALESCE``, so a burst is one tick): an
        autoscaler learns of demand for a server with no replica without waiting a period."""
        while True:
            self.tick()
            async with self._changed:
                self._changed.notify_all()
            self._cold_start_seen.clear()
            # Early cold names are looked at again soon: their server goes cold here any moment.
            wait = 2 * COLD_START_COALESCE if self._pending_cold else self.interval / 2
            # asyncio.timeout, not wait_for: in 3.11 wait_for returns the event's result when
            # it is set in the same loop turn as a cancel, and the cancel is lost.
            try:
                async with asyncio.timeout(min(wait, self.interval / 2)):
                    await self._cold_start_seen.wait()
            except TimeoutError:
                continue
            if self.book.cold_start_events != self._events_seen:
                await asyncio.sleep(COLD_START_COALESCE)
            # else the fleet's totals moved (``take_remote``): they come a read at a time

    async def watch(self) -> AsyncIterator[int]:
        """The version now, then after every tick that moved a row."""
        seen = -1
        while True:
            if self._log.version != seen:
                seen = self._log.version
                yield seen
            async with self._changed:
                await self._changed.wait()

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The LRS service (``load.intake``) on this view's book."""
        return self.intake.generic_handler()


class _Shape:
    """What a server's totals take from its routing entry, worked out once per entry: its
    ready replicas per region and in all, their (id, region) pairs (where its spec has an
    autoscaling rule: only a recommendation names candidates; or where a ready replica carries
    a revision), its replicas' ids, the revision of each replica that carries one, and its
    ready replicas' (id, revision) pairs where any carries one (``ServerTotals.revisions``)."""

    __slots__ = (
        "ready_by_region",
        "ready_replicas",
        "ready_revisions",
        "ready_total",
        "region_of",
        "replica_ids",
        "revision_of",
        "server",
    )

    def __init__(
        self,
        server: RoutedServer,
        ready_by_region: dict[str, int],
        ready_replicas: tuple[tuple[str, str], ...],
        replica_ids: frozenset[str],
        revision_of: dict[str, str],
        ready_revisions: tuple[tuple[str, str], ...],
        region_of: dict[str, str],
    ) -> None:
        self.server = server
        self.ready_by_region = ready_by_region
        self.ready_total = sum(ready_by_region.values())
        self.ready_replicas = ready_replicas
        self.replica_ids = replica_ids
        self.revision_of = revision_of
        self.ready_revisions = ready_revisions
        self.region_of = region_of

    @classmethod
    def of(cls, server: RoutedServer) -> _Shape:
        ready_by_region: dict[str, int] = {}
        revision_of: dict[str, str] = {}
        for endpoint in server.endpoints:
            if not endpoint.draining:
                ready_by_region[endpoint.region] = ready_by_region.get(endpoint.region, 0) + 1
            if endpoint.revision:
                revision_of[endpoint.replica_id] = endpoint.revision
        revisions: tuple[tuple[str, str], ...] = ()
        if any(e.revision for e in server.endpoints if not e.draining):
            revisions = tuple(
                sorted({(e.replica_id, e.revision) for e in server.endpoints if not e.draining})
            )
        # Scale-down candidates are named only where the spec asks for a recommendation; a
        # server with revisions lists its ready replicas too (they carry the revisions).
        ready: list[tuple[str, str]] = []
        if server.spec.autoscaling is not None or revisions:
            ready = sorted({(e.replica_id, e.region) for e in server.endpoints if not e.draining})
        return cls(
            server,
            ready_by_region,
            tuple(ready),
            frozenset(e.replica_id for e in server.endpoints),
            revision_of,
            revisions,
            {e.replica_id: e.region for e in server.endpoints},
        )


def _name(totals: ServerTotals) -> str:
    return totals.server


__all__ = ["LoadService", "catalog_of", "needs_replicas", "scaling_down", "spec_of"]

"""Load as a value that merges, and the one rule that turns it into ``routeplane load``'s rows.
Pure: time is an argument; no I/O, no clock, no logging.

``LoadTotals`` is what one process knows of load: per server and region ("*": the server's
total) the requests in flight and the requests, errors and drops per second its proxies
reported (``load/reports.py``), the ready replicas its routing table has, per replica (ids
from the routing table, never a name a report invents) the requests in flight, requests and
errors per second and the revision of the replicas with load, the ids of the ready ones (with
their revisions, where any carries one: issue 26), the server's cold
starts, and the time of the latest *wake* (a cold start that met no ready replica in the view
of the process that counted it: judged there, once). Totals from several processes (the workers
of ``serve --workers``) are merged, and the merge is judged once, by ``recommend``, where it is
read: a process never re-derives a recommendation from another's.

``merge`` is associative and commutative, and ``EMPTY`` is its identity
(``tests/unit/property/test_load_totals.py``):

- load adds up; it is kept in whole millionths, so a sum does not depend on the order of the
  merges (floats would) and a message carries small integers;
- ready replicas: the most any part saw (every process reads the same registry: one replica
  is not counted once per process); the ready replicas' ids, the union of the parts';
- a replica's load adds up, as a region's does (its revision and region: the greater name,
  should two parts' tables differ for a moment); the ready replicas' revisions, the union of
  the parts'; its utilization adds up as two sums, value and weight (requests that carried it
  per second), so that the merge is the request-weighted mean over every part's proxies;
- cold starts add up; a wake is the latest of the parts';
- servers and regions: the union; reporting proxies add up; the report interval is the longest
  and ``at`` (when the totals were taken) the oldest part's.

``recommend(totals, specs, history, now)`` makes the rows: one ``LoadRow`` per server and region,
written by one function (``_row``), with the autoscaling rule's recommendation
(``load/autoscale.py``) where the server's spec asks for one, and, where it is below the
ready replicas, which of them to remove first (``scale_down_candidates``); a server's "*"
row has its load by revision (``revision_rows``). Each row's utilization is the mean over the
replicas that reported one (in the row's region; absent, None, where none did). The spec
(``LoadSpec``: regions, cold-start mode, autoscaling rule) is an argument: it never travels
inside totals.

Imports the autoscaling rule, ``load/quiet.py`` and the spec value only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from control_plane.load.autoscale import Recommender
from control_plane.load.quiet import settled
from control_plane.registry.spec import Autoscaling

MILLION = 1_000_000  # load is kept in millionths (of a request, of a request per second)
NEVER = -math.inf  # no wake yet


def millionths(value: float) -> int:
    """``value`` (at most six decimals, as ``load/reports.py`` rounds load) in millionths."""
    return round(value * MILLION)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionTotals:
    """One server's load in one region ("*": all its regions), load in millionths."""

    region: str
    in_flight: int = 0
    requests: int = 0  # per second
    errors: int = 0  # per second
    dropped: int = 0  # per second ("*" only: a drop has no region)
    ready: int = 0  # ready replicas

    def merge(self, other: RegionTotals) -> RegionTotals:
        return RegionTotals(
            region=self.region,
            in_flight=self.in_flight + other.in_flight,
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            dropped=self.dropped + other.dropped,
            ready=max(self.ready, other.ready),
        )


@lru_cache(maxsize=4096)
def idle(region: str, ready: int = 0) -> RegionTotals:
    """A region with no load and ``ready`` ready replicas. Most regions of most servers are
    idle; the value is immutable, so one is shared (a tick builds it once, not per server)."""
    return RegionTotals(region=region, ready=ready)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaTotals:
    """One replica's load (in millionths): requests in flight, and requests and errors per
    second; and its revision as the routing table of the process that counted it knows it
    ("" for none)."""

    replica: str  # its id in the registry
    in_flight: int = 0
    requests: int = 0  # per second
    errors: int = 0  # per second
    revision: str = ""
    # Utilization (ORCA, ``load/reports.py``): its clipped mean times the requests that
    # carried it, and those requests, per second, in millionths (weight 0: none reported);
    # and the replica's region in the counting process's table ("" unknown).
    utilization_value: int = 0
    utilization_weight: int = 0
    region: str = ""

    def merge(self, other: ReplicaTotals) -> ReplicaTotals:
        return ReplicaTotals(
            replica=self.replica,
            in_flight=self.in_flight + other.in_flight,
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            # Parts whose tables differ for a moment: either may be right; the greater name is
            # kept, so that the merge does not depend on the order.
            revision=max(self.revision, other.revision),
            utilization_value=self.utilization_value + other.utilization_value,
            utilization_weight=self.utilization_weight + other.utilization_weight,
            region=max(self.region, other.region),
        )

    @property
    def utilization(self) -> float | None:
        """The request-weighted mean utilization, in [0, 1]; None: none reported."""
        if self.utilization_weight <= 0:
            return None
        return min(max(self.utilization_value / self.utilization_weight, 0.0), 1.0)


def utilization_sums(replicas: Iterable[ReplicaTotals]) -> dict[str, tuple[float, int]]:
    """Per region ("*": all) the sum of the utilization of ``replicas`` that reported one, and
    how many did; a region with none is left out. One pass over the replicas."""
    sums: dict[str, list[float]] = {}
    for replica in replicas:
        used = replica.utilization
        if used is None:
            continue
        where = replica.region
        for region in ("*", where) if where and where != "*" else ("*",):
            have = sums.get(region)
            if have is None:
                sums[region] = [used, 1]
            else:
                have[0] += used
                have[1] += 1
    return {region: (total, int(count)) for region, (total, count) in sums.items()}


_NO_UTILIZATION = (0.0, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTotals:
    """One server: its regions (sorted, so "*" is first), its replicas with load (sorted by
    id; a replica with none is left out), its ready replicas as (id, region) pairs (sorted; the
    routing table's READY ones, not draining), its cold starts (requests that met no replica)
    and when the latest of them met no ready replica (``NEVER``: none did)."""

    server: str
    regions: tuple[RegionTotals, ...] = ()
    replicas: tuple[ReplicaTotals, ...] = ()
    ready_replicas: tuple[tuple[str, str], ...] = ()
    cold_starts: int = 0
    woken_at: float = NEVER
    # Where a ready replica carries a revision (issue 26): every ready replica's (id,
    # revision), "" included, sorted; then ``ready_replicas`` lists them all too. Empty for a
    # server whose ready replicas carry none.
    revisions: tuple[tuple[str, str], ...] = ()
    # Its scale-down candidates are not named from these: the load of its replicas is still
    # coming to some part (``LoadService``: one that began reading it per replica only lately).
    withheld: bool = False

    def merge(self, other: ServerTotals) -> ServerTotals:
        mine = {r.region: r for r in self.regions}
        for region in other.regions:
            have = mine.get(region.region)
            mine[region.region] = region if have is None else have.merge(region)
        return ServerTotals(
            server=self.server,
            regions=tuple(mine[name] for name in sorted(mine)),
            replicas=_merge_replicas(self.replicas, other.replicas),
            ready_replicas=_union(self.ready_replicas, other.ready_replicas),
            cold_starts=self.cold_starts + other.cold_starts,
            woken_at=max(self.woken_at, other.woken_at),
            revisions=_union(self.revisions, other.revisions),
            withheld=self.withheld or other.withheld,
        )

    def region(self, name: str) -> RegionTotals | None:
        for region in self.regions:
            if region.region == name:
                return region
        return None


def _merge_replicas(
    mine: tuple[ReplicaTotals, ...], theirs: tuple[ReplicaTotals, ...]
) -> tuple[ReplicaTotals, ...]:
    """Two sorted tuples of replicas with load -> one, each replica once (work in the
    replicas with load, not in all of a server's)."""
    if not theirs:
        return mine
    if not mine:
        return theirs
    merged = {r.replica: r for r in mine}
    for replica in theirs:
        have = merged.get(replica.replica)
        merged[replica.replica] = replica if have is None else have.merge(replica)
    return tuple(merged[name] for name in sorted(merged))


def _union(
    mine: tuple[tuple[str, str], ...], theirs: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """Two sorted tuples of ready replicas -> their union, sorted (parts that read the same
    routing table have equal ones: compared, not rebuilt)."""
    if mine == theirs or not theirs:
        return mine
    if not mine:
        return theirs
    return tuple(sorted(set(mine) | set(theirs)))


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadTotals:
    """What some processes know of load: their servers (sorted by name, one each), their
    reporting proxies, the report interval, and when the oldest part was taken (``inf``: no
    part)."""

    servers: tuple[ServerTotals, ...] = ()
    proxies: int = 0
    interval: float = 0.0
    at: float = math.inf

    def merge(self, other: LoadTotals) -> LoadTotals:
        return LoadTotals(
            servers=merge_servers([self.servers, other.servers]),
            proxies=self.proxies + other.proxies,
            interval=max(self.interval, other.interval),
            at=min(self.at, other.at),
        )


EMPTY = LoadTotals()


def merge_servers(parts: Iterable[Iterable[ServerTotals]]) -> tuple[ServerTotals, ...]:
    """Several parts' servers -> each server once, merged, sorted by name."""
    merged: dict[str, ServerTotals] = {}
    for part in parts:
        for server in part:
            have = merged.get(server.server)
            merged[server.server] = server if have is None else have.merge(server)
    return tuple(merged[name] for name in sorted(merged))


class Wakes:
    """Where cold starts are counted: each server's latest wake. A wake is new cold starts
    seen while the server has no ready replica (judged here, by the process whose proxies
    met no replica, and never again by whoever merges its totals). Not thread-safe."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._woken_at: dict[str, float] = {}

    def see(self, server: str, cold_starts: int, *, ready: int, now: float) -> tuple[int, float]:
        """``server`` has counted ``cold_starts`` in all and has ``ready`` replicas at
        ``now``: how many of its cold starts are new, and its latest wake (``NEVER``)."""
        new = cold_starts - self._seen.get(server, 0)
        self._seen[server] = cold_starts
        if new > 0 and not ready:
            self._woken_at[server] = now
        return new, self._woken_at.get(server, NEVER)

    def counted(self, server: str) -> int:
        """The cold starts of ``server`` seen so far."""
        return self._seen.get(server, 0)

    def forget(self, server: str) -> None:
        """``server`` went: a server of that name starts again from no cold starts."""
        self._seen.pop(server, None)
        self._woken_at.pop(server, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """What a server's rows follow from its spec: the regions it lists, its cold-start mode
    and its autoscaling rule."""

    regions: tuple[str, ...] = ()
    cold_start_mode: str = ""
    autoscaling: Autoscaling | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadRow:
    """One line of ``routeplane load``: a server in a region ("*": the server's total)."""

    server: str
    region: str
    ready_replicas: int
    in_flight: float
    requests_per_second: float
    errors_per_second: float
    dropped_per_second: float
    desired_replicas: int | None  # None: the server asks for no recommendation
    # "*" rows: requests that met no replica since the control plane started (dropped at once
    # in reject mode, held in hold mode), and the server's cold-start mode.
    cold_starts: int = 0
    cold_start_mode: str = ""
    autoscaling: Autoscaling | None = None  # the rule behind desired_replicas, if any
    # The mean utilization of the row's replicas that reported one (None: none did).
    utilization: float | None = None
    # Rows whose desired_replicas is below ready_replicas: the ready replicas (ids) to remove
    # first, ready - desired of them, the idlest first (``scale_down_candidates``).
    scale_down_candidates: tuple[str, ...] = ()
    # "*" rows: the server's replicas with load (draining ones too), sorted by id.
    replicas: tuple[ReplicaTotals, ...] = ()
    # "*" rows of a server whose replicas carry revisions: one per revision with a ready
    # replica or load, sorted by name (``revision_rows``).
    revisions: tuple[RevisionRow, ...] = ()


MAX_REVISION_ROWS = 64  # revisions shown per server (revision names come from registry rows)


@dataclass(frozen=True, slots=True, kw_only=True)
class RevisionRow:
    """One revision of a server: its ready replicas, and the load of its replicas (those
    with load, draining ones too), summed."""

    revision: str  # "": replicas that carry none
    ready_replicas: int = 0
    in_flight: float = 0.0
    requests_per_second: float = 0.0
    errors_per_second: float = 0.0


def revision_rows(server: ServerTotals) -> tuple[RevisionRow, ...]:
    """``server``'s revisions that have a ready replica or load, sorted by name; none when no
    replica (ready, or with load) carries a revision other than "" (a server without revisions
    reads as before). At most ``MAX_REVISION_ROWS``: past that, those with the most requests
    per second, then the most ready replicas, are kept."""
    replicas = server.replicas
    if not server.revisions and all(not r.revision for r in replicas):
        return ()
    ready: dict[str, int] = {}
    for _, revision in server.revisions:  # each (id, revision) once
        ready[revision] = ready.get(revision, 0) + 1
    if not server.revisions:  # no ready replica carries a revision: they are all ""
        star = server.region("*")
        if star is not None and star.ready:
            ready[""] = star.ready
    load: dict[str, list[int]] = {}
    for replica in replicas:
        sums = load.get(replica.revision)
        if sums is None:
            load[replica.revision] = [replica.in_flight, replica.requests, replica.errors]
        else:
            sums[0] += replica.in_flight
            sums[1] += replica.requests
            sums[2] += replica.errors
    found = ready.keys() | load.keys()
    if len(found) > MAX_REVISION_ROWS:
        found = set(
            sorted(
                found,
                key=lambda name: (
                    -load.get(name, _NO_LOAD)[1],
                    -ready.get(name, 0),
                    name,
                ),
            )[:MAX_REVISION_ROWS]
        )
    rows = []
    for name in sorted(found):
        in_flight, requests, errors = load.get(name, _NO_LOAD)
        rows.append(
            RevisionRow(
                revision=name,
                ready_replicas=ready.get(name, 0),
                in_flight=in_flight / MILLION,
                requests_per_second=requests / MILLION,
                errors_per_second=errors / MILLION,
            )
        )
    return tuple(rows)


_NO_LOAD = [0, 0, 0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommended:
    """One server's rows, and whether a recommendation among them is still moving (not
    settled: ``load/quiet.py``), so that the server is looked at again though nothing else
    says so."""

    rows: tuple[LoadRow, ...]
    moving: bool


_Kept = tuple[tuple[tuple[str, str], ...], tuple[ReplicaTotals, ...], int, tuple[str, ...]]


class History:
    """What ``recommend`` remembers between calls: the rule's windows per (server, region)
    key, the latest wake seen per server, each server's keys (a key that goes loses its
    windows), and its last scale-down candidates per region with what they were made from (a
    server scaling down is looked at every tick; its candidates are made again only when its
    replicas or the count moved). Not thread-safe."""

    def __init__(self) -> None:
        self.recommender = Recommender()
        self._woken: dict[str, float] = {}
        self._keys: dict[str, set[Hashable]] = {}
        self._forget = False
        self._candidates: dict[str, dict[str, _Kept]] = {}

    def forget_server(self, server: str) -> None:
        """``server`` went: its windows and its wakes are forgotten."""
        if self._keys.pop(server, None):
            self._forget = True
        self._woken.pop(server, None)
        self._candidates.pop(server, None)

    def _candidates_of(
        self, server: ServerTotals, count: int, region: str, kept: dict[str, _Kept]
    ) -> tuple[str, ...]:
        """``scale_down_candidates``, or the same answer as last time if made from the same
        replicas; ``kept``: this look's answers (the server's next last ones)."""
        ready, replicas = server.ready_replicas, server.replicas
        last = self._candidates.get(server.server, {}).get(region)
        if (
            last is not None
            and last[2] == count
            and (last[0] is ready or last[0] == ready)
            and (last[1] is replicas or last[1] == replicas)
        ):
            found = last[3]
        else:
            found = scale_down_candidates(server, count, region=region)
        kept[region] = (ready, replicas, count, found)
        return found

    def _woke(self, server: ServerTotals) -> bool:
        """Whether ``server`` had a wake since the last look (the newest wake is later than
        the one seen: a wake that only an old part had, gone with it, is no new wake)."""
        seen = self._woken.get(server.server, NEVER)
        self._woken[server.server] = server.woken_at
        return server.woken_at > seen

    def _keep(self, server: str, keys: set[Hashable]) -> None:
        if self._keys.get(server, keys) - keys:
            self._forget = True  # a region or the rule went away: its history goes too
        self._keys[server] = keys

    def _prune(self) -> None:
        if self._forget:
            self.recommender.forget({key for keys in self._keys.values() for key in keys})
            self._forget = False


_NO_SPEC = LoadSpec()


def recommend(
    totals: LoadTotals,
    specs: Mapping[str, LoadSpec],
    history: History,
    *,
    now: float,
) -> dict[str, Recommended]:
    """Every server of ``totals``: its rows ("*", then its regions in order: those of its spec
    and those with ready replicas or load) with the recommendation its spec (``specs``, by
    server name; none: no recommendation) asks for, updated at ``now``. A wake moves the
    server's recommendation up at once (a request met no replica)."""
    recommended: dict[str, Recommended] = {}
    update = history.recommender.update
    for server in totals.servers:
        name = server.server
        spec = specs.get(name, _NO_SPEC)
        scaling = spec.autoscaling
        if scaling is not None and not (
            scaling.target_concurrency > 0 or scaling.target_utilization > 0
        ):
            scaling = None
        woken = history._woke(server)
        by_region = {r.region: r for r in server.regions}
        regions = sorted((set(spec.regions) | by_region.keys()) - {"*"})
        rows: list[LoadRow] = []
        keys: set[Hashable] = set()
        kept: dict[str, _Kept] = {}
        moving = False
        used_by_region = utilization_sums(server.replicas) if server.replicas else {}
        for region in ["*", *regions]:
            counts = by_region.get(region) or idle(region)
            in_flight = counts.in_flight / MILLION
            used, reporting = used_by_region.get(region, _NO_UTILIZATION)
            utilization = used if reporting else None
            desired = None
            # A recommendation for the server, and per region when it lists its regions.
            if scaling is not None and (region == "*" or spec.regions):
                key = (name, region)
                keys.add(key)
                wake = woken and region == "*"
                desired = update(
                    key,
                    in_flight=in_flight,
                    ready=counts.ready,
                    spec=scaling,
                    now=now,
                    wake=wake,
                    utilization=utilization,
                )
                moving |= not settled(
                    desired,
                    in_flight=in_flight,
                    wake=wake,
                    spec=scaling,
                    utilization=utilization,
                    ready=counts.ready,
                )
            candidates: tuple[str, ...] = ()
            if desired is not None and desired < counts.ready and not server.withheld:
                candidates = history._candidates_of(server, counts.ready - desired, region, kept)
            mean = used / reporting if reporting else None
            rows.append(
                _row(server, counts, spec, desired=desired, candidates=candidates, utilization=mean)
            )
        history._keep(name, keys)
        if kept:
            history._candidates[name] = kept
        else:
            history._candidates.pop(name, None)
        recommended[name] = Recommended(rows=tuple(rows), moving=moving)
    history._prune()
    return recommended


def scale_down_candidates(
    server: ServerTotals, count: int, *, region: str = "*"
) -> tuple[str, ...]:
    """Which of ``server``'s ready replicas (in ``region``; "*": all) to remove first, ``count``
    of them (fewer if it has fewer): the idlest first, by requests in flight, then requests per
    second, then id (a stable order). A replica with requests in flight comes after every one
    with none. Costs the server's ready replicas; called only when it has too many."""
    if count <= 0:
        return ()
    load = {r.replica: r for r in server.replicas}
    everywhere = region == "*"
    idle: list[str] = []
    busy: list[ReplicaTotals] = []
    last = None
    # ready_replicas is sorted by (id, region): a replica listed in two regions (parts whose
    # tables differ) comes twice in a row.
    for replica, where in server.ready_replicas:
        if replica == last or not (everywhere or where == region):
            continue
        last = replica
        have = load.get(replica)
        if have is None or not (have.in_flight or have.requests):  # none, or errors only
            idle.append(replica)
            if len(idle) == count:
                return tuple(idle)
        else:
            busy.append(have)
    busy.sort(key=_idleness)
    return tuple(idle + [r.replica for r in busy[: count - len(idle)]])


def _idleness(replica: ReplicaTotals) -> tuple[int, int, str]:
    return (replica.in_flight, replica.requests, replica.replica)


def _row(
    server: ServerTotals,
    counts: RegionTotals,
    spec: LoadSpec,
    *,
    desired: int | None,
    candidates: tuple[str, ...] = (),
    utilization: float | None = None,
) -> LoadRow:
    total = counts.region == "*"
    return LoadRow(
        server=server.server,
        region=counts.region,
        ready_replicas=counts.ready,
        in_flight=counts.in_flight / MILLION,
        requests_per_second=counts.requests / MILLION,
        errors_per_second=counts.errors / MILLION,
        dropped_per_second=counts.dropped / MILLION,
        desired_replicas=desired,
        cold_starts=server.cold_starts if total else 0,
        cold_start_mode=spec.cold_start_mode if total else "",
        autoscaling=spec.autoscaling if desired is not None else None,
        scale_down_candidates=candidates,
        replicas=server.replicas if total else (),
        revisions=revision_rows(server) if total else (),
        utilization=None if utilization is None else round(utilization, 6),
    )

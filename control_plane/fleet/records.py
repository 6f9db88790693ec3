"""Published load records <-> load totals, and the fleet's remote sums. Pure: time is an
argument; no I/O, no clock, no logging.

A process publishes what its own proxies report (``LoadTotals``, ``load/totals.py``) in the
wire form a worker sends its supervisor (``admin/loadwire.py``), with two changes: a wake
(``woken_at``) and the time the totals were taken (``at``) are unix seconds, not the process's
monotonic clock, and ready replicas are left out (every process reads them from the same
registry; ``merge`` keeps the most any part saw, so an old count could only hide a removal).
Only servers with load, cold starts or a wake are published, with their replicas with load
(requests in flight, requests and errors per second, and revision: issue 26).

A reader judges each other publisher's record once, here (``remote``):

- its own record and its group's (the sibling workers of one ``serve --workers``, whose totals
  reach the supervisor directly) never count;
- a record older than ``STALE_INTERVALS`` of its own interval stops counting (a crashed
  replica's share leaves the sums, as a silent proxy's does); one that keeps being rewritten
  yet is always that old comes from a clock behind, and is reported (``behind``);
- a record that is malformed, written from the future (past ``MAX_SKEW``), or bigger than
  ``MAX_RECORD_BYTES`` is ignored and reported as a ``Problem``;
- what one record can claim for a server, and over all its servers, is bounded as one proxy's
  report is (``load/reports.py``'s ``PER_SERVER`` and ``PER_PROXY``): scaled down to the bound,
  and reported; its replicas alike (their sums per server and in all), at most
  ``MAX_RECORD_REPLICAS`` of them, each id at most ``MAX_NAME`` characters and each revision
  a valid revision name (else ""), the rest left out and reported.

Imports the load totals, the reports' bounds, the admin protos and their wire form, and the
registry's record value and revision-name rule only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from google.protobuf.message import DecodeError

from control_plane.admin.loadwire import totals_from, totals_message
from control_plane.admin.pb import admin_pb2
from control_plane.load.reports import MAX_INTERVAL, PER_PROXY, PER_SERVER, STALE_INTERVALS, Bound
from control_plane.load.totals import (
    MILLION,
    NEVER,
    LoadTotals,
    RegionTotals,
    ReplicaTotals,
    ServerTotals,
    merge_servers,
    millionths,
)
from control_plane.registry.model import LoadRecord
from control_plane.registry.validate import NAME_RE, RESERVED_REVISIONS

MAX_RECORD_BYTES = 4 * 1024 * 1024  # one record's totals: ~60 bytes a busy server
MAX_RECORDS = 256  # publishers read (the newest first): control-plane processes, not proxies
MAX_SKEW = 2.0  # seconds a record may be ahead of the reader's clock
MAX_NAME = 512  # characters of a publisher or group name
MAX_COLD_STARTS = 10**12
MAX_PROXIES = 20_000  # what one process may count: load/intake.py's MAX_LOAD_STREAMS
# Replicas with load in one record (20 servers of 1,000 busy replicas; ~60 bytes each).
MAX_RECORD_REPLICAS = 20_000
PROBLEM_KIND = "load publisher"


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """A record ignored (or bounded) and why, as ``routeplane problems`` shows it."""

    publisher: str
    reason: str  # malformed, future, huge, clipped, behind: the metric's label
    field: str
    value: str
    message: str


Decoded = tuple[LoadTotals, Problem | None] | Problem


@dataclass(frozen=True, slots=True, kw_only=True)
class Remote:
    """What the other publishers' fresh records add up to (``at``: the oldest counted
    record's time, unix seconds), how many counted, and the records ignored."""

    totals: LoadTotals
    publishers: int
    problems: tuple[Problem, ...]


def publishable(totals: LoadTotals) -> LoadTotals:
    """The servers of ``totals`` worth publishing: those with load, cold starts or a wake,
    each region without its ready replicas (and a region with nothing left out)."""
    servers = []
    for server in totals.servers:
        regions = tuple(
            RegionTotals(
                region=r.region,
                in_flight=r.in_flight,
                requests=r.requests,
                errors=r.errors,
                dropped=r.dropped,
            )
            for r in server.regions
            if r.in_flight or r.requests or r.errors or r.dropped
        )
        if regions or server.replicas or server.cold_starts or server.woken_at != NEVER:
            servers.append(
                ServerTotals(
                    server=server.server,
                    regions=regions,
                    replicas=server.replicas,
                    cold_starts=server.cold_starts,
                    woken_at=server.woken_at,
                    withheld=server.withheld,
                )
            )
    return LoadTotals(
        servers=tuple(servers), proxies=totals.proxies, interval=totals.interval, at=totals.at
    )


def encode(totals: LoadTotals, *, wall_offset: float) -> bytes:
    """``totals`` (``publishable``) as a record's bytes; times moved to unix seconds by
    ``wall_offset`` (the wall clock minus the monotonic clock)."""
    shifted = LoadTotals(
        servers=tuple(
            ServerTotals(
                server=s.server,
                regions=s.regions,
                replicas=s.replicas,
                cold_starts=s.cold_starts,
                woken_at=s.woken_at + wall_offset if s.woken_at != NEVER else NEVER,
                withheld=s.withheld,
            )
            for s in totals.servers
        ),
        proxies=totals.proxies,
        interval=totals.interval,
        at=totals.at + wall_offset if math.isfinite(totals.at) else 0.0,
    )
    data: bytes = totals_message(shifted).SerializeToString()
    return data


def remote(
    records: Iterable[LoadRecord],
    *,
    publisher: str,
    group: str,
    now: float,
    wall_offset: float,
    decoded: dict[tuple[str, float, int], Decoded] | None = None,
    written: dict[str, tuple[float, float]] | None = None,
) -> Remote:
    """The sum of every other publisher's fresh record at ``now`` (unix seconds); times in the
    result are the reader's monotonic clock (unix seconds minus ``wall_offset``). ``decoded``:
    records decoded before, by (publisher, written at, size), kept by the caller so that a
    record is decoded once; entries no longer read are dropped from it. ``written``: per
    publisher, its record's time at the last read and when (``now``) it was last seen to move,
    kept by the caller: a record that keeps being rewritten yet is always stale comes from a
    clock that is behind, and is reported (``behind``) rather than silently left out."""
    cache = decoded if decoded is not None else {}
    moves = written if written is not None else {}
    keep: set[tuple[str, float, int]] = set()
    parts: list[LoadTotals] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for record in records:
        name = record.publisher
        if name == publisher or (group and record.group == group) or name in seen:
            continue
        seen.add(name)
        wrong = _check(record, now=now)
        if wrong is not None:
            problems.append(wrong)
            continue
        before = moves.get(name)
        moved_at = before[1] if before is not None and before[0] == record.written_at else now
        moves[name] = (record.written_at, -math.inf if before is None else moved_at)
        if now - record.written_at > STALE_INTERVALS * record.interval:
            # Stopped publishing: stops counting. Still being rewritten: its clock is behind.
            if now - moves[name][1] <= STALE_INTERVALS * record.interval:
                problems.append(
                    _problem(
                        record,
                        "behind",
                        "written_at",
                        record.written_at,
                        f"rewritten, yet written {now - record.written_at:.1f} s before this "
                        "control plane's clock says: more than 3 of its intervals (a clock "
                        "behind); its load does not count",
                    )
                )
            continue
        key = (name, record.written_at, record.size)
        keep.add(key)
        value = cache.get(key)
        if value is None:
            value = cache[key] = _decode(record, wall_offset=wall_offset, now=now)
        if isinstance(value, Problem):
            problems.append(value)
            continue
        part, clipped = value
        parts.append(part)
        if clipped is not None:
            problems.append(clipped)
    for key in cache.keys() - keep:
        del cache[key]
    for name in moves.keys() - seen:
        del moves[name]
    totals = LoadTotals(
        servers=merge_servers(part.servers for part in parts),
        proxies=sum(part.proxies for part in parts),
        interval=max((part.interval for part in parts), default=0.0),
        at=min((part.at for part in parts), default=math.inf),
    )
    return Remote(totals=totals, publishers=len(parts), problems=tuple(problems))


def _problem(record: LoadRecord, reason: str, field: str, value: object, message: str) -> Problem:
    return Problem(
        publisher=record.publisher[:MAX_NAME],
        reason=reason,
        field=field,
        value=str(value)[:80],
        message=message,
    )


def _check(record: LoadRecord, *, now: float) -> Problem | None:
    """Why ``record`` cannot count at all, from its columns alone (None: it may)."""
    if record.totals is None and record.size > MAX_RECORD_BYTES:
        return _problem(
            record,
            "huge",
            "totals",
            f"{record.size} bytes",
            f"a published load record of {record.size:,} bytes; at most {MAX_RECORD_BYTES:,}",
        )
    if record.totals is None:
        return _problem(record, "malformed", "totals", "not bytes", "totals are not bytes")
    if not record.publisher or len(record.publisher) > MAX_NAME or len(record.group) > MAX_NAME:
        return _problem(
            record,
            "malformed",
            "publisher",
            record.publisher,
            f"a publisher and its group are 1-{MAX_NAME} characters",
        )
    if not math.isfinite(record.written_at):
        return _problem(
            record, "malformed", "written_at", record.written_at, "not a time in unix seconds"
        )
    if not (math.isfinite(record.interval) and 0 < record.interval <= MAX_INTERVAL):
        return _problem(
            record,
            "malformed",
            "interval",
            record.interval,
            f"a report interval is above 0 and at most {MAX_INTERVAL:g} seconds",
        )
    if record.written_at > now + MAX_SKEW:
        return _problem(
            record,
            "future",
            "written_at",
            record.written_at,
            f"written {record.written_at - now:.1f} s ahead of this control plane's clock "
            f"(at most {MAX_SKEW:g} s)",
        )
    return None


def _decode(record: LoadRecord, *, wall_offset: float, now: float) -> Decoded:
    """A record's totals, bounded (and a problem saying so when the bound cut them), times on
    the reader's monotonic clock; or the problem that it cannot be read."""
    message = admin_pb2.LoadTotals()
    try:
        message.ParseFromString(record.totals or b"")
    except DecodeError as exc:
        return _problem(record, "malformed", "totals", "not a LoadTotals message", str(exc)[:200])
    totals = totals_from(message)
    servers = []
    replicas_left = MAX_RECORD_REPLICAS
    for server in totals.servers:
        woken = server.woken_at
        # A wake is a time like the record's: none from the future, none before 1970.
        if not (math.isfinite(woken) and 0 < woken <= now + MAX_SKEW):
            woken = NEVER
        replicas = _checked_replicas(server.replicas, replicas_left)
        replicas_left -= len(replicas)
        servers.append(
            ServerTotals(
                server=server.server,
                regions=tuple(_bounded(r, PER_SERVER) for r in server.regions),
                replicas=_bounded_replicas(replicas, PER_SERVER),
                cold_starts=min(server.cold_starts, MAX_COLD_STARTS),
                woken_at=woken - wall_offset if woken != NEVER else NEVER,
                withheld=server.withheld,
            )
        )
    bounded = LoadTotals(
        servers=_bounded_all(servers),
        proxies=min(totals.proxies, MAX_PROXIES),
        interval=record.interval,
        at=record.written_at - wall_offset,
    )
    return bounded, _clipped(record, totals, bounded)


_FIELDS = (
    ("in_flight", "in_flight"),
    ("requests", "requests_per_second"),
    ("errors", "errors_per_second"),
    ("dropped", "dropped_per_second"),
)
# Each bound's figures in millionths, in _FIELDS' order.
_LIMITS = {
    bound: tuple(millionths(getattr(bound, theirs)) for _, theirs in _FIELDS)
    for bound in (PER_SERVER, PER_PROXY)
}


def _bounded(region: RegionTotals, bound: Bound, scale: float = 1.0) -> RegionTotals:
    """``region`` with each figure at most ``bound``'s (in millionths), times ``scale``; no
    ready replicas (the reader counts its own)."""
    flight, requests, errors, dropped = _LIMITS[bound]
    if scale == 1.0:
        return RegionTotals(
            region=region.region,
            in_flight=min(region.in_flight, flight),
            requests=min(region.requests, requests),
            errors=min(region.errors, errors),
            dropped=min(region.dropped, dropped),
        )
    return RegionTotals(
        region=region.region,
        in_flight=min(round(region.in_flight * scale), flight),
        requests=min(round(region.requests * scale), requests),
        errors=min(round(region.errors * scale), errors),
        dropped=min(round(region.dropped * scale), dropped),
    )


def _checked_replicas(replicas: tuple[ReplicaTotals, ...], room: int) -> tuple[ReplicaTotals, ...]:
    """``replicas`` with an id of at most ``MAX_NAME`` characters, the first ``room`` of them,
    each revision a valid revision name or else ""."""
    kept: list[ReplicaTotals] = []
    for replica in replicas:
        if len(kept) >= room:
            break
        if not replica.replica or len(replica.replica) > MAX_NAME:
            continue
        revision = replica.revision
        if revision and (revision in RESERVED_REVISIONS or not NAME_RE.match(revision)):
            replica = replace(replica, revision="")
        if len(replica.region) > MAX_NAME:
            replica = replace(replica, region="")
        kept.append(replica)
    return tuple(kept)


_REPLICA_FIELDS = ("in_flight", "requests", "errors")


def _bounded_replicas(
    replicas: tuple[ReplicaTotals, ...], bound: Bound, scale: float = 1.0
) -> tuple[ReplicaTotals, ...]:
    """One server's replicas, times ``scale``, their sums at most ``bound``'s (each figure
    scaled down alike past it, as ``load/reports.py`` bounds one report's replicas)."""
    if not replicas:
        return replicas
    flight, requests, errors, _ = _LIMITS[bound]
    factors = []
    for field, limit in zip(_REPLICA_FIELDS, (flight, requests, errors), strict=True):
        total = sum(getattr(r, field) for r in replicas) * scale
        factors.append(scale * min(1.0, limit / total) if total > limit else scale)
    # Utilization weights (requests that carried it) within the bound of requests, each
    # replica's value scaled alike: its mean stays, one record cannot outweigh the rest.
    weights = sum(r.utilization_weight for r in replicas) * scale
    factors.append(scale * min(1.0, requests / weights) if weights > requests else scale)
    if factors == [1.0, 1.0, 1.0, 1.0]:
        return replicas
    return tuple(
        replace(
            r,
            in_flight=math.floor(r.in_flight * factors[0]),
            requests=math.floor(r.requests * factors[1]),
            errors=math.floor(r.errors * factors[2]),
            utilization_value=math.floor(r.utilization_value * factors[3]),
            utilization_weight=math.floor(r.utilization_weight * factors[3]),
        )
        for r in replicas
    )


def _bounded_all(servers: list[ServerTotals]) -> tuple[ServerTotals, ...]:
    """Every server's figures scaled down together so that their sum ("*" rows) stays within
    ``PER_PROXY``, as ``load/reports.py`` bounds one report."""
    scale = 1.0
    for mine, theirs in _FIELDS:
        limit = millionths(getattr(PER_PROXY, theirs))
        totals = [sum(_star(s, mine) for s in servers)]
        if mine in _REPLICA_FIELDS:
            totals.append(sum(getattr(r, mine) for s in servers for r in s.replicas))
        for total in totals:
            if total > limit:
                scale = min(scale, limit / total)
    if scale == 1.0:
        return tuple(servers)
    return tuple(
        ServerTotals(
            server=s.server,
            regions=tuple(_bounded(r, PER_SERVER, scale) for r in s.regions),
            replicas=_bounded_replicas(s.replicas, PER_SERVER, scale),
            cold_starts=s.cold_starts,
            woken_at=s.woken_at,
            withheld=s.withheld,
        )
        for s in servers
    )


def _star(server: ServerTotals, field: str) -> int:
    star = server.region("*")
    return int(getattr(star, field)) if star is not None else 0


def _clipped(record: LoadRecord, claimed: LoadTotals, bounded: LoadTotals) -> Problem | None:
    """A problem when bounding cut what ``record`` claims."""
    for was, now in zip(claimed.servers, bounded.servers, strict=True):
        if was.replicas != now.replicas:
            return _problem(
                record,
                "clipped",
                f"{was.server}.replicas",
                f"{len(was.replicas)} replicas",
                f"more than one proxy's report may claim, more than {MAX_RECORD_REPLICAS:,} "
                "replicas in one record, or a replica id or revision that is not one: scaled "
                "down to that bound, or left out",
            )
        for region_was, region in zip(was.regions, now.regions, strict=True):
            if (
                region_was.in_flight,
                region_was.requests,
                region_was.errors,
                region_was.dropped,
            ) == (
                region.in_flight,
                region.requests,
                region.errors,
                region.dropped,
            ):
                continue
            for mine, _ in _FIELDS:
                if getattr(region_was, mine) != getattr(region, mine):
                    return _problem(
                        record,
                        "clipped",
                        f"{was.server}/{region.region}.{mine}",
                        getattr(region_was, mine) / MILLION,
                        "more than one proxy's report may claim: scaled down to that bound",
                    )
    return None


def problems_by_reason(problems: Iterable[Problem]) -> Mapping[str, int]:
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.reason] = counts.get(problem.reason, 0) + 1
    return counts

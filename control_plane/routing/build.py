"""RegistryState -> RoutingTable, as pure pieces the pipeline composes.

Rules: STARTING replicas get no traffic, READY do, DRAINING stay listed as draining (no new
requests, open streams finish). Expired leases are the registry clean-up's job: the control
plane deletes such rows (``Registry.remove_expired``), so they vanish like deregistered ones.
A malformed row (unknown protocol, bad address, weight out of range, a bad revision, a
hostname two servers claim) becomes a Problem and is left out. A server's traffic split is
resolved against its replicas' revisions by ``routing.split`` (issue 26).

Three steps: :func:`evaluate` judges one server on its own (the expensive part, memoized by the
pipeline by value); :func:`claim_hostnames` settles who owns each hostname across servers;
:func:`to_routed` joins the two. :func:`to_routing_table` runs all three from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import compress, count
from operator import is_not, itemgetter

from control_plane.registry import validate
from control_plane.registry.errors import ValidationError
from control_plane.registry.model import RegistryState, Replica, ReplicaState, Server
from control_plane.registry.rows import excerpt
from control_plane.registry.spec import DEFAULT as DEFAULT_SPEC
from control_plane.registry.spec import decode as decode_spec
from control_plane.registry.spec import parse_spec
from control_plane.routing.model import (
    Claim,
    Endpoint,
    Problem,
    RoutedServer,
    RoutingTable,
    ServerEval,
)
from control_plane.routing.split import resolve as resolve_split


def to_routing_table(state: RegistryState) -> RoutingTable:
    """The routing table of ``state``, computed from scratch."""
    evals = {s.name: evaluate(s, state.replicas_by_server.get(s.name, ())) for s in state.servers}
    claims = claim_hostnames(claim_of(s, evals[s.name]) for s in state.servers)
    routed: list[RoutedServer] = []
    problems: list[Problem] = []
    for server in state.servers:
        ev = evals[server.name]
        mine, lost = claims.get(server.name, ((), ()))
        problems.extend(server_problems(ev, lost))
        if mine:
            routed.append(to_routed(server, ev, mine))
    problems.extend(unknown_server_problems(state.replicas_by_server, evals))
    return RoutingTable(
        servers=tuple(routed),
        problems=tuple(problems),
        revision=state.revision,
        committed_at=state.committed_at,
    )


def claim_of(server: Server, ev: ServerEval) -> Claim | None:
    """What ``ev`` asks for in the hostname space (None: a server left out claims nothing)."""
    if ev.protocol is None:
        return None
    return Claim(
        server=server.name,
        hostnames=ev.hostnames,
        path_prefix=ev.spec.path_prefix,
        since=server.created_at,
    )


def claim_hostnames(
    claims: Iterable[Claim | None],
) -> dict[str, tuple[tuple[str, ...], tuple[Problem, ...]]]:
    """Per server: the hostnames it owns and the problems for those it lost. The server that
    claimed first (earliest ``since``, then name order) owns a hostname under a path prefix."""
    owners: dict[tuple[str, str], str] = {}
    result: dict[str, tuple[tuple[str, ...], tuple[Problem, ...]]] = {}
    ordered = sorted((c for c in claims if c is not None), key=lambda c: (c.since, c.server))
    for claim in ordered:
        mine: list[str] = []
        lost: list[Problem] = []
        prefix = claim.path_prefix
        for hostname in claim.hostnames:
            owner = owners.get((hostname, prefix))
            if owner is not None:
                lost.append(
                    Problem(
                        kind="server",
                        name=claim.server,
                        field="hostname",
                        value=hostname if prefix == "/" else f"{hostname}{prefix}",
                        message=f"already claimed by server {owner!r}; left out for this server",
                    )
                )
                continue
            owners[(hostname, prefix)] = claim.server
            mine.append(hostname)
        result[claim.server] = (tuple(mine), tuple(lost))
    return result


def server_problems(ev: ServerEval, lost: Sequence[Problem]) -> tuple[Problem, ...]:
    """A server's problems in report order: its own, its lost hostnames, its replicas'."""
    if ev.protocol is None:
        return ev.problems
    return (*ev.problems, *lost, *ev.replica_problems, *ev.traffic_problems)


def to_routed(server: Server, ev: ServerEval, hostnames: tuple[str, ...]) -> RoutedServer:
    assert ev.protocol is not None
    return RoutedServer(
        name=server.name,
        workspace=server.workspace,
        hostnames=hostnames,
        protocol=ev.protocol,
        endpoints=ev.endpoints,
        spec=ev.spec,
        revisions=ev.revisions,
        split=ev.split,
        tags=ev.tags,
    )


def unknown_server_problems(
    replicas_by_server: Mapping[str, Sequence[Replica]], servers: Mapping[str, object]
) -> list[Problem]:
    """One problem per replica whose server does not exist."""
    return [
        Problem(
            kind="replica", name=replica.id, field="server", value=name, message="unknown server"
        )
        for name in sorted(set(replicas_by_server) - set(servers))
        for replica in replicas_by_server[name]
    ]


# One replica row judged alone: its endpoint (None: not routed) and its problem.
Verdict = tuple[Endpoint | None, Problem | None]
# The verdicts of a server's rows, aligned with them: their endpoints, and their problems (two
# tuples rather than one pair per row: a large server's memo holds two objects, not 10,000).
Verdicts = tuple[tuple[Endpoint | None, ...], tuple[Problem | None, ...]]
_NO_VERDICTS: Verdicts = ((), ())


def evaluate(server: Server, replicas: Sequence[Replica]) -> ServerEval:
    """Everything about one server that does not depend on other servers."""
    return evaluate_with(server, tuple(replicas))[0]


def evaluate_with(
    server: Server,
    replicas: tuple[Replica, ...],
    *,
    previous: tuple[tuple[Replica, ...], Verdicts] | None = None,
) -> tuple[ServerEval, Verdicts]:
    """:func:`evaluate`, also returning the verdicts of the replica rows (aligned with
    ``replicas``), and taking the verdict of every row equal to one judged in ``previous`` (the
    rows of an earlier evaluation of the same server, and their verdicts) instead of judging it
    again: rows stay in id order, so what differs is the run between the longest common prefix
    and suffix (compared by identity first, which only short-cuts equal rows; the run is then
    compared by value). A change to one replica of a large server judges one row."""
    try:
        validate.name("name", server.name)
        validate.name("workspace", server.workspace)
        protocol = validate.protocol(server.protocol)
        hostnames = validate.hostnames(server.hostnames)
        spec = parse_spec(decode_spec(server.spec), protocol=protocol)
    except ValidationError as exc:
        return ServerEval(
            protocol=None,
            hostnames=(),
            spec=DEFAULT_SPEC,
            problems=(_problem("server", server.name, exc),),
            endpoints=(),
            replica_problems=(),
        ), _NO_VERDICTS
    verdicts = _verdicts(replicas, previous)
    if not spec.regions:
        endpoints = tuple(filter(None, verdicts[0]))
        replica_problems = tuple(filter(None, verdicts[1]))
    else:
        endpoints, replica_problems = _in_regions(server.name, spec.regions, replicas, verdicts)
    traffic = resolve_split(server.name, spec.traffic, endpoints)
    return ServerEval(
        protocol=protocol,
        hostnames=hostnames,
        spec=spec,
        problems=(),
        endpoints=endpoints,
        replica_problems=replica_problems,
        revisions=traffic.revisions,
        split=traffic.split,
        tags=traffic.tags,
        traffic_problems=traffic.problems,
    ), verdicts


def _verdicts(
    replicas: tuple[Replica, ...], previous: tuple[tuple[Replica, ...], Verdicts] | None
) -> Verdicts:
    rows, (endpoints, problems) = previous if previous is not None else ((), _NO_VERDICTS)
    if len(endpoints) != len(rows) or not rows or not replicas:
        return _split(list(map(_verdict, replicas)))
    if rows is replicas or rows == replicas:
        return endpoints, problems
    shorter = min(len(rows), len(replicas))
    start = next(compress(count(), map(is_not, rows, replicas)), shorter)
    tail = min(
        next(compress(count(), map(is_not, reversed(rows), reversed(replicas))), shorter),
        shorter - start,
    )
    old_end, new_end = len(rows) - tail, len(replicas) - tail
    known = {
        row.id: (row, (endpoints[i], problems[i]))
        for i, row in enumerate(rows[start:old_end], start)
    }
    judged = []
    for row in replicas[start:new_end]:
        seen = known.get(row.id)
        judged.append(
            seen[1] if seen is not None and (seen[0] is row or seen[0] == row) else _verdict(row)
        )
    middle = _split(judged)
    return (
        endpoints[:start] + middle[0] + endpoints[old_end:],
        problems[:start] + middle[1] + problems[old_end:],
    )


def _split(verdicts: list[Verdict]) -> Verdicts:
    return tuple(map(itemgetter(0), verdicts)), tuple(map(itemgetter(1), verdicts))


def _in_regions(
    name: str,
    regions: tuple[str, ...],
    replicas: tuple[Replica, ...],
    verdicts: Verdicts,
) -> tuple[tuple[Endpoint, ...], tuple[Problem, ...]]:
    """Endpoints and problems of a server that routes only to ``regions``."""
    allowed = frozenset(regions)
    endpoints: list[Endpoint] = []
    problems: list[Problem] = []
    for replica, endpoint, problem in zip(replicas, *verdicts, strict=True):
        if problem is not None:
            problems.append(problem)
        if endpoint is None:
            continue
        if endpoint.region not in allowed:
            problems.append(
                Problem(
                    kind="replica",
                    name=replica.id,
                    field="region",
                    value=endpoint.region,
                    message=f"server {name!r} routes only to {', '.join(regions)}",
                )
            )
            continue
        endpoints.append(endpoint)
    return tuple(endpoints), tuple(problems)


_STARTING = ReplicaState.STARTING.value
_DRAINING = ReplicaState.DRAINING.value
_NOT_ROUTED: Verdict = (None, None)


def _verdict(replica: Replica) -> Verdict:
    try:
        state = validate.state(replica.state)
        host = validate.host(replica.host)
        port = validate.port(replica.port)
        weight = validate.weight(replica.weight)
        region = validate.region("region", replica.region)
        zone = validate.region("zone", replica.zone, required=False)
        revision = validate.revision("revision", replica.revision)
    except ValidationError as exc:
        return None, _problem("replica", replica.id, exc)
    if state == _STARTING:
        return _NOT_ROUTED
    endpoint = Endpoint(
        replica_id=replica.id,
        host=host,
        port=port,
        region=region,
        zone=zone,
        weight=weight,
        draining=state == _DRAINING,
        revision=revision,
        registered_at=_registered_at(replica.registered_at),
    )
    return endpoint, None


def _registered_at(value: object) -> float:
    """A row's registration time as a finite number (0, unknown, for anything else): ``latest``
    compares them, and must come out the same in every process."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def _problem(kind: str, name: str, exc: ValidationError) -> Problem:
    value = excerpt(str(exc.value))  # a row may hold kilobytes in one field
    return Problem(kind=kind, name=name, field=exc.field, value=value, message=exc.reason)

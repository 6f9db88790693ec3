"""RegistryState -> RoutingTable.

Rules: STARTING replicas get no traffic, READY do, DRAINING stay listed as draining (no new
requests, open streams finish). Expired leases are the registry clean-up's job: the control
plane deletes such rows (``Registry.remove_expired``), so they vanish like deregistered ones.
A malformed row (unknown protocol, bad address, weight out of range, a hostname two servers
claim) becomes a Problem and is left out.
"""

from __future__ import annotations

from collections import defaultdict

from control_plane.registry import validate
from control_plane.registry.errors import ValidationError
from control_plane.registry.model import RegistryState, Replica, ReplicaState, Server
from control_plane.routing.model import Endpoint, Problem, RoutedServer, RoutingTable


def to_routing_table(state: RegistryState, *, now: float) -> RoutingTable:
    problems: list[Problem] = []
    by_server: dict[str, list[Replica]] = defaultdict(list)
    for replica in state.replicas:
        by_server[replica.server].append(replica)
    claimed: dict[str, str] = {}
    servers: list[RoutedServer] = []
    for server in sorted(state.servers, key=lambda s: s.name):
        routed = _to_routed_server(server, by_server.get(server.name, ()), claimed, problems, now)
        if routed is not None:
            servers.append(routed)
    known = {s.name for s in state.servers}
    for name in sorted(set(by_server) - known):
        for replica in by_server[name]:
            problems.append(
                Problem(
                    kind="replica",
                    name=replica.id,
                    field="server",
                    value=name,
                    message="unknown server",
                )
            )
    return RoutingTable(
        servers=tuple(servers),
        problems=tuple(problems),
        revision=state.revision,
        committed_at=state.committed_at,
    )


def _to_routed_server(
    server: Server,
    replicas: list[Replica] | tuple[()],
    claimed: dict[str, str],
    problems: list[Problem],
    now: float,
) -> RoutedServer | None:
    try:
        validate.name("name", server.name)
        validate.name("workspace", server.workspace)
        protocol = validate.protocol(server.protocol)
        hostnames = validate.hostnames(server.hostnames)
    except ValidationError as exc:
        problems.append(_problem("server", server.name, exc))
        return None
    mine: list[str] = []
    for hostname in hostnames:
        owner = claimed.get(hostname)
        if owner is not None:
            problems.append(
                Problem(
                    kind="server",
                    name=server.name,
                    field="hostname",
                    value=hostname,
                    message=f"already claimed by server {owner!r}; left out for this server",
                )
            )
            continue
        claimed[hostname] = server.name
        mine.append(hostname)
    if not mine:
        return None
    endpoints: list[Endpoint] = []
    for replica in sorted(replicas, key=lambda r: r.id):
        endpoint = _to_endpoint(replica, problems, now)
        if endpoint is not None:
            endpoints.append(endpoint)
    return RoutedServer(
        name=server.name,
        workspace=server.workspace,
        hostnames=tuple(mine),
        protocol=protocol,
        endpoints=tuple(endpoints),
    )


def _to_endpoint(replica: Replica, problems: list[Problem], now: float) -> Endpoint | None:
    try:
        state = validate.state(replica.state)
        host = validate.host(replica.host)
        port = validate.port(replica.port)
        weight = validate.weight(replica.weight)
        region = validate.region("region", replica.region)
        zone = validate.region("zone", replica.zone, required=False)
    except ValidationError as exc:
        problems.append(_problem("replica", replica.id, exc))
        return None
    if state == ReplicaState.STARTING:
        return None
    return Endpoint(
        replica_id=replica.id,
        host=host,
        port=port,
        region=region,
        zone=zone,
        weight=weight,
        draining=state == ReplicaState.DRAINING,
    )


def _problem(kind: str, name: str, exc: ValidationError) -> Problem:
    return Problem(kind=kind, name=name, field=exc.field, value=str(exc.value), message=exc.reason)

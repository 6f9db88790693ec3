"""RegistryState -> RoutingTable.

Rules: STARTING replicas get no traffic, READY do, DRAINING stay listed as draining (no new
requests, open streams finish). Expired leases are the registry clean-up's job: the control
plane deletes such rows (``Registry.remove_expired``), so they vanish like deregistered ones.
A malformed row (unknown protocol, bad address, weight out of range, a hostname two servers
claim) becomes a Problem and is left out.

Incremental: given the previous table and a state that names what changed, only the changed
servers are evaluated again; everything else (including the RoutedServer objects) is reused,
so one replica change among 10,000 costs one server's work plus a walk over server names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from control_plane.registry import validate
from control_plane.registry.errors import ValidationError
from control_plane.registry.model import RegistryState, Replica, ReplicaState, Server
from control_plane.registry.spec import DEFAULT as DEFAULT_SPEC
from control_plane.registry.spec import parse_spec
from control_plane.routing.model import Endpoint, Problem, RoutedServer, RoutingTable, ServerEval


def to_routing_table(
    state: RegistryState, *, now: float, previous: RoutingTable | None = None
) -> RoutingTable:
    reusable = previous.evals if previous is not None and state.changed is not None else {}
    changed = state.changed or frozenset()
    if previous is not None and reusable:
        fast = _only_endpoints_changed(state, previous, changed)
        if fast is not None:
            return fast
    evals: dict[str, ServerEval] = {}
    for server in state.servers:
        old = reusable.get(server.name)
        if old is not None and server.name not in changed:
            evals[server.name] = old
        else:
            evals[server.name] = evaluate(server, state.replicas_by_server.get(server.name, ()))
    before = {s.name: s for s in previous.servers} if previous is not None else {}
    claimed: dict[tuple[str, str], str] = {}
    problems: list[Problem] = []
    routed: list[RoutedServer] = []
    for server in state.servers:
        ev = evals[server.name]
        problems.extend(ev.problems)
        if ev.protocol is None:
            continue
        mine = _claim(server.name, ev.hostnames, ev.spec.path_prefix, claimed, problems)
        problems.extend(ev.replica_problems)
        if not mine:
            continue
        old_routed = before.get(server.name)
        if (
            old_routed is not None
            and old_routed.endpoints is ev.endpoints
            and old_routed.hostnames == mine
            and old_routed.protocol == ev.protocol
            and old_routed.workspace == server.workspace
            and old_routed.spec == ev.spec
        ):
            routed.append(old_routed)
        else:
            routed.append(
                RoutedServer(
                    name=server.name,
                    workspace=server.workspace,
                    hostnames=mine,
                    protocol=ev.protocol,
                    endpoints=ev.endpoints,
                    spec=ev.spec,
                )
            )
    for name in sorted(set(state.replicas_by_server) - set(evals)):
        for replica in state.replicas_by_server[name]:
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
        servers=tuple(routed),
        problems=tuple(problems),
        revision=state.revision,
        committed_at=state.committed_at,
        evals=evals,
    )


def _only_endpoints_changed(
    state: RegistryState, previous: RoutingTable, changed: frozenset[str]
) -> RoutingTable | None:
    """The common case, in time proportional to the change: only replicas of existing servers
    changed, no problems before or after. None when the full walk is needed."""
    if previous.problems or len(state.servers) != len(previous.evals):
        return None
    positions = {s.name: i for i, s in enumerate(previous.servers)}
    evals = dict(previous.evals)
    routed = list(previous.servers)
    names = {s.name for s in state.servers} if changed else set()
    for name in changed:
        old = previous.evals.get(name)
        position = positions.get(name)
        if old is None or position is None or name not in names:
            return None
        server = next((s for s in state.servers if s.name == name), None)
        if server is None:
            return None
        ev = evaluate(server, state.replicas_by_server.get(name, ()))
        if (
            ev.problems
            or ev.replica_problems
            or ev.protocol != old.protocol
            or ev.hostnames != old.hostnames
            or ev.spec != old.spec
            or server.workspace != routed[position].workspace
        ):
            return None
        evals[name] = ev
        old_routed = routed[position]
        routed[position] = RoutedServer(
            name=old_routed.name,
            workspace=old_routed.workspace,
            hostnames=old_routed.hostnames,
            protocol=old_routed.protocol,
            endpoints=ev.endpoints,
            spec=old_routed.spec,
        )
    return RoutingTable(
        servers=tuple(routed),
        problems=(),
        revision=state.revision,
        committed_at=state.committed_at,
        evals=evals,
    )


def _claim(
    name: str,
    hostnames: tuple[str, ...],
    prefix: str,
    claimed: dict[tuple[str, str], str],
    problems: list[Problem],
) -> tuple[str, ...]:
    mine: list[str] = []
    for hostname in hostnames:
        owner = claimed.get((hostname, prefix))
        if owner is not None:
            problems.append(
                Problem(
                    kind="server",
                    name=name,
                    field="hostname",
                    value=hostname if prefix == "/" else f"{hostname}{prefix}",
                    message=f"already claimed by server {owner!r}; left out for this server",
                )
            )
            continue
        claimed[(hostname, prefix)] = name
        mine.append(hostname)
    return tuple(mine)


def evaluate(server: Server, replicas: Sequence[Replica]) -> ServerEval:
    """Everything about one server that does not depend on other servers."""
    try:
        validate.name("name", server.name)
        validate.name("workspace", server.workspace)
        protocol = validate.protocol(server.protocol)
        hostnames = validate.hostnames(server.hostnames)
        spec = parse_spec(_spec_dict(server.spec), protocol=protocol)
    except ValidationError as exc:
        return ServerEval(
            protocol=None,
            hostnames=(),
            spec=DEFAULT_SPEC,
            problems=(_problem("server", server.name, exc),),
            endpoints=(),
            replica_problems=(),
        )
    endpoints: list[Endpoint] = []
    replica_problems: list[Problem] = []
    allowed = frozenset(spec.regions)
    for replica in replicas:
        endpoint = _to_endpoint(replica, replica_problems)
        if endpoint is None:
            continue
        if allowed and endpoint.region not in allowed:
            replica_problems.append(
                Problem(
                    kind="replica",
                    name=replica.id,
                    field="region",
                    value=endpoint.region,
                    message=f"server {server.name!r} routes only to {', '.join(spec.regions)}",
                )
            )
            continue
        endpoints.append(endpoint)
    return ServerEval(
        protocol=protocol,
        hostnames=hostnames,
        spec=spec,
        problems=(),
        endpoints=tuple(endpoints),
        replica_problems=tuple(replica_problems),
    )


def _to_endpoint(replica: Replica, problems: list[Problem]) -> Endpoint | None:
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


def _spec_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        raise ValidationError("spec", text, "not valid JSON") from None
    if not isinstance(value, dict):
        raise ValidationError("spec", text, "expected a JSON object")
    return value


def _problem(kind: str, name: str, exc: ValidationError) -> Problem:
    return Problem(kind=kind, name=name, field=exc.field, value=str(exc.value), message=exc.reason)

"""Writes shared by every store: validation of servers and replicas, and the hostname rule."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from control_plane.registry import validate
from control_plane.registry.errors import ConflictError
from control_plane.registry.model import Replica, Server
from control_plane.registry.spec import parse_spec


def checked_server(
    *,
    name: str,
    hostnames: Sequence[str],
    protocol: str,
    workspace: str,
    spec: Mapping[str, Any] | None,
    updated_at: float = 0.0,
) -> Server:
    """A validated Server; raises ValidationError naming the field."""
    checked_protocol = validate.protocol(protocol)
    parse_spec(spec, protocol=checked_protocol)
    return Server(
        name=validate.name("name", name),
        workspace=validate.name("workspace", workspace),
        hostnames=validate.hostnames(hostnames),
        protocol=checked_protocol,
        spec=canonical_spec(spec),
        updated_at=updated_at,
    )


def canonical_spec(spec: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(spec or {}), sort_keys=True, separators=(",", ":"))


def route_keys(server: Server) -> set[tuple[str, str]]:
    """What a server claims: (hostname, path prefix) pairs; two servers may not share one."""
    prefix = str(json.loads(server.spec or "{}").get("path_prefix", "/"))
    return {(hostname, prefix) for hostname in server.hostnames}


def check_conflicts(server: Server, others: Iterable[Server]) -> None:
    mine = route_keys(server)
    for other in others:
        if other.name == server.name:
            continue
        taken = mine & route_keys(other)
        if taken:
            hostname, prefix = sorted(taken)[0]
            where = hostname if prefix == "/" else f"{hostname}{prefix}"
            raise ConflictError(f"hostname {where!r} already belongs to server {other.name!r}")


def checked_replica(
    *,
    server: str,
    address: str,
    region: str,
    zone: str,
    weight: int,
    state: str,
    lease_seconds: float | None,
) -> Replica:
    """A new, validated Replica with a fresh id; raises ValidationError naming the field."""
    host, port = validate.address(address)
    if lease_seconds is not None:
        validate.lease(lease_seconds)
    now = time.time()
    return Replica(
        id="r-" + secrets.token_hex(5),
        server=validate.name("server", server),
        host=host,
        port=port,
        region=validate.region("region", region),
        zone=validate.region("zone", zone, required=False),
        weight=validate.weight(weight),
        state=validate.state(state),
        lease_expires_at=None if lease_seconds is None else now + lease_seconds,
        updated_at=now,
    )

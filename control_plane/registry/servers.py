"""Writes shared by every store (validation of servers and replicas, the hostname rule) and
servers files: the YAML ``servers:`` list that ``routeplane servers apply`` and the dev mesh
apply through one function, :func:`apply_servers`.

Imports only ``registry`` modules (and PyYAML); never the CLI, ``dev`` or the serving path.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from control_plane.registry import validate
from control_plane.registry.errors import (
    ConflictError,
    RegistryError,
    ServersFileError,
    ValidationError,
)
from control_plane.registry.model import Registry, Replica, Server
from control_plane.registry.revisions import is_alive
from control_plane.registry.spec import KNOWN_FIELDS, LATEST, TrafficTarget, parse_spec
from control_plane.registry.spec import decode as decode_spec


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
    try:
        spec = decode_spec(server.spec)
    except ValidationError:
        spec = {}  # a row another writer left malformed (any shape): routing reports it
    prefix = str(spec.get("path_prefix", "/"))
    return {(str(hostname), prefix) for hostname in server.hostnames}


def check_batch(servers: Sequence[Server]) -> None:
    """ConflictError if two entries of one batch share a name or a hostname+prefix."""
    names: set[str] = set()
    owners: dict[tuple[str, str], str] = {}
    for server in servers:
        if server.name in names:
            raise ConflictError(f"server {server.name!r} appears twice")
        names.add(server.name)
        for key in sorted(route_keys(server)):
            other = owners.setdefault(key, server.name)
            if other != server.name:
                hostname, prefix = key
                where = hostname if prefix == "/" else f"{hostname}{prefix}"
                raise ConflictError(
                    f"hostname {where!r} is claimed by both {other!r} and {server.name!r}"
                )


def plan_puts(
    servers: Sequence[Server], existing: Mapping[str, Server], *, create_only: bool = False
) -> list[tuple[Server, str, Server | None]]:
    """What writing ``servers`` over ``existing`` means, checked before anything is written:
    per server (itself, its outcome, the row it replaces). Raises ConflictError."""
    check_batch(servers)
    incoming = {s.name for s in servers}
    others = [s for name, s in existing.items() if name not in incoming]
    plan: list[tuple[Server, str, Server | None]] = []
    for server in servers:
        current = existing.get(server.name)
        if current is not None and create_only:
            raise ConflictError(f"server {server.name!r} already exists")
        check_conflicts(server, others)
        if current is not None and current.same_config(server):
            plan.append((current, "unchanged", current))
        else:
            plan.append((server, "created" if current is None else "updated", current))
    return plan


def check_conflicts(server: Server, others: Iterable[Server]) -> None:
    mine = route_keys(server)
    for other in others:
        if other.name == server.name:
            continue
        taken = mine & route_keys(other)
        if taken:
            hostname, prefix = sorted(taken)[0]
            where = hostname if prefix == "/" else f"{hostname}{prefix}"
            raise ConflictError(
                f"server {server.name!r}: hostname {where!r} already belongs to server "
                f"{other.name!r}"
            )


def checked_replica(
    *,
    server: str,
    address: str,
    region: str,
    zone: str,
    weight: int,
    state: str,
    lease_seconds: float | None,
    revision: str = "",
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
        revision=validate.revision("revision", revision),
        registered_at=now,
    )


# -- servers files ----------------------------------------------------------------------

SERVER_FIELDS = frozenset({"name", "workspace", "hostnames", "protocol"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerDocument:
    """One checked entry of a servers file: the arguments of ``Registry.put_server``."""

    source: str  # names it in messages: "<file>: server '<name>'"
    name: str
    hostnames: Sequence[str]
    protocol: str
    workspace: str
    spec: Mapping[str, Any]


def read_servers_file(path: str | os.PathLike[str]) -> list[Any]:
    """The raw entries of a YAML servers file (a ``servers:`` list, or a bare list).

    Raises ServersFileError naming the file when it cannot be read or parsed, or is no list.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ServersFileError(f"{path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ServersFileError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ServersFileError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    except RecursionError:
        raise ServersFileError(
            f"{path}: nested too deeply (at most {MAX_FILE_DEPTH} levels)"
        ) from None
    _check_shape(path, document)
    items = document.get("servers") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise ServersFileError(f"{path}: expected a `servers:` list")
    return items


# A servers file's document: a server entry is 4 levels deep, its spec 4 more. Bounded so that
# nothing after the parser (checks, messages, the JSON written) recurses into a hostile shape,
# and so that YAML aliases cannot make a small file a huge document.
MAX_FILE_DEPTH = 32
MAX_FILE_VALUES = 1_000_000


def _check_shape(path: str | os.PathLike[str], document: Any) -> None:
    """Raise ServersFileError naming the file when ``document`` nests deeper than
    :data:`MAX_FILE_DEPTH` or holds more than :data:`MAX_FILE_VALUES` values (aliases counted
    each time they are used). Iterative: never recurses."""
    stack = [(document, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_FILE_VALUES:
            raise ServersFileError(f"{path}: more than {MAX_FILE_VALUES:,} values")
        if isinstance(value, dict | list):
            if depth > MAX_FILE_DEPTH:
                raise ServersFileError(
                    f"{path}: nested too deeply (at most {MAX_FILE_DEPTH} levels)"
                )
            children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def server_documents(items: Sequence[Any], *, source: str) -> list[ServerDocument]:
    """Check every entry of a servers file (``source`` names it in messages) and write
    nothing; raises ServersFileError naming the entry and, for a bad value, the field."""
    documents = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ServersFileError(f"{source}: servers[{index}]: expected a mapping with a name")
        label = f"{source}: server {item['name']!r}"
        unknown = sorted(set(item) - SERVER_FIELDS - KNOWN_FIELDS, key=str)
        if unknown:
            raise ServersFileError(f"{label}: unknown field {unknown[0]!r}")
        hostnames = item.get("hostnames", [])
        if isinstance(hostnames, str):
            hostnames = [hostnames]
        if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
            error = ValidationError("hostnames", hostnames, "expected a hostname or a list of them")
            raise ServersFileError(f"{label}: {error}")
        document = ServerDocument(
            source=label,
            name=item["name"],
            hostnames=hostnames,
            protocol=str(item.get("protocol", "http")),
            workspace=str(item.get("workspace", "default")),
            spec={k: v for k, v in item.items() if k in KNOWN_FIELDS},
        )
        try:
            checked_server(
                name=document.name,
                hostnames=document.hostnames,
                protocol=document.protocol,
                workspace=document.workspace,
                spec=document.spec,
            )
        except ValidationError as exc:
            raise ServersFileError(f"{label}: {exc}") from exc
        documents.append(document)
    return documents


def load_servers_file(path: str | os.PathLike[str]) -> list[ServerDocument]:
    """Read and check a servers file; see :func:`read_servers_file` and
    :func:`server_documents`."""
    return server_documents(read_servers_file(path), source=str(path))


def apply_servers(
    registry: Registry,
    documents: Iterable[ServerDocument],
    *,
    on_applied: Callable[[str, str], None] | None = None,
) -> list[tuple[str, str]]:
    """Create or update every server of ``documents`` (idempotent) in one transaction: all
    or nothing. Returns (name, outcome) pairs, outcome "created", "updated" or "unchanged",
    and tells ``on_applied`` each once they are written. A document the store refuses
    (a hostname another server owns, two entries of one name) raises ServersFileError naming
    it, and nothing is written."""
    documents = list(documents)
    servers = []
    for document in documents:
        try:
            servers.append(
                checked_server(
                    name=document.name,
                    hostnames=document.hostnames,
                    protocol=document.protocol,
                    workspace=document.workspace,
                    spec=document.spec,
                    updated_at=time.time(),
                )
            )
        except ValidationError as exc:
            raise ServersFileError(f"{document.source}: {exc}") from exc
    check_traffic_revisions(registry, documents)
    try:
        written = registry.put_servers(servers)
    except RegistryError as exc:
        source = documents[0].source.split(": ", 1)[0] if documents else "servers"
        raise ServersFileError(f"{source}: {exc}; nothing was written") from exc
    applied = [(server.name, outcome) for server, outcome in written]
    if on_applied is not None:
        for name, outcome in applied:
            on_applied(name, outcome)
    return applied


def check_traffic_revisions(registry: Registry, documents: Sequence[ServerDocument]) -> None:
    """Refuse (ServersFileError naming the document and ``spec.traffic[i].revision``) a traffic
    split that names a revision no replica of its server carries, unless the server is new (no
    replica can carry one yet). ``latest`` is always allowed. Replicas whose lease has run out
    carry nothing. Reads the registry only when some split names a revision."""
    named = [d for d in documents if any(t.revision != LATEST for t in _traffic(d))]
    if not named:
        return
    existing = {server.name for server in registry.list_servers()}
    named = [d for d in named if d.name in existing]
    if not named:
        return
    now = time.time()
    carried: dict[str, set[str]] = {}
    for replica in registry.list_replicas():
        # Another writer's row may hold any text, "latest" too: only a valid revision counts.
        if is_alive(replica, now=now) and _valid_revision(replica.revision):
            carried.setdefault(replica.server, set()).add(replica.revision)
    for document in named:
        have = carried.get(document.name, set())
        for i, target in enumerate(_traffic(document)):
            if target.revision == LATEST or target.revision in have:
                continue
            error = ValidationError(
                f"spec.traffic[{i}].revision",
                target.revision,
                f"no replica of server {document.name!r} carries it"
                f" (revisions: {_listed(have)}); register one first, or name latest",
            )
            raise ServersFileError(f"{document.source}: {error}; nothing was written")


def _traffic(document: ServerDocument) -> tuple[TrafficTarget, ...]:
    """The document's traffic split (already checked by :func:`checked_server`)."""
    return parse_spec(document.spec, protocol=document.protocol).traffic


def _valid_revision(value: str) -> bool:
    try:
        validate.revision("revision", value)
    except ValidationError:
        return False
    return True


def _listed(revisions: set[str], limit: int = 8) -> str:
    """A few of ``revisions`` (valid names, never another writer's text) for a message."""
    shown = sorted(r for r in revisions if r)
    if not shown:
        return "none"
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more

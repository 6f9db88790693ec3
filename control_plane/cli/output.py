"""How commands print: aligned tables, relative times and the stable ``--json`` output.

``--json`` output is public (see README): each value type has one function giving its JSON
object, keys in a fixed order, and ``echo_json`` prints any of them the same way. Admin API
messages (``admin_pb2``) arrive untyped, hence ``Any``.

Part of the CLI: imports ``registry.model`` and ``registry.revisions`` (for types) only.
"""

from __future__ import annotations

import json
from typing import Any

import click

from control_plane.registry.model import Replica, Server
from control_plane.registry.revisions import Revisions

JsonObject = dict[str, Any]


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


# -- registry rows ---------------------------------------------------------------------------


def server_json(server: Server) -> JsonObject:
    return {
        "name": server.name,
        "workspace": server.workspace,
        "hostnames": [h if isinstance(h, str) else str(h) for h in server.hostnames],
        "protocol": server.protocol,
    }


def replica_json(replica: Replica) -> JsonObject:
    return {
        "id": replica.id,
        "server": replica.server,
        "address": replica.address,
        "region": replica.region,
        "zone": replica.zone,
        "weight": replica.weight,
        "state": replica.state,
        "revision": replica.revision,
        "registered_at": replica.registered_at or None,  # None: written before issue 26
    }


def revisions_json(revisions: Revisions) -> list[JsonObject]:
    """A server's revisions (``servers show --json``), newest first."""
    # Requests/s and errors/s per revision come from the control plane's load reports (the
    # admin API's GetLoad, ``ServerLoad.revisions``), not from the registry: they belong here,
    # as "requests_per_second" and "errors_per_second", once the load is read by revision.
    return [
        {
            "revision": r.name,
            "ready_replicas": r.ready,
            "replicas": r.replicas,
            "registered_at": r.registered_at or None,
            "latest": r.latest,
        }
        for r in revisions.revisions
    ]


# -- admin API messages ----------------------------------------------------------------------


def type_status_json(status: Any) -> JsonObject:
    """A proxy's state for one resource type (keyed by the type in ``proxy_json``)."""
    return {
        "sent_version": status.sent_version,
        "acked_version": status.acked_version,
        "state": status.state,
        "last_error": status.last_error,
        "pushes": status.pushes,
        "resources_sent": status.resources_sent,
        "acks": status.acks,
        "nacks": status.nacks,
        "missing": list(status.missing_names),
    }


def proxy_json(proxy: Any) -> JsonObject:
    return {
        "node_id": proxy.node_id,
        "group": proxy.group,
        "address": proxy.address,
        "connected_since": proxy.connected_since,
        "protocol": proxy.protocol,
        "service": proxy.service,
        "types": {t.type: type_status_json(t) for t in proxy.types},
        "client": proxy.client or "envoy",
        **({"worker": proxy.worker} if proxy.worker else {}),
    }


def by_node(proxies: Any) -> list[tuple[Any, tuple[Any, ...]]]:
    """ListProxies' streams grouped by node id, in the order each node first appears: each
    node's main stream (its ADS stream, else its earliest), and its other streams (an Envoy's
    on-demand CDS stream for a cold-start server is a delta CDS stream of its own)."""
    nodes: dict[str, list[Any]] = {}
    for proxy in proxies:
        nodes.setdefault(proxy.node_id, []).append(proxy)
    grouped = []
    for streams in nodes.values():
        ads = [s for s in streams if s.service == "ads"]
        main = ads[0] if ads else min(streams, key=lambda s: s.connected_since)
        grouped.append((main, tuple(s for s in streams if s is not main)))
    return grouped


def is_on_demand(stream: Any, main: Any) -> bool:
    """``stream`` is the on-demand CDS stream of the node whose ADS stream is ``main``."""
    return stream is not main and main.service == "ads" and stream.service == "cds"


def stream_json(stream: Any, main: Any) -> JsonObject:
    """One of a node's streams (``streams`` in ``node_json``)."""
    return {
        "service": stream.service,
        "on_demand": is_on_demand(stream, main),
        "protocol": stream.protocol,
        "address": stream.address,
        "connected_since": stream.connected_since,
        "types": {t.type: type_status_json(t) for t in stream.types},
        **({"worker": stream.worker} if stream.worker else {}),
    }


def node_json(main: Any, others: tuple[Any, ...]) -> JsonObject:
    """One ``routeplane proxies --json`` object: a node's main stream (``proxy_json``, as before
    issue 28) and every stream of the node, the main one first."""
    return {
        **proxy_json(main),
        "streams": [stream_json(s, main) for s in (main, *others)],
    }


def load_order(rows: list[JsonObject]) -> list[JsonObject]:
    """``routeplane load`` rows grouped by server: servers in name order, each server's ``*``
    row first, then its regions in name order (the admin API lists them as it keeps them)."""
    return sorted(rows, key=lambda r: (r["server"], r["region"] != "*", r["region"]))


def load_json(row: Any) -> JsonObject:
    """One ``routeplane load --json`` object (a ``ServerLoad`` message)."""
    return {
        "server": row.server,
        "region": row.region,
        "ready_replicas": row.ready_replicas,
        "in_flight": round(row.in_flight, 3),
        "requests_per_second": round(row.requests_per_second, 3),
        "errors_per_second": round(row.errors_per_second, 3),
        "desired_replicas": None if row.desired_replicas < 0 else row.desired_replicas,
        "cold_starts": row.cold_starts,
        "cold_start_mode": row.cold_start_mode,
        "scale_down_candidates": list(row.scale_down_candidates),
        "replicas": [
            {
                "replica": replica.replica,
                "in_flight": round(replica.in_flight, 3),
                "requests_per_second": round(replica.requests_per_second, 3),
                "errors_per_second": round(replica.errors_per_second, 3),
                "revision": replica.revision,
            }
            for replica in row.replicas
        ],
        "revisions": [
            {
                "revision": revision.revision,
                "ready_replicas": revision.ready_replicas,
                "in_flight": round(revision.in_flight, 3),
                "requests_per_second": round(revision.requests_per_second, 3),
                "errors_per_second": round(revision.errors_per_second, 3),
            }
            for revision in row.revisions
        ],
    }


def problem_json(problem: Any) -> JsonObject:
    return {
        "kind": problem.kind,
        "name": problem.name,
        "field": problem.field,
        "value": problem.value,
        "message": problem.message,
    }


def resource_json(resource: Any) -> JsonObject:
    """A snapshot's resource, summarised (``snapshot show --type T --json`` prints the
    resources themselves)."""
    return {
        "type": resource.type,
        "name": resource.name,
        "version": resource.version,
        "bytes": resource.bytes,
        "summary": resource.summary,
    }


def snapshot_json(snapshot: Any) -> JsonObject:
    return {
        "node_group": snapshot.node_group,
        "version": snapshot.version,
        "type_versions": dict(snapshot.type_versions),
        "revision": snapshot.revision,
        "published_at": snapshot.published_at,
        "cause": snapshot.cause,
        "resources": [resource_json(r) for r in snapshot.resources],
    }


def change_json(change: Any) -> JsonObject:
    return {
        "change": change.change,
        "type": change.type,
        "name": change.name,
        "from_version": change.from_version,
        "to_version": change.to_version,
    }


def diff_json(diff: Any) -> JsonObject:
    return {
        "from": diff.from_version,
        "to": diff.to_version,
        "changes": [change_json(c) for c in diff.changes],
    }


def history_json(entry: Any) -> JsonObject:
    return {
        "node_group": entry.node_group,
        "version": entry.version,
        "published_at": entry.published_at,
        "revision": entry.revision,
        "changed_resources": entry.changed_resources,
        "cause": entry.cause,
    }


# -- text ------------------------------------------------------------------------------------


def ago(then: float) -> str:
    import time

    seconds = max(0, int(time.time() - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


CELL_LIMIT = 64


def printable(value: object, limit: int = CELL_LIMIT) -> str:
    """``value`` safe for a terminal line: control characters (newlines, escape sequences)
    shown escaped, and at most ``limit`` characters (the rest elided; ``--json`` has it all)."""
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def table(headers: list[str], rows: list[list[str]]) -> None:
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

"""How commands print: aligned tables, relative times and the stable ``--json`` output.

``--json`` output is public (see README): each value type has one function giving its JSON
object, keys in a fixed order, and ``echo_json`` prints any of them the same way. Admin API
messages (``admin_pb2``) arrive untyped, hence ``Any``.

Part of the CLI: imports ``registry.model`` and ``registry.revisions`` (for types) and
``admin.views`` (the admin API messages' JSON, shared with the status page) only.
"""

from __future__ import annotations

import json
from typing import Any

import click

# Re-exported: the CLI's names for the admin API's JSON (now shared with the status page).
from control_plane.admin.views import (
    by_node as by_node,
)
from control_plane.admin.views import (
    is_on_demand as is_on_demand,
)
from control_plane.admin.views import (
    load_json as load_json,
)
from control_plane.admin.views import (
    load_order as load_order,
)
from control_plane.admin.views import (
    node_json as node_json,
)
from control_plane.admin.views import (
    problem_json as problem_json,
)
from control_plane.admin.views import (
    proxy_json as proxy_json,
)
from control_plane.admin.views import (
    stream_json as stream_json,
)
from control_plane.admin.views import (
    type_status_json as type_status_json,
)
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

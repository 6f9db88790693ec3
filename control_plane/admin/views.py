"""The stable JSON of the admin API's answers: what ``routeplane load --json``, ``proxies
--json`` and ``problems --json`` print, and what the status page (``admin/page/``) serves, so
the two always agree. Keys in a fixed order; admin API messages (``admin_pb2``) arrive
untyped, hence ``Any``.

Pure: imports nothing from the control plane; never does I/O or logs.
"""

from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]


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


def with_utilization(row: Any, shown: JsonObject) -> JsonObject:
    """``shown`` (a ``load_json`` object of ``row``) with the row's and each replica's
    utilization (issue 27): a fraction, rounded to 4 places, or null when none reported."""
    shown["utilization"] = round(row.utilization, 4) if row.HasField("utilization") else None
    for entry, replica in zip(shown["replicas"], row.replicas, strict=True):
        entry["utilization"] = (
            round(replica.utilization, 4) if replica.HasField("utilization") else None
        )
    return shown


def load_rows(response: Any) -> list[JsonObject]:
    """``routeplane load --json``: a ``LoadResponse``'s rows, grouped by server
    (``partial``: the fleet's load could not be read, these rows are this process's own)."""
    return load_order(
        [
            with_utilization(row, {**load_json(row), "partial": response.partial})
            for row in response.servers
        ]
    )

"""``routeplane proxies``, ``routeplane problems`` and ``routeplane snapshot``: what a running
control plane knows, through its admin API.

Part of the CLI: imports ``admin.client`` only; nothing from ``control_plane.dev``.
"""

from __future__ import annotations

import json

import click

from control_plane.cli.common import admin_call, admin_option, fail
from control_plane.cli.output import ago, table


@click.command()
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see README).")
def proxies(admin: str, as_json: bool) -> None:
    """Every connected proxy and what it has, per type."""
    from control_plane.admin.client import admin_pb2

    response = admin_call(admin, "ListProxies", admin_pb2.ListProxiesRequest())
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "node_id": p.node_id,
                        "group": p.group,
                        "address": p.address,
                        "connected_since": p.connected_since,
                        "protocol": p.protocol,
                        "service": p.service,
                        "types": {
                            t.type: {
                                "sent_version": t.sent_version,
                                "acked_version": t.acked_version,
                                "state": t.state,
                                "last_error": t.last_error,
                                "pushes": t.pushes,
                                "acks": t.acks,
                                "nacks": t.nacks,
                            }
                            for t in p.types
                        },
                    }
                    for p in response.proxies
                ],
                indent=2,
            )
        )
        return
    rows = []
    errors: list[str] = []
    for p in response.proxies:
        states = {t.type: t.state for t in p.types}
        rows.append(
            [
                p.node_id,
                p.group,
                p.address,
                p.protocol,
                ago(p.connected_since),
                *(states.get(t, "-") for t in ("cds", "eds", "lds", "rds")),
            ]
        )
        errors.extend(f"{p.node_id} {t.type}: {t.last_error}" for t in p.types if t.last_error)
    table(["NODE", "GROUP", "ADDRESS", "XDS", "CONNECTED", "CDS", "EDS", "LDS", "RDS"], rows)
    for error in errors:
        click.echo(f"last NACK {error}")


@click.command()
@admin_option
@click.option("--json", "as_json", is_flag=True)
def problems(admin: str, as_json: bool) -> None:
    """Registry rows left out of routing, and why."""
    from control_plane.admin.client import admin_pb2

    response = admin_call(admin, "ListProblems", admin_pb2.ListProblemsRequest())
    items = [
        {"kind": p.kind, "name": p.name, "field": p.field, "value": p.value, "message": p.message}
        for p in response.problems
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no problems: every registry row is routed")
        return
    table(
        ["KIND", "NAME", "FIELD", "VALUE", "PROBLEM"],
        [[i["kind"], i["name"], i["field"], i["value"], i["message"]] for i in items],
    )


@click.group()
def snapshot() -> None:
    """What proxies get: current snapshots, their history and differences."""


@snapshot.command("show")
@admin_option
@click.option("--node-group", default="", help="Node group, e.g. edge/us-west@127.0.0.1:10000.")
@click.option("--node", "node_id", default="", help="A connected proxy's node id.")
@click.option("--type", "type_", type=click.Choice(["cds", "eds", "rds", "lds"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="With --type: the resources as JSON.")
def snapshot_show(
    admin: str, node_group: str, node_id: str, type_: str | None, as_json: bool
) -> None:
    """What a node group (or a proxy's group) would get right now."""
    from control_plane.admin.client import admin_pb2

    if node_group and node_id:
        fail("give --node-group or --node, not both")
    snap = admin_call(
        admin,
        "GetSnapshot",
        admin_pb2.GetSnapshotRequest(
            node_group=node_group,
            node_id=node_id,
            type=type_ or "",
            include_json=bool(as_json and type_),
        ),
    )
    if as_json:
        if type_:
            click.echo(json.dumps([json.loads(r.json) for r in snap.resources], indent=2))
        else:
            click.echo(
                json.dumps(
                    {
                        "node_group": snap.node_group,
                        "version": snap.version,
                        "type_versions": dict(snap.type_versions),
                        "revision": snap.revision,
                        "published_at": snap.published_at,
                        "cause": snap.cause,
                        "resources": [
                            {
                                "type": r.type,
                                "name": r.name,
                                "version": r.version,
                                "bytes": r.bytes,
                                "summary": r.summary,
                            }
                            for r in snap.resources
                        ],
                    },
                    indent=2,
                )
            )
        return
    click.echo(
        f"group {snap.node_group}  version {snap.version}  revision {snap.revision}  "
        f"published {ago(snap.published_at)}  ({snap.cause})"
    )
    table(
        ["TYPE", "NAME", "VERSION", "BYTES", "SUMMARY"],
        [[r.type, r.name, r.version, str(r.bytes), r.summary] for r in snap.resources],
    )


@snapshot.command("diff")
@admin_option
@click.option("--node-group", required=True)
@click.option("--from", "from_version", required=True, help="A version (or its prefix).")
@click.option("--to", "to_version", default="", help="Default: the current version.")
@click.option("--json", "as_json", is_flag=True)
def snapshot_diff(
    admin: str, node_group: str, from_version: str, to_version: str, as_json: bool
) -> None:
    """What changed between two versions of a group's snapshot."""
    from control_plane.admin.client import admin_pb2

    diff = admin_call(
        admin,
        "DiffSnapshots",
        admin_pb2.DiffSnapshotsRequest(
            node_group=node_group, from_version=from_version, to_version=to_version
        ),
    )
    changes = [
        {
            "change": c.change,
            "type": c.type,
            "name": c.name,
            "from_version": c.from_version,
            "to_version": c.to_version,
        }
        for c in diff.changes
    ]
    if as_json:
        click.echo(
            json.dumps(
                {"from": diff.from_version, "to": diff.to_version, "changes": changes}, indent=2
            )
        )
        return
    click.echo(
        f"{diff.node_group}: {diff.from_version} -> {diff.to_version}, "
        f"{len(changes)} resources changed"
    )
    table(
        ["CHANGE", "TYPE", "NAME", "FROM", "TO"],
        [[c["change"], c["type"], c["name"], c["from_version"], c["to_version"]] for c in changes],
    )


@snapshot.command("history")
@admin_option
@click.option("--node-group", default="")
@click.option("--json", "as_json", is_flag=True)
def snapshot_history(admin: str, node_group: str, as_json: bool) -> None:
    """Recent snapshot versions: when, and which registry change caused them."""
    from control_plane.admin.client import admin_pb2

    response = admin_call(
        admin, "SnapshotHistory", admin_pb2.SnapshotHistoryRequest(node_group=node_group)
    )
    entries = [
        {
            "node_group": e.node_group,
            "version": e.version,
            "published_at": e.published_at,
            "revision": e.revision,
            "changed_resources": e.changed_resources,
            "cause": e.cause,
        }
        for e in response.entries
    ]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    table(
        ["PUBLISHED", "GROUP", "VERSION", "REVISION", "CHANGED", "CAUSE"],
        [
            [
                ago(e["published_at"]),
                e["node_group"],
                e["version"],
                str(e["revision"]),
                str(e["changed_resources"]),
                e["cause"],
            ]
            for e in entries
        ],
    )

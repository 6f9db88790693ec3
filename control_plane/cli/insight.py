"""``routeplane proxies``, ``routeplane problems`` and ``routeplane snapshot``: what a running
control plane knows, through its admin API.

Part of the CLI: imports ``admin.client`` only; nothing from ``control_plane.dev``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from control_plane.admin.views import load_rows
from control_plane.cli.common import admin_call, admin_option, fail
from control_plane.cli.output import (
    ago,
    by_node,
    diff_json,
    echo_json,
    history_json,
    is_on_demand,
    node_json,
    printable,
    problem_json,
    snapshot_json,
    table,
)


@click.command()
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see README).")
def proxies(admin: str, as_json: bool) -> None:
    """Every connected proxy and what it has, per type."""
    from control_plane.admin.client import admin_pb2

    response = admin_call(admin, "ListProxies", admin_pb2.ListProxiesRequest())
    for silent in response.unanswered:  # serve --workers: what is missing, and why
        click.echo(f"not listed: the proxies of {printable(silent, 300)}", err=True)
    nodes = by_node(response.proxies)  # a node's on-demand CDS stream is part of its row
    if as_json:
        echo_json([node_json(main, others) for main, others in nodes])
        return
    rows = []
    errors: list[str] = []
    missing: list[str] = []
    extra: list[str] = []
    workers = any(p.worker for p in response.proxies)  # serve --workers
    for p, others in nodes:
        states = {t.type: t.state for t in p.types}
        extra.extend(
            f"{printable(p.node_id)}: "
            + ("on-demand cds stream" if is_on_demand(o, p) else f"{printable(o.service)} stream")
            + f" ({o.protocol}, {ago(o.connected_since)}"
            + (f", worker {o.worker}" if o.worker else "")
            + "): "
            + ", ".join(f"{t.type} {t.state}" for t in o.types)
            for o in others
        )
        rows.append(
            [
                p.node_id,
                p.group,
                p.address,
                p.client or "envoy",
                p.protocol,
                ago(p.connected_since),
                *(states.get(t, "-") for t in ("cds", "eds", "lds", "rds")),
                *([p.worker] if workers else []),
            ]
        )
        errors.extend(
            f"{printable(p.node_id)} {t.type}: {printable(t.last_error, 200)}"
            for stream in (p, *others)
            for t in stream.types
            if t.last_error
        )
        missing.extend(
            f"{printable(p.node_id)} {t.type}: {', '.join(printable(n) for n in t.missing_names)}"
            + (
                f" and {t.missing - len(t.missing_names)} more"
                if t.missing > len(t.missing_names)
                else ""
            )
            for stream in (p, *others)
            for t in stream.types
            if t.missing
        )
    table(
        [
            *("NODE", "GROUP", "ADDRESS", "CLIENT", "XDS", "CONNECTED", "CDS", "EDS", "LDS", "RDS"),
            *(["WORKER"] if workers else []),
        ],
        rows,
    )
    for line in extra:
        click.echo(f"also {line}")
    for error in errors:
        click.echo(f"last NACK {error}")
    for line in missing:
        click.echo(f"does not exist {line}")


@click.command()
@admin_option
@click.option("--server", default="", help="Only this server's rows.")
@click.option("--watch", is_flag=True, help="Print again after every update, until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="A list of objects (one line per update).")
def load(admin: str, server: str, watch: bool, as_json: bool) -> None:
    """Load per server and region from every proxy's reports, and desired replicas."""
    from control_plane.admin.client import AdminError, admin_pb2, stream

    request = admin_pb2.GetLoadRequest(server=server)
    if not watch:
        _print_load(admin_call(admin, "GetLoad", request), as_json=as_json, compact=False)
        return
    try:
        for response in stream(admin, "WatchLoad", request):
            _print_load(response, as_json=as_json, compact=True)
    except AdminError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return


def _print_load(response: Any, *, as_json: bool, compact: bool) -> None:
    # ``partial``: the fleet's load could not be read, these rows are this control plane's own.
    rows = load_rows(response)
    if as_json:
        click.echo(json.dumps(rows) if compact else json.dumps(rows, indent=2))
        return
    if compact:
        click.echo(
            f"-- {time.strftime('%H:%M:%S')}, {response.reporting_proxies} proxies reporting"
        )
    if response.partial:
        click.echo("partial: the fleet's load cannot be read; this control plane's proxies only")
    if not rows:
        click.echo("no servers")
        return
    table(
        [
            "SERVER",
            "REGION",
            "READY",
            "IN FLIGHT",
            "REQ/S",
            "ERR/S",
            "UTIL",
            "DESIRED",
            "COLD STARTS",
        ],
        [
            [
                r["server"],
                r["region"],
                str(r["ready_replicas"]),
                f"{r['in_flight']:g}",
                f"{r['requests_per_second']:.1f}",
                f"{r['errors_per_second']:.1f}",
                "-" if r["utilization"] is None else f"{r['utilization']:.2f}",
                "-" if r["desired_replicas"] is None else str(r["desired_replicas"]),
                f"{r['cold_starts']} ({r['cold_start_mode']})" if r["region"] == "*" else "",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if r["scale_down_candidates"]:
            click.echo(
                f"scale down {r['server']} ({r['region']}) first: "
                + _first_few(r["scale_down_candidates"])
            )
    for r in rows:
        if any(v["revision"] for v in r["revisions"]):
            _print_revisions(r["server"], r["revisions"])


def _print_revisions(server: str, revisions: list[dict[str, Any]]) -> None:
    """A server's load by revision ("(none)": its replicas that carry no revision)."""
    click.echo("")
    table(
        ["SERVER", "REVISION", "READY", "IN FLIGHT", "REQ/S", "ERR/S"],
        [
            [
                server,
                v["revision"] or "(none)",
                str(v["ready_replicas"]),
                f"{v['in_flight']:g}",
                f"{v['requests_per_second']:.1f}",
                f"{v['errors_per_second']:.1f}",
            ]
            for v in revisions
        ],
    )


def _first_few(names: list[str], shown: int = 5) -> str:
    """``names`` joined, past ``shown`` cut to the first ones and how many more."""
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@click.command()
@admin_option
@click.option("--json", "as_json", is_flag=True)
def problems(admin: str, as_json: bool) -> None:
    """Registry rows left out of routing, and why."""
    from control_plane.admin.client import admin_pb2

    response = admin_call(admin, "ListProblems", admin_pb2.ListProblemsRequest())
    if as_json:
        echo_json([problem_json(p) for p in response.problems])
        return
    if not response.problems:
        click.echo("no problems: every registry row is routed")
        return
    table(
        ["KIND", "NAME", "FIELD", "VALUE", "PROBLEM"],
        [[p.kind, p.name, p.field, p.value, p.message] for p in response.problems],
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
            echo_json([json.loads(r.json) for r in snap.resources])
        else:
            echo_json(snapshot_json(snap))
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
    if as_json:
        echo_json(diff_json(diff))
        return
    click.echo(
        f"{diff.node_group}: {diff.from_version} -> {diff.to_version}, "
        f"{len(diff.changes)} resources changed"
    )
    table(
        ["CHANGE", "TYPE", "NAME", "FROM", "TO"],
        [[c.change, c.type, c.name, c.from_version, c.to_version] for c in diff.changes],
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
    if as_json:
        echo_json([history_json(e) for e in response.entries])
        return
    table(
        ["PUBLISHED", "GROUP", "VERSION", "REVISION", "CHANGED", "CAUSE"],
        [
            [
                ago(e.published_at),
                e.node_group,
                e.version,
                str(e.revision),
                str(e.changed_resources),
                e.cause,
            ]
            for e in response.entries
        ],
    )

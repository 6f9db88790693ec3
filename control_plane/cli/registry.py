"""``routeplane servers``, ``routeplane replicas`` and ``routeplane registry``: registry writes
and reads, straight against the store (no control plane needed).

Part of the CLI: imports ``registry`` only; nothing from ``control_plane.dev``.
"""

from __future__ import annotations

import click

from control_plane.cli.common import open_reachable, registry_option, user_errors
from control_plane.cli.output import (
    ago,
    echo_json,
    printable,
    replica_json,
    revisions_json,
    server_json,
    table,
)
from control_plane.registry import open_registry


@click.group()
def servers() -> None:
    """Create, list and delete servers."""


@servers.command("create")
@click.argument("name")
@click.option("--host", "hosts", multiple=True, required=True, help="Hostname; repeat for several.")
@click.option("--protocol", default="http", show_default=True, help="http, http2 or grpc.")
@click.option("--workspace", default="default", show_default=True)
@registry_option
@user_errors
def servers_create(
    name: str, hosts: tuple[str, ...], protocol: str, workspace: str, registry: str
) -> None:
    """Create server NAME reachable at --host."""
    server = open_reachable(registry).create_server(
        name=name, hostnames=list(hosts), protocol=protocol, workspace=workspace
    )
    click.echo(f"created server {server.name} ({server.protocol}; {', '.join(server.hostnames)})")


@servers.command("apply")
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML file with a `servers:` list (see README).",
)
@registry_option
@user_errors
def servers_apply(path: str, registry: str) -> None:
    """Create or update every server in a YAML file (idempotent)."""
    from control_plane.registry.servers import apply_servers, read_servers_file, server_documents

    items = read_servers_file(path)
    reg = open_reachable(registry)
    # Every server is checked before any is written.
    documents = server_documents(items, source=path)
    apply_servers(reg, documents, on_applied=lambda name, outcome: click.echo(f"{name}: {outcome}"))


@servers.command("list")
@registry_option
@click.option("--json", "as_json", is_flag=True)
@user_errors
def servers_list(registry: str, as_json: bool) -> None:
    """List servers."""
    rows = open_reachable(registry).list_servers()
    if as_json:
        echo_json([server_json(s) for s in rows])
        return
    click.echo(f"{'NAME':20} {'WORKSPACE':12} {'PROTOCOL':8} HOSTNAMES")
    for s in rows:
        hostnames = ",".join(str(h) for h in s.hostnames)
        click.echo(
            f"{printable(s.name):20} {printable(s.workspace):12} {printable(s.protocol):8} "
            f"{printable(hostnames, 200)}"
        )


@servers.command("show")
@click.argument("name")
@registry_option
@click.option("--json", "as_json", is_flag=True)
@user_errors
def servers_show(name: str, registry: str, as_json: bool) -> None:
    """Show server NAME: its traffic split and its revisions (ready / all replicas, newest
    first; latest marked)."""
    import time

    from control_plane.registry.errors import NotFoundError, ValidationError
    from control_plane.registry.revisions import is_alive, of_replicas
    from control_plane.registry.spec import LATEST, decode, parse_spec

    reg = open_reachable(registry)
    found = [s for s in reg.list_servers() if s.name == name]
    if not found:
        raise NotFoundError(f"unknown server {name!r}")
    server = found[0]
    now = time.time()
    revisions = of_replicas((r for r in reg.list_replicas(name) if is_alive(r, now=now)), now=now)
    traffic: list[dict[str, object]] = []
    spec_error = ""
    try:
        split = parse_spec(decode(server.spec), protocol=server.protocol).traffic
    except ValidationError as exc:
        split, spec_error = (), str(exc)
    for target in split or ():
        traffic.append({"revision": target.revision, "percent": target.percent, "tag": target.tag})
    if not split and not spec_error:
        traffic.append({"revision": LATEST, "percent": 100, "tag": ""})
    latest = revisions.latest
    if as_json:
        echo_json(
            {
                **server_json(server),
                "traffic": traffic,
                "spec_error": spec_error or None,
                "latest": None if latest is None else latest.name,
                "revisions": revisions_json(revisions),
                "invalid_revision_replicas": [r.id for r in revisions.invalid],
            }
        )
        return
    hostnames = ",".join(str(h) for h in server.hostnames)
    click.echo(
        f"server {printable(server.name)} (workspace {printable(server.workspace)}, "
        f"{printable(server.protocol)}, {printable(hostnames, 200)})"
    )
    if spec_error:
        click.echo(f"spec: {printable(spec_error, 200)} (see `routeplane problems`)")
    click.echo("traffic:" if split else "traffic (the default):")
    known = revisions.names()
    for entry in traffic:
        revision = str(entry["revision"])
        tag = f"  tag {entry['tag']}" if entry["tag"] else ""
        if revision == LATEST:
            where = (
                "  = (no revision has a READY replica)"
                if latest is None
                else (f"  = {latest.name or '(none)'}")
            )
        else:
            where = "" if revision in known else "  (no replica carries it)"
        click.echo(f"  {revision:12} {entry['percent']:>3}%{tag}{where}")
    if not revisions.revisions and not revisions.invalid:
        click.echo("revisions: none (no replica)")
        return
    click.echo("revisions (newest first, by their first replica's registration):")
    table(
        ["REVISION", "READY", "REGISTERED", ""],
        [
            [
                r.name or "(none)",
                f"{r.ready}/{r.replicas}",
                ago(r.registered_at) if r.registered_at else "-",
                "latest" if r.latest else "",
            ]
            for r in revisions.revisions
        ],
    )
    if revisions.invalid:
        ids = ", ".join(printable(r.id, 20) for r in revisions.invalid[:5])
        more = f" and {len(revisions.invalid) - 5} more" if len(revisions.invalid) > 5 else ""
        click.echo(
            f"{len(revisions.invalid)} replica(s) with an invalid revision, left out: "
            f"{ids}{more} (see `routeplane problems`)"
        )


@servers.command("rollout")
@click.argument("name")
@click.option("--to", "target", default=None, help="The revision to move the traffic to.")
@click.option(
    "--steps", default="5,25,50,100", show_default=True, help="Percents of the steps, to 100."
)
@click.option("--interval", default="30s", show_default=True, help="How long each step lasts.")
@click.option(
    "--max-error-rate",
    default="1%",
    show_default=True,
    help="How far the target's error rate may exceed the stable revisions'.",
)
@click.option(
    "--min-requests",
    default=100,
    show_default=True,
    type=int,
    help="Requests on the target a step needs before it is judged.",
)
@click.option("--status", "status", is_flag=True, help="Show where the rollout stands.")
@click.option("--json", "as_json", is_flag=True, help="With --status: JSON.")
@registry_option
@user_errors
def servers_rollout(
    name: str,
    target: str | None,
    steps: str,
    interval: str,
    max_error_rate: str,
    min_requests: int,
    status: bool,
    as_json: bool,
    registry: str,
) -> None:
    """Start a rollout of server NAME to revision --to (a serve drives it), or show one
    (--status)."""
    import time

    from control_plane.registry.errors import ValidationError
    from control_plane.rollout import commands

    reg = open_reachable(registry)
    now = time.time()
    if status:
        if target is not None:
            raise ValidationError("to", target, "--status takes no --to")
        _show_rollout(commands.as_json(commands.read(reg, name), now=now), as_json=as_json)
        return
    if target is None:
        raise ValidationError("to", None, "required: the revision to roll out (or --status)")
    if as_json:
        raise ValidationError("json", True, "--json goes with --status")
    from control_plane.registry.rows import excerpt

    parts = [p.strip() for p in steps.split(",")] if len(steps) <= 200 else []
    if not parts or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        raise ValidationError(
            "steps", excerpt(steps), "expected whole percents such as 5,25,50,100"
        )
    rollout = commands.start(
        reg,
        server=name,
        target=target,
        steps=[int(p) for p in parts],
        interval=interval,
        max_error_rate=max_error_rate,
        min_requests=min_requests,
        now=now,
    )
    click.echo(
        f"rollout of {name} to {rollout.target} started: steps"
        f" {','.join(str(s) for s in rollout.steps)}, {rollout.interval:g}s each; a serve"
        f" drives it (routeplane servers rollout {name} --status)"
    )


def _show_rollout(record: dict[str, object], *, as_json: bool) -> None:
    if as_json:
        echo_json(record)
        return

    def split(entries: object) -> str:
        return ", ".join(
            f"{e['revision']} {e['percent']}%" + (f" (tag {e['tag']})" if e["tag"] else "")
            for e in entries  # type: ignore[attr-defined]
        )

    steps = record["steps"]
    assert isinstance(steps, list)
    click.echo(
        f"rollout of {printable(str(record['server']))} to {record['target']}: {record['state']},"
        f" step {record['step']} of {len(steps)} ({record['percent']}%),"
        f" {float(record['seconds_in_step']):.1f}s in step of"  # type: ignore[arg-type]
        f" {float(record['interval_seconds']):g}s"  # type: ignore[arg-type]
    )
    click.echo(f"  before:  {split(record['base'])}")
    click.echo(f"  written: {split(record['written']) or '(nothing yet)'}")
    click.echo(
        f"  this step: {record['target']} {record['target_requests']} requests,"
        f" {record['target_errors']} errors"
        f" ({float(record['target_error_rate']) * 100:.2f}%);"  # type: ignore[arg-type]
        f" stable {record['stable_requests']} requests, {record['stable_errors']} errors"
        f" ({float(record['stable_error_rate']) * 100:.2f}%)"  # type: ignore[arg-type]
    )
    click.echo(
        f"  judged: more than {float(record['max_error_rate']) * 100:g}% over the stable rate"  # type: ignore[arg-type]
        f" fails, with at least {record['min_requests']} requests on the target"
    )
    if record["holder"]:
        click.echo(f"  driven by: {printable(str(record['holder']), 200)}")
    if record["verdict"]:
        click.echo(f"  verdict: {printable(str(record['verdict']), 1000)}")


@servers.command("rollback")
@click.argument("name")
@registry_option
@user_errors
def servers_rollback(name: str, registry: str) -> None:
    """Write back the split before NAME's rollout, at once, and stop the rollout if it runs."""
    import time

    from control_plane.rollout import commands

    rollout, changed = commands.rollback(open_reachable(registry), name, now=time.time())
    split = ", ".join(f"{t.revision} {t.percent}%" for t in rollout.base)
    if changed:
        click.echo(f"rolled back {name}: traffic {split}; rollout {rollout.state}")
    else:
        click.echo(f"{name} already has the split before its rollout: {split}")


@servers.command("delete")
@click.argument("name")
@registry_option
@user_errors
def servers_delete(name: str, registry: str) -> None:
    """Delete server NAME and its replicas."""
    open_reachable(registry).delete_server(name)
    click.echo(f"deleted server {name}")


@click.group()
def replicas() -> None:
    """Register, drain, deregister and list replicas."""


@replicas.command("register")
@click.argument("server")
@click.option("--address", required=True, help="HOST:PORT the replica listens on.")
@click.option("--region", required=True)
@click.option("--zone", default="")
@click.option("--weight", default=100, show_default=True, type=int)
@click.option(
    "--state", default="READY", show_default=True, help="STARTING (no traffic yet) or READY."
)
@click.option(
    "--lease-seconds",
    type=float,
    default=None,
    help="Expire the replica unless renewed (replicas heartbeat) within this time.",
)
@click.option(
    "--revision",
    default="",
    help="The version of SERVER it runs, e.g. v2 ([a-z0-9-], at most 63; not 'latest').",
)
@registry_option
@user_errors
def replicas_register(
    server: str,
    address: str,
    region: str,
    zone: str,
    weight: int,
    state: str,
    lease_seconds: float | None,
    revision: str,
    registry: str,
) -> None:
    """Register a replica of SERVER; prints its id."""
    replica = open_reachable(registry).register_replica(
        server=server,
        address=address,
        region=region,
        zone=zone,
        weight=weight,
        state=state,
        lease_seconds=lease_seconds,
        revision=revision,
    )
    click.echo(replica.id)


@replicas.command("heartbeat")
@click.argument("replica_id")
@click.option("--lease-seconds", type=float, required=True, help="New lease, from now.")
@registry_option
@user_errors
def replicas_heartbeat(replica_id: str, lease_seconds: float, registry: str) -> None:
    """Renew REPLICA_ID's lease."""
    replica = open_reachable(registry).renew_lease(replica_id, lease_seconds=lease_seconds)
    click.echo(f"{replica.id} lease renewed for {lease_seconds:g}s")


@click.group("registry")
def registry_group() -> None:
    """Registry schema."""


@registry_group.command("init")
@registry_option
@user_errors
def registry_init(registry: str) -> None:
    """Create or migrate the registry schema (idempotent); on the Spanner emulator, also the
    instance and database. Prints what it changed."""
    reg = open_registry(registry)
    changes = [*reg.applied_on_open, *reg.init()]
    for change in changes:
        click.echo(change)
    if not changes:
        click.echo("registry schema is up to date")


def _state_command(name: str, state: str, help_text: str) -> None:
    @replicas.command(name, help=help_text)
    @click.argument("replica_id")
    @registry_option
    @user_errors
    def command(replica_id: str, registry: str) -> None:
        replica = open_reachable(registry).set_replica_state(replica_id, state)
        click.echo(f"{replica.id} {replica.state}")


_state_command("drain", "DRAINING", "Stop new requests to REPLICA_ID; open streams finish.")
_state_command("ready", "READY", "Send traffic to REPLICA_ID.")


@replicas.command("deregister")
@click.argument("replica_id")
@registry_option
@user_errors
def replicas_deregister(replica_id: str, registry: str) -> None:
    """Remove REPLICA_ID from the registry."""
    open_reachable(registry).deregister_replica(replica_id)
    click.echo(f"{replica_id} deregistered")


@replicas.command("list")
@click.argument("server", required=False)
@registry_option
@click.option("--json", "as_json", is_flag=True)
@user_errors
def replicas_list(server: str | None, registry: str, as_json: bool) -> None:
    """List replicas (of SERVER, if given)."""
    rows = open_reachable(registry).list_replicas(server)
    if as_json:
        echo_json([replica_json(r) for r in rows])
        return
    click.echo(
        f"{'ID':14} {'SERVER':16} {'ADDRESS':22} {'REGION':10} {'WEIGHT':>6} {'STATE':9} "
        f"{'REVISION':12} REGISTERED"
    )
    for r in rows:
        click.echo(
            f"{printable(r.id):14} {printable(r.server):16} {printable(r.address):22} "
            f"{printable(r.region):10} {printable(r.weight):>6} {printable(r.state):9} "
            f"{printable(r.revision or '-'):12} {ago(r.registered_at) if r.registered_at else '-'}"
        )

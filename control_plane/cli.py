"""The ``routeplane`` command line: click on top of the registry, the bootstrap and ``app``.

Every command prints a one-line error and exits non-zero on bad input; never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from control_plane import logs
from control_plane.registry import Registry, RegistryError, open_registry

DEFAULT_REGISTRY_ENV = "ROUTEPLANE_REGISTRY"
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def registry_option(func: F) -> F:
    return click.option(
        "--registry",
        envvar=DEFAULT_REGISTRY_ENV,
        required=True,
        help=f"Registry URL (sqlite:///PATH or spanner://...); default ${DEFAULT_REGISTRY_ENV}.",
    )(func)


def user_errors(func: F) -> F:
    """Turn registry and validation errors into one-line messages and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RegistryError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(str(exc))
        return None

    return wrapper  # type: ignore[return-value]


def _open(url: str) -> Registry:
    registry = open_registry(url)
    registry.check_reachable()  # fail in a moment with one line, not after long retries
    return registry


@click.group()
@click.version_option(package_name="routeplane")
def main() -> None:
    """routeplane: an Envoy xDS control plane fed by a replica registry."""


@main.command()
@registry_option
@click.option(
    "--xds-listen", default="127.0.0.1:18000", show_default=True, help="xDS gRPC address."
)
@click.option("--admin-listen", default="127.0.0.1:18001", show_default=True, help="Admin address.")
@click.option(
    "--poll-interval",
    type=float,
    default=None,
    help="Seconds between registry watch polls (default: 0.005 SQLite, 0.01 Spanner).",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding a bearer token the admin API and /metrics require (needed when "
    "--admin-listen is not loopback); or set ROUTEPLANE_ADMIN_TOKEN.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    default=None,
    help="Serve xDS over mTLS with this certificate (PEM).",
)
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--client-ca",
    type=click.Path(dir_okay=False),
    default=None,
    help="CA that signs proxies' client certificates (required with --tls-cert).",
)
@click.option(
    "--new-streams-per-second",
    type=float,
    default=500.0,
    show_default=True,
    help="Admission control: new xDS streams let in per second (burst the same).",
)
@click.option("--max-concurrent-pushes", type=int, default=256, show_default=True)
@click.option(
    "--max-connection-age",
    type=float,
    default=1800.0,
    show_default=True,
    help="Seconds before a proxy's connection is closed (+-10% jitter) to rebalance.",
)
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--log-json/--log-console", default=None, help="Log format (default: JSON unless a terminal)."
)
@user_errors
def serve(
    registry: str,
    xds_listen: str,
    admin_listen: str,
    poll_interval: float | None,
    admin_token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    client_ca: str | None,
    new_streams_per_second: float,
    max_concurrent_pushes: int,
    max_connection_age: float,
    log_level: str,
    log_json: bool | None,
) -> None:
    """Run the control plane: watch the registry and serve xDS to Envoy."""
    from control_plane.app import ServeConfig
    from control_plane.app import serve as run_serve

    logs.configure(level=log_level, json=log_json)
    for flag, value in (("--xds-listen", xds_listen), ("--admin-listen", admin_listen)):
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            fail(f"invalid {flag} {value!r}: expected HOST:PORT")
    if poll_interval is not None and not 0.001 <= poll_interval <= 60:
        fail(f"invalid --poll-interval {poll_interval!r}: expected 0.001 to 60 seconds")
    token = os.environ.get("ROUTEPLANE_ADMIN_TOKEN", "")
    if admin_token_file:
        try:
            token = Path(admin_token_file).read_text().strip()
        except OSError as exc:
            fail(f"--admin-token-file {admin_token_file}: {exc.strerror}")
    tls = [tls_cert, tls_key, client_ca]
    if any(tls) and not all(tls):
        fail("--tls-cert, --tls-key and --client-ca go together")
    for flag, tls_path in zip(("--tls-cert", "--tls-key", "--client-ca"), tls, strict=True):
        if tls_path and not Path(tls_path).is_file():
            fail(f"{flag} {tls_path}: no such file")
    config = ServeConfig(
        registry_url=registry,
        xds_listen=xds_listen,
        admin_listen=admin_listen,
        poll_interval=poll_interval,
        admin_token=token,
        tls_cert=tls_cert or "",
        tls_key=tls_key or "",
        client_ca=client_ca or "",
        new_streams_per_second=new_streams_per_second,
        max_concurrent_pushes=max_concurrent_pushes,
        max_connection_age_seconds=max_connection_age,
    )
    asyncio.run(run_serve(config))


@main.command()
@click.option("--node-id", required=True, help="Envoy node id (unique per proxy).")
@click.option(
    "--cluster", default="edge", show_default=True, help="Envoy node cluster (the fleet)."
)
@click.option("--region", required=True, help="The proxy's region, e.g. us-west.")
@click.option("--zone", default="", help="The proxy's zone (optional).")
@click.option(
    "--xds",
    "xds",
    multiple=True,
    default=["127.0.0.1:18000"],
    show_default=True,
    help="Control-plane address; repeat for several replicas.",
)
@click.option("--listen", default="127.0.0.1:10000", show_default=True, help="Proxy listener.")
@click.option("--admin", default="127.0.0.1:9901", show_default=True, help="Envoy admin address.")
@click.option(
    "--ads",
    type=click.Choice(["delta", "sotw"]),
    default="delta",
    show_default=True,
    help="xDS protocol variant.",
)
@click.option("--tls-cert", default="", help="Client certificate for mTLS to the control plane.")
@click.option("--tls-key", default="")
@click.option("--ca", "tls_ca", default="", help="CA that signed the control plane's cert.")
@user_errors
def bootstrap(
    node_id: str,
    cluster: str,
    region: str,
    zone: str,
    xds: tuple[str, ...],
    listen: str,
    admin: str,
    ads: str,
    tls_cert: str,
    tls_key: str,
    tls_ca: str,
) -> None:
    """Print an Envoy bootstrap (YAML) that points a proxy at routeplane."""
    from control_plane.bootstrap import render

    if any((tls_cert, tls_key, tls_ca)) and not all((tls_cert, tls_key, tls_ca)):
        fail("--tls-cert, --tls-key and --ca go together")
    click.echo(
        render(
            node_id=node_id,
            cluster=cluster,
            region=region,
            zone=zone,
            xds=list(xds),
            listen=listen,
            admin=admin,
            delta=ads == "delta",
            tls=(tls_cert, tls_key, tls_ca) if tls_cert else None,
        ),
        nl=False,
    )


@main.group()
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
    server = _open(registry).create_server(
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
    reg = _open(registry)
    # Every server is checked before any is written.
    documents = server_documents(items, source=path)
    apply_servers(reg, documents, on_applied=lambda name, outcome: click.echo(f"{name}: {outcome}"))


@servers.command("list")
@registry_option
@click.option("--json", "as_json", is_flag=True)
@user_errors
def servers_list(registry: str, as_json: bool) -> None:
    """List servers."""
    rows = _open(registry).list_servers()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "workspace": s.workspace,
                        "hostnames": list(s.hostnames),
                        "protocol": s.protocol,
                    }
                    for s in rows
                ],
                indent=2,
            )
        )
        return
    click.echo(f"{'NAME':20} {'WORKSPACE':12} {'PROTOCOL':8} HOSTNAMES")
    for s in rows:
        click.echo(f"{s.name:20} {s.workspace:12} {s.protocol:8} {','.join(s.hostnames)}")


@servers.command("delete")
@click.argument("name")
@registry_option
@user_errors
def servers_delete(name: str, registry: str) -> None:
    """Delete server NAME and its replicas."""
    _open(registry).delete_server(name)
    click.echo(f"deleted server {name}")


@main.group()
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
    registry: str,
) -> None:
    """Register a replica of SERVER; prints its id."""
    replica = _open(registry).register_replica(
        server=server,
        address=address,
        region=region,
        zone=zone,
        weight=weight,
        state=state,
        lease_seconds=lease_seconds,
    )
    click.echo(replica.id)


@replicas.command("heartbeat")
@click.argument("replica_id")
@click.option("--lease-seconds", type=float, required=True, help="New lease, from now.")
@registry_option
@user_errors
def replicas_heartbeat(replica_id: str, lease_seconds: float, registry: str) -> None:
    """Renew REPLICA_ID's lease."""
    replica = _open(registry).renew_lease(replica_id, lease_seconds=lease_seconds)
    click.echo(f"{replica.id} lease renewed for {lease_seconds:g}s")


@main.group("registry")
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
        replica = _open(registry).set_replica_state(replica_id, state)
        click.echo(f"{replica.id} {replica.state}")


_state_command("drain", "DRAINING", "Stop new requests to REPLICA_ID; open streams finish.")
_state_command("ready", "READY", "Send traffic to REPLICA_ID.")


@replicas.command("deregister")
@click.argument("replica_id")
@registry_option
@user_errors
def replicas_deregister(replica_id: str, registry: str) -> None:
    """Remove REPLICA_ID from the registry."""
    _open(registry).deregister_replica(replica_id)
    click.echo(f"{replica_id} deregistered")


@replicas.command("list")
@click.argument("server", required=False)
@registry_option
@click.option("--json", "as_json", is_flag=True)
@user_errors
def replicas_list(server: str | None, registry: str, as_json: bool) -> None:
    """List replicas (of SERVER, if given)."""
    rows = _open(registry).list_replicas(server)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "server": r.server,
                        "address": r.address,
                        "region": r.region,
                        "zone": r.zone,
                        "weight": r.weight,
                        "state": r.state,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    click.echo(f"{'ID':14} {'SERVER':16} {'ADDRESS':22} {'REGION':10} {'WEIGHT':>6} STATE")
    for r in rows:
        click.echo(f"{r.id:14} {r.server:16} {r.address:22} {r.region:10} {r.weight:>6} {r.state}")


@main.group()
def mesh() -> None:
    """The local demo mesh (`make run`)."""


def _mesh_config(**kwargs: Any) -> Any:
    from pathlib import Path

    from control_plane.dev.mesh import MeshConfig

    kwargs["workdir"] = Path(kwargs["workdir"])
    return MeshConfig(**kwargs)


@mesh.command("up")
@click.option("--workdir", default=".mesh", show_default=True, type=click.Path())
@click.option(
    "--registry",
    type=click.Choice(["auto", "spanner", "sqlite"]),
    default="auto",
    show_default=True,
    help="auto: the Spanner emulator when installed, else SQLite.",
)
@click.option("--detach", is_flag=True, help="Start, print the guide and return.")
@click.option("--xds-port", default=18000, show_default=True)
@click.option("--admin-port", default=18001, show_default=True)
@click.option("--envoy-port", default=10000, show_default=True, help="us-west; us-east is +1.")
@click.option("--envoy-admin-port", default=9901, show_default=True, help="us-east is +1.")
@click.option("--replica-port", default=8100, show_default=True, help="First of 7 ports.")
@click.option("--emulator-port", default=9010, show_default=True)
def mesh_up(detach: bool, **options: Any) -> None:
    """Start the local mesh (foreground unless --detach; Ctrl-C stops everything)."""
    from control_plane.dev.mesh import MeshError, run_foreground, up

    config = _mesh_config(**options)
    try:
        if detach:
            up(config)
        else:
            run_foreground(config)
    except (MeshError, RegistryError, OSError) as exc:
        fail(str(exc))


@mesh.command("down")
@click.option("--workdir", default=".mesh", show_default=True, type=click.Path())
def mesh_down(workdir: str) -> None:
    """Stop every process a detached mesh started."""
    from pathlib import Path

    from control_plane.dev.mesh import down

    down(Path(workdir))


@mesh.command("status")
@click.option("--workdir", default=".mesh", show_default=True, type=click.Path())
def mesh_status(workdir: str) -> None:
    """The mesh's processes and whether they run."""
    from pathlib import Path

    from control_plane.dev.mesh import status

    rows = status(Path(workdir))
    if not rows:
        click.echo(f"no mesh running from {workdir}")
        return
    for name, pid, alive in rows:
        click.echo(f"{name:20} {pid:>8} {'running' if alive else 'stopped'}")


@mesh.command("compose")
@click.option("--write", is_flag=True, help="Write docker-compose.yml and envoy/compose/*.")
def mesh_compose(write: bool) -> None:
    """The same mesh as a Compose file (docker-compose.yml)."""
    from pathlib import Path

    from control_plane.dev.mesh import ROOT, MeshConfig, compose_files

    files = compose_files(MeshConfig(workdir=Path(".mesh")))
    for path, text in files.items():
        if write:
            target = ROOT / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            click.echo(f"wrote {path}")
        elif path.name == "docker-compose.yml":
            click.echo(text, nl=False)


@main.group()
def samples() -> None:
    """Sample upstreams for the mesh, tests and benchmarks."""


@samples.command("replica")
@click.option("--kind", type=click.Choice(["http", "ws", "grpc"]), required=True)
@click.option("--name", required=True, help="The name it answers with.")
@click.option("--listen", required=True, help="HOST:PORT to serve on.")
@click.option("--advertise", default="", help="HOST:PORT to register (default: --listen).")
@click.option("--server", required=True)
@click.option("--region", required=True)
@click.option("--zone", default="")
@click.option("--lease-seconds", type=float, default=5.0, show_default=True)
@registry_option
@user_errors
def samples_replica(
    kind: str,
    name: str,
    listen: str,
    advertise: str,
    server: str,
    region: str,
    zone: str,
    lease_seconds: float,
    registry: str,
) -> None:
    """A sample replica that registers itself, renews its lease and deregisters on exit."""
    from control_plane.dev.samples.replica import run

    run(
        kind=kind,
        name=name,
        listen=listen,
        advertise=advertise or listen,
        server=server,
        region=region,
        zone=zone,
        registry=registry,
        lease_seconds=lease_seconds,
    )


@samples.command("http-echo")
@click.option("--name", required=True, help="Replica name the server answers with.")
@click.option("--listen", default="127.0.0.1:8081", show_default=True)
def samples_http_echo(name: str, listen: str) -> None:
    """An HTTP echo server that names the replica that answered."""
    import signal

    from control_plane.dev.samples.http_echo import make_server

    host, _, port = listen.rpartition(":")
    server = make_server(name=name, host=host, port=int(port))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def admin_option(func: F) -> F:
    return click.option(
        "--admin",
        default="127.0.0.1:18001",
        show_default=True,
        help="Admin address of a running control plane.",
    )(func)


def _admin(admin: str, method: str, request: Any) -> Any:
    from control_plane.admin.client import AdminError, call

    try:
        return call(admin, method, request)
    except AdminError as exc:
        fail(str(exc))


def _ago(then: float) -> str:
    import time

    seconds = max(0, int(time.time() - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@main.command()
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see README).")
def proxies(admin: str, as_json: bool) -> None:
    """Every connected proxy and what it has, per type."""
    from control_plane.admin.client import admin_pb2

    response = _admin(admin, "ListProxies", admin_pb2.ListProxiesRequest())
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
                _ago(p.connected_since),
                *(states.get(t, "-") for t in ("cds", "eds", "lds", "rds")),
            ]
        )
        errors.extend(f"{p.node_id} {t.type}: {t.last_error}" for t in p.types if t.last_error)
    _table(["NODE", "GROUP", "ADDRESS", "XDS", "CONNECTED", "CDS", "EDS", "LDS", "RDS"], rows)
    for error in errors:
        click.echo(f"last NACK {error}")


@main.command()
@admin_option
@click.option("--json", "as_json", is_flag=True)
def problems(admin: str, as_json: bool) -> None:
    """Registry rows left out of routing, and why."""
    from control_plane.admin.client import admin_pb2

    response = _admin(admin, "ListProblems", admin_pb2.ListProblemsRequest())
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
    _table(
        ["KIND", "NAME", "FIELD", "VALUE", "PROBLEM"],
        [[i["kind"], i["name"], i["field"], i["value"], i["message"]] for i in items],
    )


@main.group()
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
    snap = _admin(
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
        f"published {_ago(snap.published_at)}  ({snap.cause})"
    )
    _table(
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

    diff = _admin(
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
    _table(
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

    response = _admin(
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
    _table(
        ["PUBLISHED", "GROUP", "VERSION", "REVISION", "CHANGED", "CAUSE"],
        [
            [
                _ago(e["published_at"]),
                e["node_group"],
                e["version"],
                str(e["revision"]),
                str(e["changed_resources"]),
                e["cause"],
            ]
            for e in entries
        ],
    )


@main.group()
def certs() -> None:
    """Certificates for mTLS between Envoy and the control plane."""


@certs.command("dev")
@click.option("--out", default=".mesh/certs", show_default=True, type=click.Path())
@click.option(
    "--cluster",
    "clusters",
    multiple=True,
    default=["edge"],
    show_default=True,
    help="Envoy fleet (node cluster) to issue a client certificate for; repeat.",
)
def certs_dev(out: str, clusters: tuple[str, ...]) -> None:
    """A throwaway CA, a server certificate for loopback and client certificates (dev only)."""
    from control_plane.dev.certs import dev_certs

    for path in dev_certs(Path(out), clusters=list(clusters)):
        click.echo(f"wrote {path}")

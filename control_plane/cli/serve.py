"""``routeplane serve`` (run the control plane) and ``routeplane bootstrap`` (an Envoy bootstrap
pointing at it).

Part of the CLI: imports ``app`` and ``bootstrap`` lazily, inside the commands; nothing from
``control_plane.dev``.
"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import click

from control_plane import logs
from control_plane.cli.common import explicit_registry_option, fail, user_errors

# Every numeric flag of ``serve``: finite and in this range, checked before anything starts
# (``--load-report-interval inf`` used to start, and then every LRS stream failed).
NUMERIC_FLAGS: dict[str, tuple[float, float]] = {
    "--poll-interval": (0.001, 60.0),
    "--new-streams-per-second": (0.01, 1_000_000.0),
    "--max-concurrent-pushes": (1, 100_000),
    "--max-connection-age": (1.0, 30 * 86_400.0),
    "--max-node-groups": (1, 1_000_000),
    "--max-groups-per-fleet": (1, 1_000_000),
    "--max-names-per-stream": (1, 10_000_000),
    "--load-report-interval": (0.01, 3_600.0),
}


def check_numbers(values: dict[str, float | int | None]) -> None:
    """Fail (one line naming the flag and the value, exit 1) for a value of ``values`` (flag
    -> value; None: not given) that is not finite or outside :data:`NUMERIC_FLAGS`."""
    for flag, value in values.items():
        low, high = NUMERIC_FLAGS[flag]
        # An int is compared as it is: math.isfinite of a 400-digit int raises OverflowError.
        finite = isinstance(value, int) or (value is not None and math.isfinite(value))
        if value is not None and not (finite and low <= value <= high):
            fail(f"invalid {flag} {value!r}: expected a number from {low:g} to {high:g}")


@click.command()
@explicit_registry_option
@click.option(
    "--xds-listen", default="127.0.0.1:18000", show_default=True, help="xDS gRPC address."
)
@click.option("--admin-listen", default="127.0.0.1:18001", show_default=True, help="Admin address.")
@click.option(
    "--keda-listen",
    default="",
    help="Serve KEDA's external scaler (externalscaler.ExternalScaler) here, with xDS's TLS "
    "options; off by default.",
)
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
@click.option(
    "--max-node-groups",
    type=int,
    default=1000,
    show_default=True,
    help="Node groups served at once; a stream of a new group past it is refused.",
)
@click.option(
    "--max-groups-per-fleet",
    type=int,
    default=100,
    show_default=True,
    help="Node groups per node cluster (fleet); a stream of a new group past it is refused.",
)
@click.option(
    "--max-names-per-stream",
    type=int,
    default=20_000,
    show_default=True,
    help="Resource names one stream may subscribe to (or claim to have) per type.",
)
@click.option(
    "--load-report-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between the load reports every proxy sends (LRS).",
)
@click.option(
    "--workers",
    type=int,
    default=0,
    show_default=True,
    help="Processes serving the one xDS port (SO_REUSEPORT), under a supervisor that serves "
    "the admin address for all and runs one registry watcher for the host, which hands every "
    "change to them; 0: one per core this process may use (CPU affinity and a container's CPU "
    "limit) when that is 4 or more, else 1; 1: one process, no supervisor.",
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
    keda_listen: str,
    poll_interval: float | None,
    admin_token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    client_ca: str | None,
    new_streams_per_second: float,
    max_concurrent_pushes: int,
    max_connection_age: float,
    max_node_groups: int,
    max_groups_per_fleet: int,
    max_names_per_stream: int,
    load_report_interval: float,
    workers: int,
    log_level: str,
    log_json: bool | None,
) -> None:
    """Run the control plane: watch the registry and serve xDS to Envoy."""
    from control_plane.app import ConfigError, ServeConfig, tune_gc
    from control_plane.app import serve as run_serve
    from control_plane.group.cores import worker_count

    check_numbers(
        {
            "--poll-interval": poll_interval,
            "--new-streams-per-second": new_streams_per_second,
            "--max-concurrent-pushes": max_concurrent_pushes,
            "--max-connection-age": max_connection_age,
            "--max-node-groups": max_node_groups,
            "--max-groups-per-fleet": max_groups_per_fleet,
            "--max-names-per-stream": max_names_per_stream,
            "--load-report-interval": load_report_interval,
        }
    )

    logs.configure(level=log_level, json=log_json)
    token = os.environ.get("ROUTEPLANE_ADMIN_TOKEN", "")
    if admin_token_file:
        try:
            token = Path(admin_token_file).read_text().strip()
        except OSError as exc:
            fail(f"--admin-token-file {admin_token_file}: {exc.strerror}")
    config = ServeConfig(
        registry_url=registry,
        xds_listen=xds_listen,
        admin_listen=admin_listen,
        keda_listen=keda_listen,
        poll_interval=poll_interval,
        admin_token=token,
        tls_cert=tls_cert or "",
        tls_key=tls_key or "",
        client_ca=client_ca or "",
        new_streams_per_second=new_streams_per_second,
        max_concurrent_pushes=max_concurrent_pushes,
        max_connection_age_seconds=max_connection_age,
        max_node_groups=max_node_groups,
        max_groups_per_fleet=max_groups_per_fleet,
        max_names_per_stream=max_names_per_stream,
        load_report_interval=load_report_interval,
    )
    try:
        config.validate()  # all of it, before anything is opened
        count = worker_count(workers)
    except ConfigError as exc:
        fail(str(exc))
    tune_gc()
    if count == 1:
        asyncio.run(run_serve(config))
        return
    from control_plane.group.supervisor import supervise

    code = asyncio.run(supervise(config, workers=count, log_level=log_level, log_json=log_json))
    if code:
        raise SystemExit(code)


@click.command()
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
@click.option(
    "--grpc",
    "grpc_client",
    is_flag=True,
    help="A gRPC xDS bootstrap (JSON) for proxyless gRPC clients instead (--listen, --admin "
    "and --ads do not apply).",
)
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
    grpc_client: bool,
) -> None:
    """Print an Envoy bootstrap (YAML) that points a proxy at routeplane, or with --grpc a gRPC
    xDS bootstrap (JSON) for gRPC clients on xds:/// targets."""
    from control_plane.bootstrap import render, render_grpc

    if any((tls_cert, tls_key, tls_ca)) and not all((tls_cert, tls_key, tls_ca)):
        fail("--tls-cert, --tls-key and --ca go together")
    if grpc_client:
        click.echo(
            render_grpc(
                node_id=node_id,
                cluster=cluster,
                region=region,
                zone=zone,
                xds=list(xds),
                tls=(tls_cert, tls_key, tls_ca) if tls_cert else None,
            ),
            nl=False,
        )
        return
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

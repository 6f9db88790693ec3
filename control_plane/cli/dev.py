"""``routeplane mesh``, ``routeplane samples`` and ``routeplane certs``: the commands over the dev
tooling in ``control_plane.dev`` (the demo mesh, sample upstreams, dev certificates).

The only CLI module that imports ``control_plane.dev``, and only inside its commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from control_plane.cli.common import admin_option, fail, registry_option, user_errors
from control_plane.cli.deploy import emit, kube_options
from control_plane.registry import RegistryError


@click.group()
def mesh() -> None:
    """The local demo mesh (`make run`)."""


def _mesh_config(**kwargs: Any) -> Any:
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
@click.option(
    "--replica-port",
    default=8100,
    show_default=True,
    help="First of 11 ports (7 replicas, 4 autoscaled).",
)
@click.option("--emulator-port", default=9010, show_default=True)
def mesh_up(detach: bool, **options: Any) -> None:
    """Start the local mesh (foreground unless --detach; Ctrl-C stops everything)."""
    from control_plane.dev.mesh import MeshError, run_foreground, up

    config = _mesh_config(**options)
    try:
        if detach:
            up(config, announce=click.echo)
        else:
            run_foreground(config, announce=click.echo)  # click.echo flushes: a pipe sees it
    except (MeshError, RegistryError, OSError) as exc:
        fail(str(exc))


@mesh.command("init")
@registry_option
@click.option(
    "--wait",
    type=click.FloatRange(min=0, max=3600),
    default=0.0,
    show_default=True,
    help="Seconds to wait for $SPANNER_EMULATOR_HOST to accept connections (Compose's init).",
)
@user_errors
def mesh_init(registry: str, wait: float) -> None:
    """Create the registry schema and the mesh's sample servers (idempotent): what `mesh up`
    and the Compose `init` service do first."""
    from control_plane.dev.mesh import init_registry, wait_for_emulator

    if wait:
        wait_for_emulator(os.environ.get("SPANNER_EMULATOR_HOST", ""), seconds=wait)
    init_registry(registry, announce=click.echo)


@mesh.command("down")
@click.option("--workdir", default=".mesh", show_default=True, type=click.Path())
def mesh_down(workdir: str) -> None:
    """Stop every process a detached mesh started."""
    from control_plane.dev.mesh import down

    down(Path(workdir), announce=click.echo)


@mesh.command("status")
@click.option("--workdir", default=".mesh", show_default=True, type=click.Path())
def mesh_status(workdir: str) -> None:
    """The mesh's processes and whether they run."""
    from control_plane.dev.processes import status

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
    from control_plane.dev.compose import compose_files
    from control_plane.dev.mesh import ROOT, MeshConfig

    files = compose_files(MeshConfig(workdir=Path(".mesh")))
    for path, text in files.items():
        if write:
            target = ROOT / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            click.echo(f"wrote {path}")
        elif path.name == "docker-compose.yml":
            click.echo(text, nl=False)


@mesh.command("kubernetes")
@click.option("--write", is_flag=True, help="Write deploy/ in this repository.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the files under DIR (DIR/deploy/...) instead.",
)
@kube_options
def mesh_kubernetes(write: bool, out: str | None, **options: str | None) -> None:
    """The demo mesh on Kubernetes: manifests and a Grafana dashboard (deploy/). Without --write
    or --out, prints the manifests to apply (namespace, routeplane, Envoy, Prometheus scrape
    config; not the init Job or cert-manager's). Your own topology: `deploy kubernetes`."""
    from control_plane.deploy.kubernetes import kubernetes_files
    from control_plane.deploy.topology import KubeConfig
    from control_plane.dev.mesh import ROOT, MeshConfig, topology

    if out == "":  # as `deploy kubernetes`: an unset variable is not "print them"
        fail("invalid --out '': expected a directory")
    try:
        kube = KubeConfig(**{k: v for k, v in options.items() if v is not None})
        files = kubernetes_files(topology(MeshConfig(workdir=Path(".mesh")), kube))
    except ValueError as exc:
        fail(str(exc))
    if out:
        emit(files, base=Path(out))
    else:
        emit(files, base=ROOT if write else None, relative=True)


@click.group()
def samples() -> None:
    """Sample upstreams for the mesh, tests and benchmarks."""


@samples.command("autoscaler")
@click.option("--server", required=True, help="The server to scale.")
@click.option("--region", required=True, help="Where its replicas register.")
@click.option("--ports", required=True, help="Ports for its replicas, e.g. 8150-8159.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="The address its replicas listen on."
)
@click.option(
    "--advertise-host",
    default="",
    help="The address its replicas register (default: --host; in a container, its address).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=30.0,
    show_default=True,
    help="Seconds a draining replica may keep requests in flight before it is stopped anyway.",
)
@click.option(
    "--revision",
    default="",
    help="The revision its replicas register with (they answer as NAME@REVISION).",
)
@admin_option
@registry_option
@user_errors
def samples_autoscaler(
    server: str,
    region: str,
    ports: str,
    host: str,
    advertise_host: str,
    drain_timeout: float,
    revision: str,
    admin: str,
    registry: str,
) -> None:
    """Start or stop sample replicas of SERVER to match routeplane's recommendation (WatchLoad)."""
    import signal
    import sys

    from control_plane.admin.client import AdminError, admin_pb2, stream
    from control_plane.dev.autoscaler import Autoscaler, parse_ports

    try:
        port_list = parse_ports(ports)
    except ValueError as exc:
        fail(str(exc))
    if host in ("0.0.0.0", "::") and not advertise_host:
        fail(
            f"--host {host}: replicas cannot register a wildcard address;"
            " give --advertise-host (the address others reach them at)"
        )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    scaler = Autoscaler(
        server=server,
        region=region,
        ports=port_list,
        registry=registry,
        admin=admin,
        drain_timeout=drain_timeout,
        announce=lambda line: click.echo(line, err=True),
        revision=revision,
        host=host,
        advertise_host=advertise_host,
    )
    try:
        scaler.follow(stream(admin, "WatchLoad", admin_pb2.GetLoadRequest(server=server)))
    except AdminError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return


@samples.command("replica")
@click.option("--kind", type=click.Choice(["http", "ws", "grpc"]), required=True)
@click.option("--name", required=True, help="The name it answers with.")
@click.option("--listen", required=True, help="HOST:PORT to serve on.")
@click.option("--advertise", default="", help="HOST:PORT to register (default: --listen).")
@click.option("--server", required=True)
@click.option("--region", required=True)
@click.option("--zone", default="")
@click.option("--lease-seconds", type=float, default=5.0, show_default=True)
@click.option(
    "--revision",
    default="",
    help="The version it runs (registered with it; answers as NAME@REVISION).",
)
@click.option(
    "--error-percent",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="Answer 500 to this percent of requests, evenly spread (--kind http only).",
)
@click.option(
    "--report",
    "report",
    multiple=True,
    metavar="METRIC=VALUE",
    help="Report this load with ORCA (repeat), e.g. application_utilization=0.9 or "
    "named_metrics.kv_cache=0.5; rps_fractional=100 unless given (--kind http and grpc).",
)
@click.option(
    "--report-file",
    default="",
    metavar="PATH",
    help="Report the METRIC=VALUE lines of this file, re-read when it changes (empty or "
    "missing: report nothing).",
)
@click.option(
    "--report-binary",
    is_flag=True,
    help="Send the binary endpoint-load-metrics-bin header instead of TEXT (--kind http).",
)
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
    revision: str,
    error_percent: int,
    report: tuple[str, ...],
    report_file: str,
    report_binary: bool,
    registry: str,
) -> None:
    """A sample replica that registers itself, renews its lease and deregisters on exit."""
    from control_plane.dev.samples.replica import report_source, run

    if error_percent and kind != "http":
        fail(f"--error-percent {error_percent}: only --kind http can fail on demand")
    if report_binary and kind != "http":
        fail("--report-binary: only --kind http has a header form to choose")
    try:
        report_source(assignments=report, report_file=report_file, kind=kind)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
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
        revision=revision,
        error_percent=error_percent,
        report=report,
        report_file=report_file,
        report_binary=report_binary,
    )


@samples.command("grpc-client")
@click.option("--target", required=True, help="xds:///<hostname>, e.g. xds:///tokens.local.")
@click.option(
    "--xds",
    "xds",
    multiple=True,
    default=["127.0.0.1:18000"],
    show_default=True,
    help="Control-plane address; repeat for several replicas.",
)
@click.option("--region", default="", help="The client's region (its locality).")
@click.option("--zone", default="")
@click.option("--cluster", default="apps", show_default=True, help="Its node cluster.")
@click.option("--node-id", default="", help="Default: grpc-client-<pid>.")
@click.option(
    "--bootstrap",
    "bootstrap_file",
    default="",
    help="A gRPC xDS bootstrap file instead of --xds/--region/--zone/--cluster/--node-id.",
)
@click.option("--calls", default=1, show_default=True, help="How many calls; 0: until stopped.")
@click.option("--interval", default=0.2, show_default=True, help="Seconds between calls.")
@click.option(
    "--stream",
    default=0,
    show_default=True,
    help="Make server-streaming calls of this many messages instead of unary calls.",
)
@click.option("--stream-interval-ms", default=100, show_default=True)
@click.option("--message", default="hello", show_default=True)
@click.option("--header", "headers", multiple=True, help="NAME=VALUE metadata; repeat.")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline per call (seconds).")
@user_errors
def samples_grpc_client(
    target: str,
    xds: tuple[str, ...],
    region: str,
    zone: str,
    cluster: str,
    node_id: str,
    bootstrap_file: str,
    calls: int,
    interval: float,
    stream: int,
    stream_interval_ms: int,
    message: str,
    headers: tuple[str, ...],
    timeout: float,
) -> None:
    """A proxyless gRPC client of the Echo sample: routeplane's xDS picks its replicas."""
    import os
    import sys

    from control_plane.bootstrap import render_grpc
    from control_plane.dev.samples.grpc_client import load_bootstrap, run

    if not target.startswith("xds:///"):
        fail(f"--target {target!r}: expected xds:///<hostname>")
    pairs = []
    for header in headers:
        name, sep, value = header.partition("=")
        if not sep or not name:
            fail(f"--header {header!r}: expected NAME=VALUE")
        pairs.append((name.lower(), value))
    if bootstrap_file:
        try:
            bootstrap = load_bootstrap(bootstrap_file)
        except (OSError, ValueError) as exc:
            fail(str(exc))
    else:
        bootstrap = render_grpc(
            node_id=node_id or f"grpc-client-{os.getpid()}",
            cluster=cluster,
            region=region,
            zone=zone,
            xds=list(xds),
        )
    failures = run(
        target=target,
        bootstrap=bootstrap,
        calls=calls,
        interval=interval,
        stream=stream,
        stream_interval_ms=stream_interval_ms,
        message=message,
        headers=pairs,
        timeout=timeout,
        out=lambda line: click.echo(line),
    )
    sys.exit(1 if failures else 0)


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


@click.group()
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

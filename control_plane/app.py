"""The wiring root of one serving process: registry, reconciler, cache, xDS and admin servers.

A ``serve --workers`` group (``group/``) runs this in each worker and wraps it; nothing here
knows of the group but the three arguments a worker passes to ``serve()``.

``serve()`` runs everything in one TaskGroup until cancelled (SIGINT/SIGTERM), then stops the
gRPC server with a grace period so streams end cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from prometheus_client import REGISTRY, disable_created_metrics, generate_latest

from control_plane import metrics
from control_plane.admin.loadview import LoadView
from control_plane.admin.server import AdminServer
from control_plane.admin.service import AdminService
from control_plane.fleet.publish import FleetLoad
from control_plane.fleet.records import PROBLEM_KIND
from control_plane.keda.service import MAX_REQUEST_BYTES, KedaScaler, add_to
from control_plane.load.server import LoadService
from control_plane.reconcile import Reconciler
from control_plane.registry import RegistryState, open_registry
from control_plane.rollout.driver import (
    PROBLEM_KIND as ROLLOUT_PROBLEM,
)
from control_plane.rollout.driver import (
    RolloutDriver,
    rates_of_rows,
)
from control_plane.xds import csds
from control_plane.xds.cache import MAX_GROUPS, MAX_GROUPS_PER_FLEET, SnapshotCache
from control_plane.xds.server import XdsServer
from control_plane.xds.stream import DEFAULT_LIMITS, Limits

log = structlog.get_logger("routeplane.app")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_PENDING_CALLS = 20_000
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
    # gRPC core queues calls the event loop has not picked up yet and, past this backlog
    # (default 1,000, hard 3,000), cancels new ones before routeplane sees them: a reconnect
    # storm then ends in CANCELLED/INTERNAL instead of admission control's RESOURCE_EXHAUSTED
    # with its retry hint. Let every attempt through to admission control, which answers it in
    # microseconds; the core limit stays as a last bound above the 10,000-proxy storm.
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
]

# KEDA's scaler (--keda-listen): small requests (KEDA's trigger metadata), keepalive as xDS.
KEDA_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    *(o for o in GRPC_OPTIONS if o[0].startswith("grpc.keepalive") or "ping" in o[0]),
    ("grpc.so_reuseport", 0),
]


# Thousands of streams keep ~10^6 long-lived objects, and the default thresholds (700, 10, 10)
# scanned them again and again: 0.96 s of collections in a 1,000-stream storm and 20 pushes, a
# fifth of the push CPU (py-spy, gc.callbacks). With these: 0.04 s.
GC_THRESHOLDS = (20_000, 20, 100)


def tune_gc() -> None:
    """The collector's thresholds for a serving process (``serve`` and each worker)."""
    gc.set_threshold(*GC_THRESHOLDS)


class ConfigError(ValueError):
    """A serve setting that cannot work, named by its flag and value."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeConfig:
    registry_url: str
    xds_listen: str
    admin_listen: str
    control_plane_id: str = ""
    poll_interval: float | None = None
    grace_seconds: float = 5.0
    new_streams_per_second: float = 500.0
    max_concurrent_pushes: int = 256
    max_connection_age_seconds: float = 1800.0
    admin_token: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    max_node_groups: int = MAX_GROUPS
    max_groups_per_fleet: int = MAX_GROUPS_PER_FLEET
    max_names_per_stream: int = DEFAULT_LIMITS.max_names
    load_report_interval: float = 1.0
    keda_listen: str = ""  # KEDA's external scaler; "": off
    # The fleet group this process publishes its load in (control_plane/fleet/): the workers of
    # one ``serve --workers`` share one, so none counts a sibling's record; "" (a lone
    # process): a group of its own.
    fleet_group: str = ""

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first setting that cannot work. Reads no file
        and opens nothing but checks that the TLS files exist."""
        for flag, value in (
            ("--xds-listen", self.xds_listen),
            ("--admin-listen", self.admin_listen),
        ):
            split_host_port(value, flag=flag)
        if self.keda_listen:
            split_host_port(self.keda_listen, flag="--keda-listen")
            if self.keda_listen in (self.xds_listen, self.admin_listen):
                raise ConfigError(
                    f"--keda-listen {self.keda_listen} is the xDS or the admin address: "
                    "give KEDA's scaler a port of its own"
                )
        if self.poll_interval is not None and not 0.001 <= self.poll_interval <= 60:
            raise ConfigError(
                f"invalid --poll-interval {self.poll_interval!r}: expected 0.001 to 60 seconds"
            )
        for flag, number in (
            ("--new-streams-per-second", self.new_streams_per_second),
            ("--max-concurrent-pushes", self.max_concurrent_pushes),
            ("--max-connection-age", self.max_connection_age_seconds),
            ("--max-node-groups", self.max_node_groups),
            ("--max-groups-per-fleet", self.max_groups_per_fleet),
            ("--max-names-per-stream", self.max_names_per_stream),
            ("--load-report-interval", self.load_report_interval),
        ):
            if not number > 0:
                raise ConfigError(f"invalid {flag} {number!r}: expected a number above 0")
        if self.grace_seconds < 0:
            raise ConfigError(f"invalid grace {self.grace_seconds!r}: expected 0 or more seconds")
        tls = (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--client-ca", self.client_ca),
        )
        if any(path for _, path in tls) and not all(path for _, path in tls):
            raise ConfigError("--tls-cert, --tls-key and --client-ca go together")
        for flag, path in tls:
            if path and not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: no such file")
        admin_host, _ = split_host_port(self.admin_listen)
        if not _loopback(admin_host) and not self.admin_token.strip():
            raise ConfigError(
                f"--admin-listen {self.admin_listen} is not loopback: set --admin-token-file "
                "(or ROUTEPLANE_ADMIN_TOKEN) so the admin API and /metrics need a bearer token"
            )


def _server_credentials(config: ServeConfig) -> grpc.ServerCredentials:
    """mTLS: our certificate, and the CA every proxy's client certificate must chain to."""
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=Path(config.client_ca).read_bytes(),
        require_client_auth=True,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(value: str, *, flag: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ConfigError naming ``flag`` if not."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid {flag} {value!r}: expected HOST:PORT with a port 1-65535")
    return host, int(port)


def plaintext_exposed(config: ServeConfig) -> bool:
    """Whether xDS would be served in plaintext on an address other than loopback."""
    host, _ = split_host_port(config.xds_listen)
    return not config.tls_cert and not _loopback(host)


def warn_if_exposed(config: ServeConfig) -> None:
    """Log ``xds_plaintext_exposed`` if xDS would be plaintext off loopback (and
    ``keda_plaintext_exposed`` for --keda-listen): once per ``serve`` (a lone process, or a
    group's supervisor)."""
    if plaintext_exposed(config):
        log.warning(
            "xds_plaintext_exposed",
            address=config.xds_listen,
            advice="xDS is plaintext; keep it on loopback or a private network",
        )
    if config.keda_listen and not config.tls_cert:
        host, _ = split_host_port(config.keda_listen)
        if not _loopback(host):
            log.warning(
                "keda_plaintext_exposed",
                address=config.keda_listen,
                advice="KEDA's scaler is plaintext; keep it on loopback or a private network",
            )


async def listen_on(server: grpc.aio.Server, config: ServeConfig, address: str, flag: str) -> None:
    """Add ``address`` to ``server`` with xDS's transport security: mTLS with --tls-cert,
    --tls-key and --client-ca, else plaintext; OSError naming ``flag`` if it cannot."""
    try:
        if config.tls_cert:
            credentials = await asyncio.to_thread(_server_credentials, config)
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc.aio raises where grpc returns 0: "Failed to bind to address"
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {flag} {address}: the address is taken or not this machine's"
        )


async def start_keda(
    stack: contextlib.AsyncExitStack,
    config: ServeConfig,
    *,
    view: LoadView,
    versions: Callable[[], AsyncIterator[int]],
) -> KedaScaler | None:
    """KEDA's external scaler on --keda-listen (none when it is not set), over ``view``,
    stopped by ``stack``."""
    if not config.keda_listen:
        return None
    scaler = KedaScaler(view=view, versions=versions)
    server = grpc.aio.server(options=KEDA_GRPC_OPTIONS)
    add_to(server, scaler)
    await listen_on(server, config, config.keda_listen, "--keda-listen")
    await server.start()
    # No grace: its streams never end on their own (a grace would hold the shutdown for all
    # of it, before the xDS server's), and every call is a read KEDA makes again.
    stack.push_async_callback(server.stop, 0)
    return scaler


async def start_admin(admin: AdminServer, listen: str) -> None:
    """Start ``admin`` on ``listen`` (``--admin-listen``); OSError naming it if it cannot."""
    host, port = split_host_port(listen)
    try:
        await admin.start(host, port)
    except OSError as exc:
        raise OSError(f"cannot listen on --admin-listen {listen}: {exc.strerror or exc}") from exc


async def serve(
    config: ServeConfig,
    *,
    reuse_port: bool = False,
    csds_answer: Callable[[XdsServer], csds.Answer] = csds.own,
    notices: bool = True,
    drive_rollouts: bool = True,
    states: Callable[[], AsyncIterator[RegistryState]] | None = None,
) -> None:
    """Validate ``config``, then open everything under one exit stack: whatever fails or is
    refused on the way closes what was already opened. A worker of ``serve --workers``
    (``group/worker.py``) shares the xDS port (``reuse_port``), answers CSDS on it for the
    whole group (``csds_answer``, given this process's XdsServer) and leaves the once-per-serve
    ``notices`` (the plaintext warning) and the rollout driver (``drive_rollouts``: it judges
    from the group's load, which only the supervisor sums) to its supervisor."""
    config.validate()
    disable_created_metrics()
    async with contextlib.AsyncExitStack() as stack:
        registry = await asyncio.to_thread(open_registry, config.registry_url)
        stack.push_async_callback(asyncio.to_thread, registry.close)
        cache = SnapshotCache(
            max_groups=config.max_node_groups, max_groups_per_fleet=config.max_groups_per_fleet
        )
        reconciler = Reconciler(
            registry=registry, cache=cache, poll_interval=config.poll_interval, states=states
        )
        identifier = config.control_plane_id or f"routeplane/{socket.gethostname()}/{os.getpid()}"
        xds = XdsServer(
            cache=cache,
            control_plane_id=identifier,
            new_streams_per_second=config.new_streams_per_second,
            max_concurrent_pushes=config.max_concurrent_pushes,
            require_identity=bool(config.tls_cert),
            limits=Limits(max_names=config.max_names_per_stream),
        )
        options = [
            # A lone process refuses a taken port; workers share it (the supervisor checked
            # it was free before starting them).
            *(o for o in GRPC_OPTIONS if not (reuse_port and o[0] == "grpc.so_reuseport")),
            *([("grpc.so_reuseport", 1)] if reuse_port else []),
            # Streams are closed after this age (gRPC adds +-10% jitter) so proxies rebalance
            # across control-plane replicas; the grace lets an in-flight push finish.
            ("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", 10_000),
        ]
        load = LoadService(
            table=lambda: reconciler.table,
            interval=config.load_report_interval,
            require_identity=bool(config.tls_cert),
            admit=xds.admit,
            xds_nodes=lambda: ((p.node_id, p.group.cluster) for p in list(xds.proxies.values())),
        )
        # Unique to this start: a replica that restarts is a new publisher, and one given the
        # same --control-plane-id as another never overwrites the other's record.
        publisher = f"{identifier}#{secrets.token_hex(6)}"
        fleet = FleetLoad(
            registry=registry, load=load, publisher=publisher, group=config.fleet_group or publisher
        )
        # Drives the running rollouts whose lease this process holds (control_plane/rollout/),
        # judged from this process's load view (with fleet load: every process's proxies).
        rollouts = RolloutDriver(
            registry=registry,
            holder=publisher,
            rates=lambda server: rates_of_rows(load.rows_of(server)),
        )
        xds.add_subscribe_listener(
            lambda proxy, type_url, names: load.note_subscribed(
                type_url, names, node_id=proxy.node_id
            )
        )
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers(
            [
                *xds.generic_handlers(),
                csds.generic_handler(
                    csds_answer(xds),
                    guard=csds.XdsPortGuard(
                        require_identity=bool(config.tls_cert), token=config.admin_token
                    ),
                ),
                load.generic_handler(),
            ]
        )
        await listen_on(server, config, config.xds_listen, "--xds-listen")
        await server.start()
        stack.push_async_callback(server.stop, config.grace_seconds)

        def ready() -> tuple[bool, str]:
            if not reconciler.health.ready:
                return False, "waiting for the first registry read"
            if reconciler.health.degraded:
                return False, f"registry degraded: {reconciler.health.last_error}"
            return True, "ready"

        if notices:
            warn_if_exposed(config)
        load_exposition = metrics.LoadExposition(load)

        async def exposition() -> bytes:
            # The load families come from their own cache (10,000 servers: 90,000 series).
            text: bytes = generate_latest(REGISTRY)
            rollouts_text = metrics.rollout_exposition() if drive_rollouts else b""
            return text + rollouts_text + load_exposition.render()

        admin = AdminServer(
            service=AdminService(
                xds=xds,
                cache=cache,
                table=lambda: reconciler.table,
                load=load,
                more_problems=lambda: (
                    *(
                        (PROBLEM_KIND, p.publisher, p.field, p.value, p.message)
                        for p in fleet.problems
                    ),
                    *(
                        (ROLLOUT_PROBLEM, p.server, p.field, p.value, p.message)
                        for p in rollouts.problems
                    ),
                ),
                rollouts=lambda: rollouts.rollouts,
            ),
            ready=ready,
            token=config.admin_token,
            metrics=exposition,
            # This process's proxies only: what a sibling worker asks for.
            handlers=[csds.generic_handler(xds)],
        )
        await start_admin(admin, config.admin_listen)
        stack.push_async_callback(admin.stop)
        await start_keda(stack, config, view=load, versions=load.watch)
        collector = metrics.LiveCollector(lambda: (p.group.key for p in list(xds.proxies.values())))
        REGISTRY.register(collector)
        stack.callback(REGISTRY.unregister, collector)
        log.info(
            "control_plane_started",
            xds=config.xds_listen,
            admin=config.admin_listen,
            registry=config.registry_url,
            identifier=identifier,
            keda=config.keda_listen or None,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(reconciler.run()),
                *([tasks.create_task(reconciler.run_cleanup())] if states is None else []),
                tasks.create_task(load.run()),
                tasks.create_task(fleet.run()),
                *([tasks.create_task(rollouts.run())] if drive_rollouts else []),
            ]
            await stop.wait()
            log.info("shutdown_started", grace_seconds=config.grace_seconds)
            for worker in workers:
                worker.cancel()
    # After the stack: the xDS server's grace, the admin server and the registry are done.
    log.info("shutdown_completed")

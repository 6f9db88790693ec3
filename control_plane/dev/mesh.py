"""``routeplane mesh``: the local demo mesh on loopback, nothing needed but Python.

One topology, described here once, drives ``mesh up`` (processes on this machine) and
``mesh compose`` (``dev/compose.py``: the committed ``docker-compose.yml``): a registry (the
Spanner emulator when installed, else embedded SQLite), the control plane, an Envoy in us-west
and one in us-east, and sample replicas in both regions (HTTP echo, WebSocket echo, gRPC token
streaming) that register themselves, renew a lease and deregister on exit. Every process is
started in its own session and stopped by PID (``mesh down`` checks each PID still runs what it
started).

Dev tooling: the product never imports it. It drives the product from outside, as processes
(``routeplane serve``, ``routeplane samples replica``), and writes the registry through
``registry.servers``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVERS_FILE = ROOT / "mesh" / "servers.yaml"
EMULATOR_PATHS = (
    "/usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator/emulator_main",
    "/usr/lib/google-cloud-sdk/platform/cloud-spanner-emulator/emulator_main",
)
SPANNER_URL = "spanner://projects/routeplane/instances/local/databases/registry"
LEASE_SECONDS = 5.0


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
)
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
        if spanner:
            ports["--emulator-port"] = self.emulator_port
        return ports


@dataclass(slots=True)
class Started:
    name: str
    pid: int
    program: str
    log: str


@dataclass(slots=True)
class MeshState:
    registry_url: str
    processes: list[Started] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def emulator_binary() -> str | None:
    for candidate in (shutil.which("emulator_main"), *EMULATOR_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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


def _state_path(workdir: Path) -> Path:
    return workdir / "mesh.json"


def _save(workdir: Path, state: MeshState) -> None:
    _state_path(workdir).write_text(json.dumps(asdict(state), indent=2) + "\n")


def load_state(workdir: Path) -> MeshState | None:
    path = _state_path(workdir)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return MeshState(
        registry_url=raw["registry_url"],
        processes=[Started(**p) for p in raw["processes"]],
        env=raw.get("env", {}),
    )


def _start(state: MeshState, workdir: Path, name: str, argv: list[str]) -> None:
    log_path = workdir / "logs" / f"{name}.log"
    env = {**os.environ, **state.env}
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches `mesh up` only; it stops the rest in order
        )
    state.processes.append(Started(name=name, pid=process.pid, program=argv[0], log=str(log_path)))
    _save(workdir, state)


def _runs(started: Started) -> bool:
    """Is that PID still the process we started (not a reused PID, not a zombie)?"""
    try:
        raw = Path(f"/proc/{started.pid}/cmdline").read_bytes()
        state = Path(f"/proc/{started.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        return False
    if not raw:
        return True  # mid-exec (Envoy's launcher execs the binary): cmdline is briefly empty
    return started.program.encode() in raw.split(b"\0")[:2]


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
    if existing is not None and any(_runs(p) for p in existing.processes):
        raise MeshError(f"a mesh is already running from {cfg.workdir} (`routeplane mesh down`)")
    (cfg.workdir / "logs").mkdir(parents=True, exist_ok=True)
    for stale in cfg.workdir.glob("registry.db*"):
        stale.unlink()
    bindir = Path(sys.executable).parent
    routeplane = str(bindir / "routeplane")
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
            _start(
                state,
                cfg.workdir,
                "spanner-emulator",
                [binary, f"--host_port=127.0.0.1:{cfg.emulator_port}"],
            )
            wait_for(
                lambda: not port_free(cfg.emulator_port), timeout=20, what="the Spanner emulator"
            )
        os.environ.update(state.env)
        _init_registry(state.registry_url)
        _start(
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
        for replica in REPLICAS:
            _start(
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
                ],
            )
        for envoy in ENVOYS:
            path = cfg.workdir / f"{envoy.name}.yaml"
            path.write_text(bootstrap_for(envoy, cfg))
            _start(
                state,
                cfg.workdir,
                envoy.name,
                [
                    str(bindir / "envoy"),
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
            _start(
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


def _init_registry(url: str) -> None:
    from control_plane.registry import open_registry
    from control_plane.registry.servers import apply_servers, load_servers_file

    registry = open_registry(url)
    try:
        registry.init()
        apply_servers(registry, load_servers_file(SERVERS_FILE))
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


def _wait_routed(cfg: MeshConfig, state: MeshState) -> None:
    counts = {
        server: sum(r.server == server for r in REPLICAS) for server in {r.server for r in REPLICAS}
    }

    def routed() -> bool:
        for process in state.processes:
            if not _runs(process):
                raise MeshError(f"{process.name} exited; see {process.log}")
        return all(
            _stat(
                cfg.envoy_admin_port + envoy.offset, f"cluster.default_{server}.membership_healthy"
            )
            == count
            for envoy in ENVOYS
            for server, count in counts.items()
        )

    wait_for(routed, timeout=60, what="both Envoys to route to every sample replica")


def down(workdir: Path, *, announce: Callable[[str], None] = print) -> int:
    """Stop every process the mesh in ``workdir`` started; returns how many were running."""
    state = load_state(workdir)
    if state is None:
        announce(f"no mesh state in {workdir}; nothing to stop")
        return 0
    running = [p for p in state.processes if _runs(p)]
    # Replicas first (they deregister cleanly), the registry last.
    for process in reversed(running):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in reversed(running):
        while _runs(process) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(process.pid, os.WNOHANG)
            time.sleep(0.05)
        if _runs(process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            killed = time.monotonic() + 5
            while _runs(process) and time.monotonic() < killed:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(process.pid, os.WNOHANG)
                time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, 0)
    _state_path(workdir).unlink(missing_ok=True)
    announce(f"stopped {len(running)} processes")
    return len(running)


def status(workdir: Path) -> list[tuple[str, int, bool]]:
    state = load_state(workdir)
    if state is None:
        return []
    return [(p.name, p.pid, _runs(p)) for p in state.processes]


def guide(cfg: MeshConfig, state: MeshState) -> str:
    west, east = (cfg.envoy_port + e.offset for e in ENVOYS)
    admin = f"127.0.0.1:{cfg.admin_port}"
    reg = state.registry_url
    env = "".join(f"{k}={v} " for k, v in state.env.items())
    return f"""
routeplane mesh is up: registry {reg}
  Envoy us-west 127.0.0.1:{west}   Envoy us-east 127.0.0.1:{east}   control plane admin {admin}

Traffic:
  curl -H 'Host: echo.local' http://127.0.0.1:{west}/      # names the replica that answered
  curl -H 'Host: echo.local' http://127.0.0.1:{east}/
  WebSocket echo at Host ws.local, gRPC at authority tokens.local (methods
  /routeplane.sample.Echo/Unary and /Stream, raw bytes; see control_plane/dev/samples/) on both

Proxyless gRPC (no Envoy on the path: gRPC's own xDS client picks the replica):
  .venv/bin/routeplane samples grpc-client --target xds:///tokens.local \\
    --xds 127.0.0.1:{cfg.xds_port} --region us-west --calls 3 --header x-session-id=s1

Look:
  .venv/bin/routeplane proxies                 # every Envoy and gRPC client, per type SYNCED / ...
  .venv/bin/routeplane snapshot show --node edge-us-west-1
  .venv/bin/routeplane snapshot history
  curl http://{admin}/metrics | grep routeplane_convergence
  {env}.venv/bin/routeplane replicas list --registry {reg}

Scale (echo has autoscaling: 1 request in flight per replica, back down after 10 s of quiet;
the sample autoscaler starts us-west replicas echo-auto-PORT on what routeplane recommends):
  .venv/bin/routeplane load --watch            # in flight, requests/s, desired replicas
  for i in $(seq 6); do curl -s -o /dev/null -H 'Host: echo.local' \
    'http://127.0.0.1:{west}/slow?ms=20000' & done
  curl -H 'Host: echo.local' http://127.0.0.1:{west}/   # an echo-auto-* replica answers too

Cold start (gpu has no replica until asked; cold_start: hold, so Envoy holds the request while
the sample autoscaler starts gpu-auto-PORT, and the replica goes again after 10 s of quiet):
  curl -H 'Host: gpu.local' http://127.0.0.1:{west}/    # answered by gpu-auto-*, ~1 s later
  .venv/bin/routeplane load --server gpu                # COLD STARTS: requests that waited

Break things:
  {env}.venv/bin/routeplane replicas drain REPLICA_ID --registry {reg}
  kill -9 $(pgrep -f 'name echo-us-west-1')     # lease ({LEASE_SECONDS:g}s) runs out, traffic moves
  drain both us-west echo replicas and watch us-west traffic fail over to us-east

Logs: {cfg.workdir / "logs"}/   State: {_state_path(cfg.workdir)}
Stop: Ctrl-C (or `routeplane mesh down` after --detach)
"""


def run_foreground(config: MeshConfig) -> None:
    up(config)
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stopping:
            signal.sigtimedwait([signal.SIGTERM, signal.SIGINT], 0.5)
    finally:
        down(config.workdir)

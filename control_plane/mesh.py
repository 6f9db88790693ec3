"""``routeplane mesh up``: the local demo mesh on loopback, nothing needed but Python.

Starts the control plane on an embedded SQLite registry, one sample HTTP echo replica and one
Envoy configured by ``routeplane bootstrap``; registers the server and replica; prints a guide;
stops every process it started (by PID) on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from control_plane.registry import open_registry


class MeshError(Exception):
    pass


@dataclass(slots=True, kw_only=True)
class MeshConfig:
    workdir: Path
    xds_port: int = 18000
    admin_port: int = 18001
    envoy_port: int = 10000
    envoy_admin_port: int = 9901
    echo_port: int = 8081


@dataclass(slots=True)
class Mesh:
    config: MeshConfig
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def registry_url(self) -> str:
        return f"sqlite://{self.config.workdir.resolve() / 'registry.db'}"

    def start(self, name: str, argv: list[str]) -> None:
        log_path = self.config.workdir / "logs" / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.processes.append((name, process))

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 10
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def port_free(port: int) -> bool:
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


def up(config: MeshConfig, *, announce: Callable[[str], None] = print) -> Mesh:
    cfg = config
    ports = {
        "--xds-port": cfg.xds_port,
        "--admin-port": cfg.admin_port,
        "--envoy-port": cfg.envoy_port,
        "--envoy-admin-port": cfg.envoy_admin_port,
        "--echo-port": cfg.echo_port,
    }
    for flag, port in ports.items():
        if not port_free(port):
            raise MeshError(f"port {port} ({flag}) is already in use on 127.0.0.1")
    (cfg.workdir / "logs").mkdir(parents=True, exist_ok=True)
    for stale in cfg.workdir.glob("registry.db*"):
        stale.unlink()
    mesh = Mesh(cfg)
    bindir = Path(sys.executable).parent
    routeplane = str(bindir / "routeplane")
    try:
        registry = open_registry(mesh.registry_url)
        registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
        mesh.start(
            "control-plane",
            [
                routeplane,
                "serve",
                "--registry",
                mesh.registry_url,
                "--xds-listen",
                f"127.0.0.1:{cfg.xds_port}",
                "--admin-listen",
                f"127.0.0.1:{cfg.admin_port}",
            ],
        )
        mesh.start(
            "echo-us-west-1",
            [
                routeplane,
                "samples",
                "http-echo",
                "--name",
                "echo-us-west-1",
                "--listen",
                f"127.0.0.1:{cfg.echo_port}",
            ],
        )
        bootstrap = subprocess.run(
            [
                routeplane,
                "bootstrap",
                "--node-id",
                "edge-us-west-1",
                "--cluster",
                "edge",
                "--region",
                "us-west",
                "--xds",
                f"127.0.0.1:{cfg.xds_port}",
                "--listen",
                f"127.0.0.1:{cfg.envoy_port}",
                "--admin",
                f"127.0.0.1:{cfg.envoy_admin_port}",
            ],
            check=True,
            capture_output=True,
        ).stdout
        bootstrap_path = cfg.workdir / "edge-us-west-1.yaml"
        bootstrap_path.write_bytes(bootstrap)
        mesh.start(
            "envoy-us-west-1",
            [
                str(bindir / "envoy"),
                "-c",
                str(bootstrap_path),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
        )
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{cfg.echo_port}/")[0] == 200,
            timeout=20,
            what="the echo replica",
        )
        replica = registry.register_replica(
            server="echo", address=f"127.0.0.1:{cfg.echo_port}", region="us-west"
        )
        registry.close()
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{cfg.envoy_port}/", host="echo.local")[0] == 200,
            timeout=30,
            what="Envoy to route echo.local",
        )
    except BaseException:
        mesh.stop()
        raise
    announce(guide(mesh, replica_id=replica.id))
    return mesh


def guide(mesh: Mesh, *, replica_id: str) -> str:
    cfg = mesh.config
    reg = mesh.registry_url
    return f"""
routeplane local mesh is up (registry: {reg})

  curl -H 'Host: echo.local' http://127.0.0.1:{cfg.envoy_port}/     # answered by echo-us-west-1

Try next:
  .venv/bin/routeplane replicas list --registry {reg}
  .venv/bin/routeplane replicas drain {replica_id} --registry {reg}       # then curl: 503
  .venv/bin/routeplane replicas ready {replica_id} --registry {reg}       # back to 200
  curl http://127.0.0.1:{cfg.envoy_admin_port}/clusters                 # what Envoy has
  curl http://127.0.0.1:{cfg.admin_port}/readyz                    # control plane health

Logs: {cfg.workdir / "logs"}/   Ctrl-C stops everything this started.
"""


def run_foreground(config: MeshConfig) -> None:
    mesh = up(config)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stopping:
            for name, process in mesh.processes:
                if process.poll() is not None:
                    print(f"{name} exited with code {process.returncode}; stopping the mesh")
                    stopping = True
            with contextlib.suppress(InterruptedError):
                signal.sigtimedwait([signal.SIGTERM, signal.SIGINT], 0.5)
    finally:
        mesh.stop()
        print("mesh stopped")

"""docker-compose.yml on a real Docker engine: build, up, traffic, the CLI through `exec`, a
drain, a held cold start answered by an autoscaled replica, and down.

The engine is the one that answers, else a ``dockerd`` this module starts and stops
(``tests/engine.py``). The three base images cannot be pulled here: where the engine has no
image by their names, **stand-ins** are built under those names from Debian packages
(debootstrap) and this machine's Envoy and emulator binaries, and cached in the engine between
runs. What ran is printed (``-s`` shows it): real images or stand-ins, and the timings.

The mesh runs as its own Compose project, on host ports of its own (the file's port variables,
set from free ports), so it never meets a ``make run`` mesh or another test's ports. Every
target is the host's loopback (the ports Compose publishes there) or a container of this project.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.dev.compose import host_ports
from control_plane.dev.mesh import ROOT, MeshConfig, topology
from harness.processes import http_get
from harness.waiting import free_port, wait_until
from tests.engine import Engine, EngineUnavailable, standins

COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
BUILT_IMAGE = next(s["image"] for s in SERVICES.values() if s.get("build"))


@dataclass
class Mesh:
    engine: Engine
    project: str
    ports: dict[str, int]  # the file's port variables -> this run's host ports
    timings: dict[str, float] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**self.engine.env, **{k: str(v) for k, v in self.ports.items()}}

    def compose(self, *args: str, timeout: float = 600) -> Any:
        import subprocess

        argv = [*self.engine.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return subprocess.run(
            argv, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def routeplane(self, *argv: str) -> str:
        """The CLI inside the control plane's container, as the README's Compose "Look" does."""
        done = self.compose("exec", "-T", "control-plane", "routeplane", *argv, timeout=60)
        assert done.returncode == 0, f"routeplane {' '.join(argv)}: {done.stdout}{done.stderr}"
        return str(done.stdout)

    def get(self, envoy: str, host: str, path: str = "/", timeout: float = 5) -> tuple[int, str]:
        port = self.ports[f"ROUTEPLANE_{envoy.upper().replace('-', '_')}_PORT"]
        try:
            return http_get(f"http://127.0.0.1:{port}{path}", host=host, timeout=timeout)
        except OSError as exc:
            return 0, str(exc)


PROJECT_PREFIX = "routeplanetest"


def _remove_stale_projects(engine: Engine) -> None:
    """On the engine this module started (nobody else uses it), what an earlier run that was
    killed left: its containers and its network, which holds the file's fixed subnet."""
    label = "label=com.docker.compose.project"
    listed = engine.docker(
        "ps", "-a", "--filter", label, "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}'
    )
    containers = [
        line.split()[0]
        for line in listed.stdout.splitlines()
        if line.split()[1:2] and line.split()[1].startswith(PROJECT_PREFIX)
    ]
    if containers:
        engine.docker("rm", "-f", *containers)
    listed = engine.docker("network", "ls", "--filter", label, "--format", "{{.Name}}")
    stale = [n for n in listed.stdout.split() if n.startswith(PROJECT_PREFIX)]
    if stale:
        engine.docker("network", "rm", *stale)


def _fail_or_skip(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI runs docker-compose.yml on a real engine", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("engine")
    try:
        engine = Engine.start(workdir)
    except EngineUnavailable as exc:
        _fail_or_skip(f"no Docker engine: {exc}")
    cfg = MeshConfig(workdir=Path(".mesh"))
    ports = {variable: free_port() for variable in host_ports(cfg, topology(cfg))}
    mesh = Mesh(engine=engine, project=f"{PROJECT_PREFIX}{os.getpid()}", ports=ports)
    if engine.started is not None:
        _remove_stale_projects(engine)
    try:
        began = time.monotonic()
        try:
            images = standins(engine, workdir)
        except EngineUnavailable as exc:
            _fail_or_skip(f"no base images: {exc}")
        mesh.timings["base images"] = time.monotonic() - began
        print(f"\nbase images: {images}")

        began = time.monotonic()
        built = mesh.compose("build", timeout=900)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        mesh.timings["build"] = time.monotonic() - began

        began = time.monotonic()
        up = mesh.compose("up", "-d", timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        mesh.timings["up"] = time.monotonic() - began
        wait_until(
            lambda: all(
                mesh.get(envoy, "echo.local")[0] == 200
                for envoy in ("envoy-us-west", "envoy-us-east")
            ),
            timeout=180,
            interval=0.2,
            what="a first 200 through both Envoys",
        )
        mesh.timings["first 200 after up"] = time.monotonic() - began
        yield mesh
    finally:
        # whatever a test left: the project's containers and network go; the engine stops if
        # this module started it
        logs = mesh.compose("logs", "--no-color", "--tail", "40", timeout=120)
        (workdir / "compose.log").write_text(str(logs.stdout))
        mesh.compose("down", "--remove-orphans", "--timeout", "10", timeout=300)
        engine.stop()
        print(f"compose timings: { {k: round(v, 1) for k, v in mesh.timings.items()} }")


def test_traffic_goes_through_both_envoys_to_replicas_of_their_region(mesh: Mesh) -> None:
    west = {mesh.get("envoy-us-west", "echo.local")[1].strip() for _ in range(10)}
    east = {mesh.get("envoy-us-east", "echo.local")[1].strip() for _ in range(10)}
    assert west, west
    # us-west's replicas (and any the sample autoscaler started there)
    assert all(name.startswith(("echo-us-west-", "echo-auto-")) for name in west), west
    assert east == {"echo-us-east-1"}
    # the health checks Compose waits on pass: the Envoys started after a ready control plane
    # (the Envoys route before their own check has passed once: waited for, not asserted at once)
    for service in ("control-plane", "envoy-us-west", "envoy-us-east"):
        container = mesh.compose("ps", "-q", service).stdout.strip()

        def health(container: str = container) -> bool:
            done = mesh.engine.docker("inspect", "--format", "{{.State.Health.Status}}", container)
            return done.stdout.strip() == "healthy"

        wait_until(health, timeout=60, interval=0.5, what=f"{service} healthy")


def test_the_cli_in_the_control_plane_container_sees_both_envoys_synced(mesh: Mesh) -> None:
    def synced() -> bool:
        nodes = json.loads(mesh.routeplane("proxies", "--json"))
        by_id = {node["node_id"]: node for node in nodes}
        return set(by_id) >= {"edge-us-west-1", "edge-us-east-1"} and all(
            kind["state"] == "SYNCED"
            for node_id in ("edge-us-west-1", "edge-us-east-1")
            for kind in by_id[node_id]["types"].values()
        )

    wait_until(synced, timeout=30, interval=0.5, what="both Envoys SYNCED in `proxies --json`")
    # the registry commands need no --registry in the container (ROUTEPLANE_REGISTRY)
    replicas = json.loads(mesh.routeplane("replicas", "list", "echo", "--json"))
    assert {r["region"] for r in replicas} >= {"us-west", "us-east"}


def test_the_control_plane_image_carries_no_envoy(mesh: Mesh) -> None:
    done = mesh.engine.docker(
        "run", "--rm", "--entrypoint", "sh", BUILT_IMAGE, "-c", "command -v envoy || echo none"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"
    size = mesh.engine.docker("image", "inspect", "--format", "{{.Size}}", BUILT_IMAGE)
    print(f"\n{BUILT_IMAGE}: {int(size.stdout) / 2**20:.0f} MiB")


def test_a_held_gpu_request_is_answered_by_a_replica_the_autoscaler_starts(mesh: Mesh) -> None:
    assert json.loads(mesh.routeplane("replicas", "list", "gpu", "--json")) == []
    began = time.monotonic()
    status, text = mesh.get("envoy-us-west", "gpu.local", timeout=60)
    mesh.timings["held gpu request"] = time.monotonic() - began
    assert (status, text.strip()[:9]) == (200, "gpu-auto-"), (status, text)
    [replica] = json.loads(mesh.routeplane("replicas", "list", "gpu", "--json"))
    # registered by the autoscaler's container, at its own address
    autoscaler = SERVICES["autoscaler-gpu"]["networks"]["mesh"]["ipv4_address"]
    assert replica["address"].startswith(f"{autoscaler}:")


def test_a_crashed_control_plane_comes_back_and_the_envoys_resync(mesh: Mesh) -> None:
    container = mesh.compose("ps", "-q", "control-plane").stdout.strip()

    def restarts() -> int:
        done = mesh.engine.docker("inspect", "--format", "{{.RestartCount}}", container)
        return int(done.stdout.strip() or -1)

    before = restarts()
    # SIGKILL every process of the container but tini (PID 1 of its namespace cannot be
    # killed from inside): `serve` dies as in a crash, and tini exits with it
    mesh.compose("exec", "-T", "control-plane", "sh", "-c", "kill -9 -1", timeout=60)
    wait_until(lambda: restarts() > before, timeout=60, interval=0.2, what="a restart")
    # Envoy kept its last config meanwhile, and gets the restarted control plane's
    wait_until(
        lambda: mesh.get("envoy-us-east", "echo.local") == (200, "echo-us-east-1\n"),
        timeout=30,
        interval=0.2,
        what="traffic through envoy-us-east after the restart",
    )

    def resynced() -> bool:
        done = mesh.compose("exec", "-T", "control-plane", "routeplane", "proxies", "--json")
        if done.returncode != 0:
            return False  # not listening yet
        nodes = {node["node_id"]: node for node in json.loads(done.stdout)}
        return {"edge-us-west-1", "edge-us-east-1"} <= set(nodes) and all(
            kind["state"] == "SYNCED"
            for node in ("edge-us-west-1", "edge-us-east-1")
            for kind in nodes[node]["types"].values()
        )

    wait_until(resynced, timeout=60, interval=0.5, what="both Envoys SYNCED with the new process")


def test_a_drain_moves_traffic_and_down_leaves_nothing(mesh: Mesh) -> None:
    replicas = json.loads(mesh.routeplane("replicas", "list", "echo", "--json"))
    [east] = [r["id"] for r in replicas if r["region"] == "us-east"]
    mesh.routeplane("replicas", "drain", east)
    # us-east's only echo replica takes no new request: its Envoy fails over to us-west's (the
    # mesh's own, and any the sample autoscaler started: it registers them in us-west)
    west = ("echo-us-west-", "echo-auto-")
    wait_until(
        lambda: mesh.get("envoy-us-east", "echo.local")[1].startswith(west),
        timeout=30,
        interval=0.1,
        what="envoy-us-east failing over to us-west after the drain",
    )
    after = [mesh.get("envoy-us-east", "echo.local") for _ in range(10)]
    assert all(s == 200 and t.startswith(west) for s, t in after), after

    began = time.monotonic()
    down = mesh.compose("down", "--remove-orphans", "--timeout", "10", timeout=300)
    mesh.timings["down"] = time.monotonic() - began
    assert down.returncode == 0, down.stderr
    label = f"label=com.docker.compose.project={mesh.project}"
    assert mesh.engine.docker("ps", "-aq", "--filter", label).stdout.strip() == ""
    assert mesh.engine.docker("network", "ls", "-q", "--filter", label).stdout.strip() == ""

"""`routeplane mesh up --detach` as a user runs it: traffic of every kind through both Envoys,
a killed replica leaves within its lease, a drained region fails over, `mesh down` leaves no
process behind."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from websockets.sync.client import connect as ws_connect

from control_plane.dev.mesh import (
    AUTOSCALER_OFFSETS,
    ENVOYS,
    LEASE_SECONDS,
    REPLICAS,
    REPORTS_DIR,
    load_state,
)
from control_plane.dev.samples.grpc_echo import STREAM, UNARY
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, http_get
from harness.waiting import wait_until
from tests.meshes import mesh_base

pytestmark = pytest.mark.envoy


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    workdir = tmp_path / "mesh"
    last = ""
    for _ in range(5):  # pick port ranges until one is free
        base = mesh_base()
        ports = {
            "xds": base,
            "admin": base + 1,
            "envoy": base + 10,
            "envoy_admin": base + 20,
            "replica": base + 30,
            "emulator": base + 50,
        }
        result = subprocess.run(
            [
                ROUTEPLANE,
                "mesh",
                "up",
                "--detach",
                "--workdir",
                str(workdir),
                "--xds-port",
                str(ports["xds"]),
                "--admin-port",
                str(ports["admin"]),
                "--envoy-port",
                str(ports["envoy"]),
                "--envoy-admin-port",
                str(ports["envoy_admin"]),
                "--replica-port",
                str(ports["replica"]),
                "--emulator-port",
                str(ports["emulator"]),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode == 0:
            break
        last = result.stderr
        assert "already in use" in last, last
    else:
        pytest.fail(f"no free port range: {last}")
    assert "routeplane mesh is up" in result.stdout
    (tmp_path / "guide.txt").write_text(result.stdout)
    try:
        yield workdir, ports
    finally:
        # Shown by pytest only when the test failed: what each mesh process last said.
        for log in sorted((workdir / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- {log.name} (last {len(tail)} lines)", *tail, sep="\n")
        subprocess.run(
            [ROUTEPLANE, "mesh", "down", "--workdir", str(workdir)],
            capture_output=True,
            timeout=60,
            check=False,
        )


def answer(port: int, host: str) -> str:
    status, text = http_get(f"http://127.0.0.1:{port}/", host=host)
    return text.strip() if status == 200 else f"status {status}"


def test_the_mesh_routes_every_protocol_survives_failures_and_stops_cleanly(
    mesh: tuple[Path, dict[str, int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    workdir, ports = mesh
    west, east = ports["envoy"], ports["envoy"] + 1
    assert answer(west, "echo.local").startswith("echo-us-west-")
    assert answer(east, "echo.local") == "echo-us-east-1"
    for port, region in ((west, "us-west"), (east, "us-east")):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        with ws_connect("ws://ws.local/", sock=sock, open_timeout=5) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == f"ws-{region}-1:hi"
        options = [("grpc.default_authority", "tokens.local")]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            assert channel.unary_unary(UNARY)(b"x", timeout=5) == f"tokens-{region}-1:x".encode()
            tokens = list(channel.unary_stream(STREAM)(b"3:10", timeout=5))
            assert tokens == [f"tokens-{region}-1:{i}".encode() for i in range(3)]

    # The guide's proxyless call works as typed (from the repository root; two lines).
    lines = (tmp_path / "guide.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "grpc-client" in line)
    assert lines[start].endswith("\\")
    typed = lines[start][:-1] + lines[start + 1]
    argv = shlex.split(typed)
    assert argv[0] == ".venv/bin/routeplane"
    proxyless = subprocess.run(
        [ROUTEPLANE, *argv[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert proxyless.returncode == 0, proxyless.stdout + proxyless.stderr[-2000:]
    assert proxyless.stdout.splitlines() == ["tokens-us-west-1:hello"] * 3

    # The guide's "Look busy" lines, typed as given: echo-us-west-1 reports 0.9 (ORCA, from its
    # report file), Envoy carries it in its load reports, and the load view shows it.
    start = next(i for i, line in enumerate(lines) if "application_utilization=0.9" in line)
    assert lines[start].endswith("\\")
    busy = subprocess.run(
        ["bash", "-c", lines[start][:-1] + lines[start + 1]], capture_output=True, timeout=10
    )
    assert busy.returncode == 0, busy.stderr

    def west_utilization() -> float | None:
        answer(west, "echo.local")  # traffic, so that the replicas' reports reach Envoy
        done = subprocess.run(
            [ROUTEPLANE, "load", "--admin", f"127.0.0.1:{ports['admin']}", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        row = next((r for r in rows if (r["server"], r["region"]) == ("echo", "us-west")), {})
        value = row.get("utilization")
        return value if value is not None and abs(value - 0.9) < 0.01 else None

    wait_until(west_utilization, timeout=30, interval=0.2, what="echo us-west at 0.9")
    (workdir / REPORTS_DIR / "echo-us-west-1").unlink()  # it reports nothing again

    state = load_state(workdir)
    assert state is not None
    pids = {p.name: p.pid for p in state.processes}
    # A replica that dies without deregistering leaves when its lease runs out: its row stays
    # until then, and `serve`'s own clean-up loop deletes it after (lease + one sweep).
    for key, value in state.env.items():
        monkeypatch.setenv(key, value)
    registry = open_registry(state.registry_url)

    # The serverless loop: load through Envoy -> load reports -> recommendation (WatchLoad) ->
    # the sample autoscaler starts echo replicas -> they take traffic -> quiet -> they go.
    auto_ports = {ports["replica"] + offset for offset in AUTOSCALER_OFFSETS}

    def autoscaled() -> list[str]:
        return [r.id for r in registry.list_replicas("echo") if r.port in auto_ports]

    held = [
        threading.Thread(
            target=http_get,
            args=(f"http://127.0.0.1:{west}/slow?ms=12000",),
            kwargs={"host": "echo.local", "timeout": 30},
        )
        for _ in range(6)
    ]
    for thread in held:
        thread.start()
    wait_until(lambda: len(autoscaled()) == 3, timeout=20, what="3 replicas started for the load")
    wait_until(
        lambda: any(answer(west, "echo.local").startswith("echo-auto-") for _ in range(10)),
        timeout=10,
        what="an autoscaled replica answering",
    )
    for thread in held:
        thread.join(timeout=30)
    wait_until(
        # Each is drained first (stopped once the load rows show it empty): 60 s on a busy machine.
        lambda: autoscaled() == [],
        timeout=60,
        interval=0.2,
        what="autoscaled replicas gone",
    )

    # Scale from zero and back: gpu has no replica of its own (cold_start: hold, min_replicas:
    # 0). A request is held by Envoy while the sample autoscaler, told of the cold start,
    # starts one; quiet, it goes back to none; the next request brings one back.
    def gpu_answer() -> str:
        status, text = http_get(f"http://127.0.0.1:{west}/", host="gpu.local", timeout=40)
        return text.strip() if status == 200 else f"error:{status}"

    assert registry.list_replicas("gpu") == []
    assert gpu_answer().startswith("gpu-auto-")
    wait_until(
        lambda: registry.list_replicas("gpu") == [], timeout=60, interval=0.2, what="gpu at zero"
    )
    # A request racing the route's switch back to hold meets the reject answer; clients retry.
    answers: list[str] = []
    try:
        wait_until(
            lambda: answers.append(gpu_answer()) or answers[-1].startswith("gpu-auto-"),
            timeout=40,
            what="gpu back from 0",
        )
    except AssertionError as exc:
        load = subprocess.run(
            [ROUTEPLANE, "load", "--admin", f"127.0.0.1:{ports['admin']}", "--json"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        raise AssertionError(f"{exc}; answers {answers}; load {load}") from None

    dying_port = ports["replica"] + next(r.offset for r in REPLICAS if r.name == "echo-us-west-1")
    [dying] = [r for r in registry.list_replicas("echo") if r.port == dying_port]
    os.kill(pids["echo-us-west-1"], signal.SIGKILL)
    killed_at = time.time()
    assert dying.lease_expires_at is not None
    assert any(r.id == dying.id for r in registry.list_replicas("echo"))  # still leased
    wait_until(
        lambda: all(r.id != dying.id for r in registry.list_replicas("echo")),
        timeout=LEASE_SECONDS + 10,
        interval=0.1,
        what="serve's clean-up to delete the expired replica",
    )
    removed_at = time.time()
    registry.close()
    # Not before its lease ended (the last heartbeat may have come just before the kill).
    assert removed_at >= min(dying.lease_expires_at, killed_at + LEASE_SECONDS) - 0.5
    wait_until(
        lambda: "echo-us-west-1" not in Counter(answer(west, "echo.local") for _ in range(20)),
        timeout=10,
        interval=0.2,
        what="the expired replica out of Envoy",
    )
    # While it was dying, outlier detection ejected it and part of us-west's traffic spilled to
    # us-east; once it is gone, us-west serves everything again.
    wait_until(
        lambda: Counter(answer(west, "echo.local") for _ in range(20)) == {"echo-us-west-2": 20},
        timeout=15,
        interval=0.2,
        what="us-west traffic back on the surviving replica",
    )

    # Draining the region's last echo replica moves us-west traffic to us-east.
    registry = open_registry(state.registry_url)
    [last_west] = [r for r in registry.list_replicas("echo") if r.region == "us-west"]
    registry.set_replica_state(last_west.id, "DRAINING")
    registry.close()
    wait_until(lambda: answer(west, "echo.local") == "echo-us-east-1", what="failover")

    status = subprocess.run(
        [ROUTEPLANE, "proxies", "--json", "--admin", f"127.0.0.1:{ports['admin']}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert {p["node_id"] for p in json.loads(status.stdout)} == {
        f"edge-{e.region}-1" for e in ENVOYS
    }

    down = subprocess.run(
        [ROUTEPLANE, "mesh", "down", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "stopped" in down.stdout
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"{name} ({pid}) still runs"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True

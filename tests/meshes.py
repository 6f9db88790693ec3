"""The local mesh (`routeplane mesh up`) as tests start it: on a free range of loopback ports,
in the foreground in a process group of its own (as a terminal runs `make run`), or detached.

Every process is found through the mesh's own state file and stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from control_plane.dev.mesh import AUTOSCALERS, ENVOYS, REPLICAS, ROLLOUT_OFFSETS, load_state
from harness.processes import ROUTEPLANE
from harness.waiting import wait_until

# Offsets from a base port; each range leaves room for what `mesh up` adds to it.
PORT_OFFSETS = {"xds": 0, "admin": 1, "envoy": 10, "envoy_admin": 20, "replica": 30, "emulator": 50}


@dataclass(frozen=True, slots=True)
class MeshPorts:
    base: int

    def port(self, name: str) -> int:
        return self.base + PORT_OFFSETS[name]

    @property
    def west(self) -> int:
        return self.port("envoy")

    def args(self) -> list[str]:
        return [
            f"--{name.replace('_', '-')}-port={self.port(name)}"
            for name in ("xds", "admin", "envoy", "envoy_admin", "replica", "emulator")
        ]

    def all(self) -> list[int]:
        # Every replica offset the mesh uses: its replicas, the autoscalers', the guide's.
        replicas = 1 + max(
            *(r.offset for r in REPLICAS),
            *(o for plan in AUTOSCALERS for o in plan.offsets),
            *ROLLOUT_OFFSETS.values(),
        )
        return [
            self.port("xds"),
            self.port("admin"),
            self.port("emulator"),
            *(self.port("envoy") + e.offset for e in ENVOYS),
            *(self.port("envoy_admin") + e.offset for e in ENVOYS),
            *range(self.port("replica"), self.port("replica") + replicas),
        ]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """Where the kernel's ephemeral ports begin (outgoing connections and port-0 binds of every
    process on the machine take ports from there on)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def mesh_base() -> int:
    """A random base port for a mesh's range, below the ephemeral ports: a range there is never
    taken by another process's connection between the check and `mesh up` (a CI run once lost a
    replica's port so), only by another test's mesh, which callers retry."""
    return random.randrange(10_000, max(10_100, min(_ephemeral_low(), 60_000) - 100), 100)


def free_mesh_ports() -> MeshPorts:
    """A base port whose whole range is free now (another test may still take one later:
    callers retry on `already in use`)."""
    for _ in range(50):
        ports = MeshPorts(mesh_base())
        if all(_bindable(p) for p in ports.all()):
            return ports
    raise AssertionError("no free range of mesh ports")


@dataclass
class ForegroundMesh:
    """`routeplane mesh up` in the foreground, leader of its own process group."""

    process: subprocess.Popen[bytes]
    output: Path
    workdir: Path
    ports: MeshPorts

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_up(self, timeout: float = 120.0) -> dict[str, int]:
        """Wait for the guide; return the PIDs of everything it started, by name."""
        wait_until(
            lambda: "routeplane mesh is up" in self.text() or self.process.poll() is not None,
            timeout=timeout,
            interval=0.1,
            what="mesh up to print its guide",
        )
        assert self.process.poll() is None, f"mesh up exited:\n{self.text()}"
        state = load_state(self.workdir)
        assert state is not None
        return {p.name: p.pid for p in state.processes}

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """Clean-up for a test that failed half-way: the ordered stop, then its own PID."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        subprocess.run(
            [ROUTEPLANE, "mesh", "down", "--workdir", str(self.workdir)],
            capture_output=True,
            timeout=90,
            check=False,
        )


def start_foreground(
    workdir: Path, ports: MeshPorts, *, registry: str = "sqlite", name: str = "up"
) -> ForegroundMesh:
    output = workdir.parent / f"mesh-{name}.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                ROUTEPLANE,
                "mesh",
                "up",
                f"--workdir={workdir}",
                f"--registry={registry}",
                *ports.args(),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0,  # its own group, as a shell job: the group gets the signal
        )
    return ForegroundMesh(process=process, output=output, workdir=workdir, ports=ports)


@contextlib.contextmanager
def foreground_mesh(workdir: Path, *, registry: str = "sqlite") -> Iterator[ForegroundMesh]:
    """A foreground mesh that is up, on ports that were free; stopped at the end whatever
    happened."""
    for attempt in range(5):
        ports = free_mesh_ports()
        mesh = start_foreground(workdir, ports, registry=registry, name=f"up-{attempt}")
        try:
            mesh.wait_up()
        except AssertionError:
            mesh.stop()
            if "already in use" in mesh.text():
                continue
            raise
        try:
            yield mesh
        finally:
            mesh.stop()
        return
    raise AssertionError("no free range of mesh ports after 5 tries")


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for its parent counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_all_gone(pids: dict[str, int], *, timeout: float) -> dict[str, float]:
    """Wait until every PID has exited; return when each was first seen gone (monotonic).
    One time per sweep: PIDs seen gone in the same sweep tie, so these times show no order
    among them (judge order from the processes' logs)."""
    seen: dict[str, float] = {}

    def all_gone() -> bool:
        now = time.monotonic()
        for name, pid in pids.items():
            if name not in seen and gone(pid):
                seen[name] = now
        return len(seen) == len(pids)

    try:
        wait_until(all_gone, timeout=timeout, what="every process gone")
    except AssertionError:
        running = sorted(set(pids) - set(seen))
        raise AssertionError(f"still running after {timeout}s: {running}") from None
    return seen

"""Real processes for integration tests and benchmarks: the control plane and Envoy.

Each is started on free loopback ports and stopped by PID; logs go to files so a failure
can show them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.waiting import free_port, wait_until

BIN = Path(sys.executable).parent
ROUTEPLANE = str(BIN / "routeplane")
ENVOY = str(BIN / "envoy") if (BIN / "envoy").exists() else (shutil.which("envoy") or "envoy")


def http_get(url: str, *, host: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def metric_sum(admin: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples on ``admin``'s /metrics whose labels include ``labels``:
    under ``serve --workers`` every series carries a ``worker`` label, summed over here."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(http_get(f"http://{admin}/metrics")[1]):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def routeplane(*args: str, registry: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROUTEPLANE, *args, "--registry", registry],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


@dataclass
class Process:
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[Any] | None = None  # bytes, or str for GrpcClient's lines

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class ControlPlane(Process):
    registry: str = ""
    xds: str = ""
    admin: str = ""

    @classmethod
    def create(
        cls, workdir: Path, *, registry: str | None = None, extra: list[str] | None = None
    ) -> ControlPlane:
        registry = registry or f"sqlite://{workdir / 'registry.db'}"
        xds, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        argv = [
            ROUTEPLANE,
            "serve",
            "--registry",
            registry,
            "--xds-listen",
            xds,
            "--admin-listen",
            admin,
            "--log-json",
            *(extra or []),
        ]
        return cls(
            argv=argv,
            log_path=workdir / f"control-plane-{xds.split(':')[1]}.log",
            registry=registry,
            xds=xds,
            admin=admin,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: (
                (self.alive() and http_get(f"http://{self.admin}/readyz")[0] == 200)
                or not self.alive()
            ),
            timeout=timeout,
            what="control plane /readyz",
        )
        assert self.alive(), f"control plane exited:\n{self.log()}"


@dataclass
class Envoy(Process):
    listen: str = ""
    admin: str = ""
    node_id: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        node_id: str,
        region: str,
        xds: list[str],
        ads: str = "delta",
        cluster: str = "edge",
    ) -> Envoy:
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        xds_flags = [flag for address in xds for flag in ("--xds", address)]
        bootstrap = subprocess.run(
            [
                ROUTEPLANE,
                "bootstrap",
                "--node-id",
                node_id,
                "--cluster",
                cluster,
                "--region",
                region,
                *xds_flags,
                "--listen",
                listen,
                "--admin",
                admin,
                "--ads",
                ads,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        path = workdir / f"{node_id}.yaml"
        path.write_text(bootstrap)
        argv = [
            ENVOY,
            "-c",
            str(path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
            "--drain-time-s",
            "1",
        ]
        return cls(
            argv=argv,
            log_path=workdir / f"{node_id}.log",
            listen=listen,
            admin=admin,
            node_id=node_id,
        )

    def wait_live(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: http_get(f"http://{self.admin}/ready")[0] == 200 or not self.alive(),
            timeout=timeout,
            what=f"envoy {self.node_id} /ready",
        )
        assert self.alive(), f"envoy exited:\n{self.log()}"

    def get(self, path: str = "/", *, host: str, timeout: float = 5.0) -> tuple[int, str]:
        return http_get(f"http://{self.listen}{path}", host=host, timeout=timeout)

    def admin_get(self, path: str) -> str:
        return http_get(f"http://{self.admin}{path}")[1]

    def stat(self, name: str) -> int:
        text = self.admin_get(f"/stats?filter=^{name}$")
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0


def envoy_available() -> bool:
    return os.path.exists(ENVOY) or shutil.which(ENVOY) is not None


@dataclass
class GrpcClient(Process):
    """A proxyless gRPC client (``routeplane samples grpc-client``) in its own process, since
    gRPC's xDS bootstrap is process-wide; its output lines are collected as they come."""

    lines: list[str] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        target: str,
        xds: str,
        region: str,
        node_id: str,
        zone: str = "",
        cluster: str = "apps",
        calls: int = 0,
        interval: float = 0.02,
        stream: int = 0,
        stream_interval_ms: int = 100,
        headers: tuple[str, ...] = (),
        timeout: float = 30.0,
    ) -> GrpcClient:
        argv = [
            ROUTEPLANE,
            "samples",
            "grpc-client",
            "--target",
            target,
            "--xds",
            xds,
            "--region",
            region,
            "--zone",
            zone,
            "--cluster",
            cluster,
            "--node-id",
            node_id,
            "--calls",
            str(calls),
            "--interval",
            str(interval),
            "--stream",
            str(stream),
            "--stream-interval-ms",
            str(stream_interval_ms),
            "--timeout",
            str(timeout),
            *(flag for header in headers for flag in ("--header", header)),
        ]
        return cls(argv=argv, log_path=workdir / f"{node_id}.log")

    def start(self) -> None:
        log = self.log_path.open("wb")
        process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True
        )
        self.process = process
        stdout = process.stdout
        assert stdout is not None

        def follow() -> None:
            for line in stdout:
                self.lines.append(line.rstrip("\n"))

        self._reader = threading.Thread(target=follow, daemon=True)
        self._reader.start()

    def wait(self, timeout: float = 60.0) -> int:
        """Its exit code, once it exited and every line it printed is in ``lines``."""
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def errors(self) -> list[str]:
        return [line for line in list(self.lines) if line.startswith("error")]

"""A sample autoscaler (dev tooling, not the product): follows ``WatchLoad`` and starts or stops
sample replicas so a server has the replicas routeplane recommends.

``routeplane samples autoscaler --server echo --region us-west --ports 8150-8159 --registry URL
[--admin 127.0.0.1:18001]``. It manages only the replicas it started (sample HTTP replicas on
loopback ports from ``--ports``): with ``desired`` recommended and ``others`` READY replicas it
did not start, it keeps ``max(0, desired - others)`` of its own. A replica it stops gets SIGTERM
and deregisters itself (its in-flight requests finish). This is what a platform's scheduler
does with the recommendation; routeplane itself never starts processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Autoscaler:
    server: str
    region: str
    ports: list[int]
    registry: str
    admin: str
    lease_seconds: float = 5.0
    announce: Callable[[str], None] = print
    _own: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def follow(self, updates: Iterator[Any]) -> None:
        """Act on every ``LoadResponse`` of ``updates`` until it ends."""
        try:
            for response in updates:
                self.apply(response)
        finally:
            self.stop_all()

    def apply(self, response: Any) -> None:
        rows = [r for r in response.servers if r.server == self.server and r.region == "*"]
        if not rows or rows[0].desired_replicas < 0:
            return
        desired, ready = rows[0].desired_replicas, rows[0].ready_replicas
        self._reap()
        others = max(0, ready - len(self._own))
        want = min(len(self.ports), max(0, desired - others))
        while len(self._own) < want:
            self._start()
        while len(self._own) > want:
            self._stop_newest()

    def _start(self) -> None:
        port = next(p for p in self.ports if p not in self._own)
        name = f"{self.server}-auto-{port}"
        argv = [
            sys.executable,
            "-c",
            "from control_plane.cli import main; main()",
            "samples",
            "replica",
            "--kind",
            "http",
            "--name",
            name,
            "--listen",
            f"127.0.0.1:{port}",
            "--server",
            self.server,
            "--region",
            self.region,
            "--registry",
            self.registry,
            "--lease-seconds",
            str(self.lease_seconds),
        ]
        self._own[port] = subprocess.Popen(argv, start_new_session=True)
        self.announce(f"autoscaler: started {name} ({len(self._own)} of mine)")

    def _stop_newest(self) -> None:
        port = max(self._own)
        process = self._own.pop(port)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        self.announce(f"autoscaler: stopped {self.server}-auto-{port} ({len(self._own)} of mine)")

    def _reap(self) -> None:
        for port, process in list(self._own.items()):
            if process.poll() is not None:
                del self._own[port]

    def stop_all(self) -> None:
        for process in self._own.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self._own.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        self._own.clear()


def parse_ports(text: str) -> list[int]:
    """``8150-8159`` or ``8150,8152`` -> ports (loopback only: the replicas bind 127.0.0.1)."""
    ports: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        start = int(low)
        ports.extend(range(start, int(high or start) + 1))
    if not ports or not all(0 < p < 65536 for p in ports):
        raise ValueError(f"invalid --ports {text!r}: expected e.g. 8150-8159")
    return ports

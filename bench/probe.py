"""The measured change both propagation benchmarks share: one server's replica in service
swapped for another while a keep-alive poller through Envoy watches for the first request the
new one answers. ``bench.propagation`` (routeplane) and ``bench.filesystem_baseline`` (the floor:
Envoy's own filesystem EDS) each bring only how a change is written and when its clock starts.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from bench.stats import summarize
from control_plane.dev.samples.http_echo import EchoThread
from harness.processes import http_get
from harness.waiting import wait_until

HOST = "echo.local"


class Poller:
    """GETs through Envoy on one keep-alive connection (reopened on error)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.conn: http.client.HTTPConnection | None = None

    def get(self) -> tuple[int, str]:
        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                self.conn.request("GET", "/", headers={"Host": HOST})
                response = self.conn.getresponse()
                return response.status, response.read().decode()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
        return 0, ""


def summary(samples: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99 (``None`` under 200 samples: the tables show "max of N"), max."""
    return {**summarize(samples, suffix="_ms"), "samples_ms": [round(x, 2) for x in samples]}


def watch(poller: Poller, wanted: tuple[int, str], seen: list[float]) -> None:
    """Poll until ``wanted`` is answered (10 s at most); record the wall time it first was."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if poller.get() == wanted:
            seen.append(time.time())
            return
        time.sleep(0.0005)  # a polling interval, not synchronisation


FILLER_HOST = "127.0.0.3"  # nothing listens there: DRAINING endpoints are never sent a request


def filler_addresses(count: int) -> list[str]:
    return [f"{FILLER_HOST}:{20_000 + i}" for i in range(count)]


def live_replicas() -> list[EchoThread]:
    """The two echo replicas that take turns, answering without Nagle's delay: the sample
    server writes headers and body apart, so on a connection past its first exchanges every
    response would wait ~40 ms for Envoy's delayed ACK (a fresh connection does not), and a
    replica that stays in service across tries would hold the poller that long."""
    replicas = [EchoThread(name="replica-a"), EchoThread(name="replica-b")]
    for replica in replicas:
        replica.server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    return replicas


def healthy_members(admin: str, cluster: str) -> int:
    """Envoy's own count of healthy endpoints in ``cluster`` (its admin stats); -1 unknown."""
    pattern = urllib.parse.quote(f"^cluster\\.{cluster}\\.membership_healthy$")
    status, body = http_get(f"http://{admin}/stats?filter={pattern}")
    if status != 200:
        return -1
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if name == f"cluster.{cluster}.membership_healthy":
            return int(value)
    return -1


def add_remove(
    poller: Poller,
    live: list[EchoThread],
    *,
    tries: int,
    add: Callable[[EchoThread], float],
    remove: Callable[[EchoThread], None],
    healthy: Callable[[], int],
) -> list[float]:
    """One server: the replica in service is ``live[0]``, the rest of the server DRAINING.
    Each try adds the other live replica (``add`` returns the wall-clock time of the commit or
    rename) and measures until the first request it answers (least-request picks either of
    the two healthy ones), then removes the one it joined (not measured; done when Envoy
    counts one healthy endpoint again, ``healthy``). The first try warms up and is not
    counted."""
    samples: list[float] = []
    current = 0
    for attempt in range(tries + 1):
        new = live[1 - current]
        seen: list[float] = []
        watcher = threading.Thread(
            target=watch, args=(poller, (200, f"{new.name}\n"), seen), daemon=True
        )
        watcher.start()
        committed = add(new)
        watcher.join(timeout=10)
        assert seen, f"{new.name} never answered"
        if attempt:
            samples.append((seen[0] - committed) * 1000)
        remove(live[current])
        wait_until(lambda: healthy() == 1, timeout=30, interval=0.002, what="the removal to apply")
        current = 1 - current
    return samples

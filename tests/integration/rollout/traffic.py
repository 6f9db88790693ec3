"""What the rollout tests share: steady traffic through an Envoy (every answer kept, with when
it came), a test-only upstream that fails every Nth request, Envoy's split as it changes, and
the rollout's status read with the CLI.

The failing upstream stands in for the sample replica's ``--error-percent`` (part O2 of issue
26), which this branch does not have yet: it answers its name, and 500 to every ``every``-th
request (20% for 5).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness.processes import Envoy, routeplane
from harness.waiting import wait_until

HOST = "chat.local"


class FailingUpstream:
    """An HTTP upstream on a free loopback port answering its name, and 500 to every
    ``every``-th request (counted over all its connections)."""

    def __init__(self, *, name: str, every: int) -> None:
        lock = threading.Lock()
        count = [0]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with lock:
                    count[0] += 1
                    fail = count[0] % every == 0
                body = (name + "\n").encode()
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Answer:
    at: float
    status: int
    body: str


@dataclass
class SteadyTraffic:
    """Requests through ``envoy`` at about ``rate`` per second on one kept-alive connection
    (paced, so the machine's other work is not starved), until ``stop()``. Every answer is
    kept: its time, its status (0: no answer) and who answered."""

    envoy: Envoy
    rate: float = 150.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SteadyTraffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        address, port = self.envoy.listen.rsplit(":", 1)
        connection = http.client.HTTPConnection(address, int(port), timeout=10)
        gap = 1.0 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                connection.request("GET", "/", headers={"Host": HOST})
                response = connection.getresponse()
                answer = Answer(time.monotonic(), response.status, response.read().decode().strip())
            except (OSError, http.client.HTTPException) as exc:
                answer = Answer(time.monotonic(), 0, repr(exc))
                connection.close()
                connection = http.client.HTTPConnection(address, int(port), timeout=10)
            self.answers.append(answer)
            due += gap
            pause = due - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)  # pacing the load, not waiting for a condition
            else:
                due = time.monotonic()
        connection.close()


def route_weights(envoy: Envoy, route: str = "default_chat/default") -> dict[str, int]:
    """The route's clusters and weights in Envoy's config dump ({cluster: 100} for one)."""
    dump = json.loads(envoy.admin_get("/config_dump?resource=dynamic_route_configs"))
    for config in dump.get("configs", []):
        for host in config.get("route_config", {}).get("virtual_hosts", []):
            for found in host.get("routes", []):
                if found.get("name") == route:
                    action = found.get("route", {})
                    if "cluster" in action:
                        return {action["cluster"]: 100}
                    clusters = action.get("weighted_clusters", {}).get("clusters", [])
                    return {c["name"]: int(c.get("weight", 0)) for c in clusters}
    return {}


def nonzero(weights: dict[str, int]) -> dict[str, int]:
    return {name: weight for name, weight in weights.items() if weight}


def v2_weight(weights: dict[str, int]) -> int:
    return weights.get("default_chat_rev_v2", 0)


@dataclass
class WeightLog:
    """Envoy's split as it changes: (monotonic time, weights) each time it differs, looked at
    every 20 ms in a thread of its own between ``start()`` and ``stop()``."""

    envoy: Envoy
    changes: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def look(self) -> dict[str, int]:
        weights = route_weights(self.envoy)
        if not self.changes or self.changes[-1][1] != weights:
            self.changes.append((time.monotonic(), weights))
        return weights

    def latest(self) -> dict[str, int]:
        return self.changes[-1][1] if self.changes else {}

    def start(self) -> WeightLog:
        def run() -> None:
            while not self._stop.is_set():
                self.look()
                self._stop.wait(0.02)  # the poll's period, not a wait for a condition

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def wait_answered_by(envoy: Envoy, name: str) -> None:
    """Until Envoy answers a request with ``name`` (its route and the cluster's endpoints are
    in: the route alone may name a cluster whose endpoints are still on their way)."""

    def answered() -> bool:
        status, body = envoy.get(host=HOST)
        return (status, body.strip()) == (200, name)

    wait_until(answered, timeout=30, what=f"{name} through Envoy")


def admin_rollouts(admin: str, server: str = "") -> list[Any]:
    """``GetRollouts`` on a running control plane's admin address."""
    from control_plane.admin.client import admin_pb2, call

    return list(call(admin, "GetRollouts", admin_pb2.RolloutsRequest(server=server)).rollouts)


def status(registry: str) -> dict[str, Any]:
    done = routeplane("servers", "rollout", "chat", "--status", "--json", registry=registry)
    return dict(json.loads(done.stdout))


def v2_share_by_split(
    answers: list[Answer], changes: list[tuple[float, dict[str, int]]], *, settle: float = 0.3
) -> list[tuple[int, int, float]]:
    """For each split Envoy had (after ``settle`` seconds, for connections and the poll's
    lag; as long before the next): (its v2 weight, the requests answered under it, the share
    v2 answered)."""
    out = []
    for i, (since, weights) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else float("inf")
        inside = [a for a in answers if since + settle <= a.at < until - settle]
        if inside:
            share = sum(a.body.startswith("chat-v2") for a in inside) / len(inside)
            out.append((v2_weight(weights), len(inside), share))
    return out

"""Cold starts through a real Envoy: a server with no replica, in reject and in hold mode.

reject: Envoy answers 503 at once with ``retry-after`` and the cause header, and the drop comes
back in its load report as the server's cold-start count. hold: Envoy holds the request (the
on-demand filter), asks routeplane for the server's cluster on a CDS stream of its own (the
cold-start count), and forwards the request when a replica registers; with none, 503 at the
timeout. Python never sees a request byte: the replica answers the body's length and digest.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.samples.grpc_echo import GrpcEchoThread
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import Registry, open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, GrpcClient, metric_sum
from harness.waiting import wait_until
from tests.helpers import histogram_quantile

pytestmark = pytest.mark.envoy
HOLD = {"cold_start": {"mode": "hold", "timeout": "3s"}}
RQ_TIME = "http.ingress_http.downstream_rq_time"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str
    seconds: float


def request(envoy: Envoy, host: str, *, data: bytes | None = None, timeout: float = 30) -> Reply:
    req = urllib.request.Request(f"http://{envoy.listen}/", headers={"Host": host}, data=data)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, headers, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, dict(exc.headers), exc.read()
    return Reply(
        status=status,
        headers={k.lower(): v for k, v in headers.items()},
        body=body.decode(),
        seconds=time.monotonic() - started,
    )


def cold_starts(admin: str, server: str) -> int:
    done = subprocess.run(
        [ROUTEPLANE, "load", "--json", "--server", server, "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return sum(int(r["cold_starts"]) for r in rows if r["region"] == "*")


@dataclass
class Setup:
    cp: ControlPlane
    envoy: Envoy
    registry: Registry

    def start_envoy(self) -> None:
        self.envoy.start()
        self.envoy.wait_live()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A control plane and its registry; the test starts the Envoy when its servers exist."""
    cp = ControlPlane.create(tmp_path, extra=["--load-report-interval", "0.5"])
    cp.start()
    envoy = Envoy.create(tmp_path, node_id="edge-1", region="us-west", xds=[cp.xds])
    registry: Registry | None = None
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        yield Setup(cp=cp, envoy=envoy, registry=registry)
    finally:
        if registry is not None:
            registry.close()
        envoy.stop()
        cp.stop()


def load_reports(admin: str) -> float:
    """How many load reports the control plane has taken (its /metrics)."""
    return metric_sum(admin, "routeplane_load_reports_total")


def wait_for_reports_after_now(admin: str) -> None:
    """Envoy adds a cluster to its load report only at a report period's start, and counts
    nothing from before: two reports taken from now mean the clusters it has now are counted."""
    start = load_reports(admin)
    wait_until(lambda: load_reports(admin) >= start + 2, what="two load reports")


def route_cluster(envoy: Envoy, host: str) -> str | None:
    """The cluster the Envoy's route for ``host`` names now (None: no such route yet)."""
    dump = json.loads(envoy.admin_get("/config_dump?resource=dynamic_route_configs"))
    for config in dump.get("configs", []):
        for vhost in config.get("route_config", {}).get("virtual_hosts", []):
            if host in vhost.get("domains", []):
                return str(vhost["routes"][-1]["route"]["cluster"])
    return None


def test_reject_answers_503_with_the_cause_and_counts_the_demand(
    setup: Setup, echo_factory: Callable[[str], EchoThread]
) -> None:
    setup.registry.put_server(name="api", hostnames=["api.local"], protocol="http")
    setup.start_envoy()
    wait_until(lambda: route_cluster(setup.envoy, "api.local") is not None, what="api route")
    wait_for_reports_after_now(setup.cp.admin)
    replies = [request(setup.envoy, "api.local") for _ in range(5)]
    for reply in replies:
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        assert reply.headers["x-routeplane-cold-start"] == "api"
        assert "has no ready replica" in reply.body
    # The drops come back in the proxy's next load report (every 0.5 s here).
    wait_until(
        lambda: cold_starts(setup.cp.admin, "api") >= 5, timeout=10, what="5 cold starts counted"
    )
    assert cold_starts(setup.cp.admin, "api") == 5
    # A replica: served, no header, and nothing more counted.
    echo = echo_factory("api-1")
    setup.registry.register_replica(server="api", address=echo.address, region="us-west")
    wait_until(lambda: request(setup.envoy, "api.local").status == 200, what="api served")
    reply = request(setup.envoy, "api.local")
    assert reply.body.strip() == "api-1"
    assert "x-routeplane-cold-start" not in reply.headers
    assert "retry-after" not in reply.headers


def test_hold_forwards_held_requests_to_the_first_replica(
    setup: Setup, echo_factory: Callable[[str], EchoThread]
) -> None:
    setup.registry.put_server(name="gpu", hostnames=["gpu.local"], protocol="http", spec=HOLD)
    setup.start_envoy()
    # A held route answers 503 only after the hold timeout, so wait for the route differently:
    # the listener knows the virtual host once RDS carries it.
    wait_until(lambda: route_cluster(setup.envoy, "gpu.local") is not None, what="gpu route")
    body = bytes(range(256)) * 4096  # 1 MiB
    results: dict[int, Reply] = {}

    def held(i: int) -> None:
        data = body if i == 0 else None
        results[i] = request(setup.envoy, "gpu.local", data=data, timeout=30)

    threads = [threading.Thread(target=held, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    # All 20 reached Envoy and are held there (not queued in this process)...
    wait_until(
        lambda: setup.envoy.stat("http.ingress_http.downstream_rq_active") == 20,
        what="20 requests held in Envoy",
    )
    # ... and their cluster was asked for: routeplane has seen the demand.
    wait_until(lambda: cold_starts(setup.cp.admin, "gpu") >= 1, what="the demand signal")
    assert setup.envoy.stat("http.ingress_http.downstream_rq_active") == 20
    assert results == {}, "a request was answered with no replica"
    echo = echo_factory("gpu-1")
    setup.registry.register_replica(server="gpu", address=echo.address, region="us-west")
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 20
    assert {r.status for r in results.values()} == {200}
    assert results[0].body.split() == ["gpu-1", str(len(body)), hashlib.sha256(body).hexdigest()]
    assert {results[i].body.strip() for i in range(1, 20)} == {"gpu-1"}


def test_hold_answers_503_at_the_timeout_and_asks_again_in_the_next_cold_period(
    setup: Setup, echo_factory: Callable[[str], EchoThread]
) -> None:
    setup.registry.put_server(name="gpu", hostnames=["gpu.local"], protocol="http", spec=HOLD)
    setup.start_envoy()
    wait_until(lambda: route_cluster(setup.envoy, "gpu.local") is not None, what="gpu route")
    reply = request(setup.envoy, "gpu.local")
    assert reply.status == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["x-routeplane-cold-start"] == "gpu"
    # Held for the timeout, as Envoy timed it (this process's clock adds its own scheduling on
    # a busy machine): its only request so far, two significant digits.
    held = wait_until(
        lambda: histogram_quantile(
            setup.envoy.admin_get(f"/stats?format=json&filter=^{RQ_TIME}$"), RQ_TIME, 100
        ),
        what="Envoy's request time",
    )
    assert 2900 <= held <= 3500, f"Envoy held it {held} ms for a 3 s timeout"
    assert reply.seconds >= 2.9
    assert cold_starts(setup.cp.admin, "gpu") == 1
    # Warm, then cold again: the next held request is a new demand signal (a new cluster name),
    # not silence because Envoy already asked once.
    echo = echo_factory("gpu-1")
    replica = setup.registry.register_replica(server="gpu", address=echo.address, region="us-west")
    wait_until(lambda: request(setup.envoy, "gpu.local").status == 200, what="gpu served")
    warm = route_cluster(setup.envoy, "gpu.local")
    setup.registry.deregister_replica(replica.id)
    wait_until(lambda: route_cluster(setup.envoy, "gpu.local") != warm, what="held again")
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(request, setup.envoy, "gpu.local")
        wait_until(lambda: cold_starts(setup.cp.admin, "gpu") >= 2, what="a second demand signal")
        again = echo_factory("gpu-2")
        setup.registry.register_replica(server="gpu", address=again.address, region="us-west")
        assert later.result(timeout=30).body.strip() == "gpu-2"


def test_grpc_clients_with_no_proxy_are_rejected_or_held_too(setup: Setup, tmp_path: Path) -> None:
    """Proxyless: the drop reaches gRPC's own xDS client as UNAVAILABLE (counted from its
    load report); a held server's cluster is asked for by name (counted) and the RPC waits for
    it, within gRPC's own 15 s wait for a resource."""
    setup.registry.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
    setup.registry.put_server(name="chat", hostnames=["chat.local"], protocol="grpc", spec=HOLD)

    # Calls for a few report intervals, so its load reports carry the drops before it exits.
    def client(name: str, **options: Any) -> GrpcClient:
        started = GrpcClient.create(
            tmp_path,
            target=f"xds:///{name}.local",
            xds=setup.cp.xds,
            region="us-west",
            node_id=f"grpc-{name}",
            **options,
        )
        started.start()
        return started

    rejected = client("tokens", calls=8, interval=0.5, timeout=10)
    wait_until(lambda: cold_starts(setup.cp.admin, "tokens") >= 1, what="the drops counted")
    assert rejected.wait() == 1
    assert rejected.errors() == ["error UNAVAILABLE: EDS-configured drop: cold_start"] * 8

    replica = GrpcEchoThread(name="chat-1")
    try:
        held = client("chat", calls=1, timeout=20)
        wait_until(lambda: cold_starts(setup.cp.admin, "chat") >= 1, what="the held RPC's demand")
        assert held.alive()
        setup.registry.register_replica(server="chat", address=replica.address, region="us-west")
        assert held.wait() == 0, held.log()
        assert held.lines[0].startswith("chat-1")
    finally:
        replica.stop()

"""Hold mode for a server with a traffic split (issue 26), through a real Envoy: requests held
while the server has no replica go, when replicas with revisions come, to the split's
replicas (the plain cold cluster they wait for is pushed holding them), and new requests
follow the split."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import Registry, open_registry
from harness.processes import ControlPlane, Envoy
from harness.waiting import wait_until
from tests.integration.traffic.test_traffic_split import ask, route_action, weights

pytestmark = pytest.mark.envoy
HOST = "chat.local"


@pytest.fixture
def registry(control_plane: ControlPlane) -> Iterator[Registry]:
    reg = open_registry(control_plane.registry)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def envoy(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Envoy]:
    proxy = Envoy.create(tmp_path, node_id="edge", region="us-west", xds=[control_plane.xds])
    proxy.start()
    try:
        proxy.wait_live()
        yield proxy
    finally:
        proxy.stop()


def get(envoy: Envoy) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{envoy.listen}/", headers={"Host": HOST})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


def test_requests_held_in_a_cold_period_go_to_the_splits_replicas_when_they_come(
    envoy: Envoy, registry: Registry, echo_factory: Callable[[str], EchoThread]
) -> None:
    registry.put_server(
        name="chat",
        hostnames=[HOST],
        protocol="http",
        spec={
            "cold_start": {"mode": "hold", "timeout": "20s"},
            "traffic": [{"revision": "v1", "percent": 70}, {"revision": "v2", "percent": 30}],
        },
    )
    wait_until(
        lambda: (
            "default_chat_cold" in route_action(envoy, "default_chat/default").get("cluster", "")
        ),
        timeout=30,
        what="the held route",
    )
    results: list[tuple[int, str]] = []
    threads = [threading.Thread(target=lambda: results.append(get(envoy))) for _ in range(5)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: envoy.stat("http.ingress_http.downstream_rq_active") == 5,
        timeout=30,
        what="5 requests held in Envoy",
    )
    for revision in ("v1", "v2"):
        echo = echo_factory(f"chat-{revision}-a")
        registry.register_replica(
            server="chat", address=echo.address, region="us-west", revision=revision
        )
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 5
    assert {status for status, _ in results} == {200}, results
    assert {body for _, body in results} <= {"chat-v1-a", "chat-v2-a"}
    # New requests follow the split.
    wait_until(
        lambda: weights(envoy) == {"default_chat_rev_v1": 70, "default_chat_rev_v2": 30},
        timeout=30,
        what="the split in Envoy",
    )
    assert set(ask(envoy, 50, host=HOST)) <= {"chat-v1-a", "chat-v2-a"}

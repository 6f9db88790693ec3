"""One control plane and one Envoy per test module (each test puts its own server under its own
hostname, so cases share them); replicas, which report what a test sets, and proxyless clients
per test."""

from __future__ import annotations

import http.client
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.dev.samples.grpc_echo import UNARY
from control_plane.registry import Registry, open_registry
from harness.processes import ControlPlane, Envoy, GrpcClient
from harness.waiting import wait_until


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("orca")


@pytest.fixture(scope="module")
def control_plane(module_dir: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane.create(module_dir)
    cp.start()
    try:
        cp.wait_ready()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def registry(control_plane: ControlPlane) -> Iterator[Registry]:
    reg = open_registry(control_plane.registry)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="module")
def envoy(control_plane: ControlPlane, module_dir: Path) -> Iterator[Envoy]:
    proxy = Envoy.create(module_dir, node_id="edge", region="us-west", xds=[control_plane.xds])
    proxy.start()
    try:
        proxy.wait_live()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def stop_after() -> Iterator[Callable[[Any], Any]]:
    """Registers anything with a ``stop()`` (a replica, a client): stopped after the test."""
    started: list[Any] = []

    def register(thing: Any) -> Any:
        started.append(thing)
        return thing

    yield register
    for thing in reversed(started):
        thing.stop()


@pytest.fixture
def grpc_client(
    control_plane: ControlPlane, tmp_path: Path, stop_after: Callable[[Any], Any]
) -> Callable[..., GrpcClient]:
    """A proxyless client (``routeplane samples grpc-client``) calling ``xds:///<host>``."""

    def make(node_id: str, host: str, **options: Any) -> GrpcClient:
        client = GrpcClient.create(
            tmp_path,
            target=f"xds:///{host}",
            xds=control_plane.xds,
            region="us-west",
            node_id=node_id,
            **options,
        )
        client.start()
        stop_after(client)
        return client

    return make


def put_server(registry: Registry, name: str, *, protocol: str, utilization: dict[str, Any]) -> str:
    """A server balanced by utilization (outlier detection off: nothing else moves traffic);
    returns its hostname."""
    host = f"{name}.local"
    registry.put_server(
        name=name,
        hostnames=[host],
        protocol=protocol,
        spec={"load_balancing": {"utilization": utilization}, "outlier_detection": "off"},
    )
    return host


def ask_http(envoy: Envoy, count: int, *, host: str) -> Counter[str]:
    """``count`` GETs through Envoy on one kept-alive connection: who answered (or the status)."""
    address, port = envoy.listen.rsplit(":", 1)
    connection = http.client.HTTPConnection(address, int(port), timeout=10)
    answers: Counter[str] = Counter()
    try:
        for _ in range(count):
            connection.request("GET", "/", headers={"Host": host})
            response = connection.getresponse()
            body = response.read().decode().strip()
            answers[body if response.status == 200 else f"status {response.status}"] += 1
    finally:
        connection.close()
    return answers


def ask_grpc(envoy: Envoy, count: int, *, host: str) -> Counter[str]:
    """``count`` unary calls of the Echo sample through Envoy on one channel: who answered (or
    the error)."""
    answers: Counter[str] = Counter()
    with grpc.insecure_channel(envoy.listen, options=[("grpc.default_authority", host)]) as ch:
        call = ch.unary_unary(UNARY)
        for _ in range(count):
            try:
                answers[call(b"x", timeout=10, wait_for_ready=True).decode().split(":")[0]] += 1
            except grpc.RpcError as exc:
                answers[f"error {exc.code()}"] += 1
    return answers


def answered_by(client: GrpcClient, start: int = 0) -> list[str]:
    """Who answered each of a proxyless client's calls from ``start`` on (or ``error ...``)."""
    return [line.split(":", 1)[0] for line in list(client.lines)[start:]]


def envoy_weights(envoy: Envoy, server: str) -> list[int]:
    """The weights Envoy gives the replicas of ``server``'s cluster, sorted (admin
    ``/clusters``: client_side_weighted_round_robin writes the weights it computes there)."""
    prefix = f"default_{server}::"
    return sorted(
        int(line.rsplit("::", 1)[1])
        for line in envoy.admin_get("/clusters").splitlines()
        if line.startswith(prefix) and "::weight::" in line
    )


def wait_for_answers(
    ask: Callable[[], Counter[str]], names: set[str], *, what: str, timeout: float = 30.0
) -> None:
    """Until one round of ``ask`` is answered by exactly ``names`` (every replica routed)."""
    wait_until(lambda: set(ask()) == names, timeout=timeout, interval=0.05, what=what)


def share(answers: Counter[str], name: str) -> float:
    return answers[name] / sum(answers.values())

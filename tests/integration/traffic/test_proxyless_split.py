"""Proxyless gRPC clients get the same traffic split and tags as Envoy (issue 26): real grpcio
clients on ``xds:///tokens.local``, replicas of the gRPC echo sample that name their revision
in every reply."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control_plane.dev.samples.grpc_echo import GrpcEchoThread
from control_plane.registry import Registry, open_registry
from harness.processes import ControlPlane, GrpcClient
from harness.waiting import wait_until

TOKENS = "xds:///tokens.local"


@pytest.fixture
def registry(control_plane: ControlPlane) -> Iterator[Registry]:
    reg = open_registry(control_plane.registry)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def replicas() -> Iterator[Callable[[str], GrpcEchoThread]]:
    started: list[GrpcEchoThread] = []

    def make(name: str) -> GrpcEchoThread:
        echo = GrpcEchoThread(name=name)
        started.append(echo)
        return echo

    yield make
    for echo in started:
        echo.stop()


@pytest.fixture
def clients(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Callable[..., GrpcClient]]:
    started: list[GrpcClient] = []

    def make(node_id: str, **options: object) -> GrpcClient:
        client = GrpcClient.create(
            tmp_path,
            target=str(options.pop("target", TOKENS)),
            xds=control_plane.xds,
            region="us-west",
            node_id=node_id,
            **options,  # type: ignore[arg-type]
        )
        client.start()
        started.append(client)
        return client

    yield make
    for client in started:
        client.stop()


def answered_by(client: GrpcClient) -> list[str]:
    return [line.split(":", 1)[0] for line in list(client.lines) if not line.startswith("error")]


def test_a_grpc_client_splits_80_20_and_reaches_a_tag_by_header_and_by_name(
    registry: Registry,
    replicas: Callable[[str], GrpcEchoThread],
    clients: Callable[..., GrpcClient],
) -> None:
    registry.put_server(
        name="tokens",
        hostnames=["tokens.local"],
        protocol="grpc",
        spec={
            "traffic": [
                {"revision": "v1", "percent": 80},
                {"revision": "v2", "percent": 20, "tag": "canary"},
                {"revision": "latest", "percent": 0, "tag": "next"},
            ]
        },
    )
    for revision in ("v1", "v2", "v3"):
        echo = replicas(f"tokens-{revision}")
        registry.register_replica(
            server="tokens", address=echo.address, region="us-west", revision=revision
        )
    # The tags first, each from a client that calls until stopped: once ``next`` (latest)
    # answers from v3, the control plane has seen every replica (registered in order), so the
    # split below starts from the whole registry.
    for node, options, name in (
        ("grpc-tag-header", {"headers": ("x-routeplane-revision=next",)}, "tokens-v3"),
        ("grpc-tag-name", {"target": "xds:///canary--tokens.local"}, "tokens-v2"),
    ):
        client = clients(node, **options)
        wait_until(
            lambda c=client, n=name: n in answered_by(c),  # type: ignore[misc]
            timeout=30,
            what=f"{node} answered by {name}",
        )
        mark = len(answered_by(client))
        wait_until(
            lambda c=client, m=mark: len(answered_by(c)) >= m + 30,  # type: ignore[misc]
            timeout=30,
            what=f"30 more calls of {node}",
        )
        assert set(answered_by(client)[mark:]) == {name}
        client.stop()

    split = clients("grpc-split", calls=1000, interval=0.001)
    assert split.wait(timeout=120) == 0, split.log()
    answers = Counter(answered_by(split))
    assert split.errors() == []
    assert set(answers) <= {"tokens-v1", "tokens-v2"}, answers  # nothing to v3 at 0%
    assert sum(answers.values()) == 1000
    assert 140 <= answers["tokens-v2"] <= 260, answers  # 20% +/- 6%: over 4 standard deviations

"""CSDS on the xDS port (issue 23, item 13) against a real ``routeplane serve --workers 2``
over mTLS: a certificate of one fleet sees only that fleet's proxies, on whichever worker its
call lands (the scope travels with the fan-out), calls are rate-limited per peer, and the
admin address keeps the full view; a stopped worker fails a call UNAVAILABLE naming it. The
bounds and the token are tested in-process over real gRPC (``test_csds_bounds.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from control_plane.dev.certs import dev_certs
from control_plane.group.client import Workers
from control_plane.xds.resources import CLUSTER
from harness.processes import ControlPlane, http_get
from tests.helpers import async_wait_until

FLEETS = ("apps", "edge")


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[tuple[ControlPlane, Path]]:
    certs = tmp_path / "certs"
    dev_certs(certs, clusters=list(FLEETS))
    cp = ControlPlane.create(
        tmp_path,
        extra=[
            "--workers",
            "2",
            "--tls-cert",
            str(certs / "server.pem"),
            "--tls-key",
            str(certs / "server-key.pem"),
            "--client-ca",
            str(certs / "ca.pem"),
        ],
    )
    cp.start()
    try:
        cp.wait_ready()
        yield cp, certs
    finally:
        cp.stop()


def credentials(certs: Path, fleet: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / f"client-{fleet}-key.pem").read_bytes(),
        certificate_chain=(certs / f"client-{fleet}.pem").read_bytes(),
    )


@contextlib.asynccontextmanager
async def proxy(cp: ControlPlane, certs: Path, fleet: str, node_id: str) -> AsyncIterator[None]:
    """An ADS stream of ``fleet`` held open (its first response read), on its own channel
    (so it lands on either worker)."""
    async with grpc.aio.secure_channel(cp.xds, credentials(certs, fleet)) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        node = base_pb2.Node(id=node_id, cluster=fleet, locality=base_pb2.Locality(region="w"))
        await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node))
        assert await asyncio.wait_for(call.read(), timeout=30) is not grpc.aio.EOF
        yield
        call.cancel()


async def csds(channel: grpc.aio.Channel) -> Any:
    return await csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(
        csds_pb2.ClientStatusRequest(), timeout=15
    )


def node_ids(answer: Any) -> list[str]:
    return sorted(config.node.id for config in answer.config)


async def test_a_certificate_sees_only_its_fleet_and_calls_are_rate_limited_per_peer(
    mtls: tuple[ControlPlane, Path],
) -> None:
    cp, certs = mtls
    async with (
        proxy(cp, certs, "apps", "apps-1"),
        proxy(cp, certs, "apps", "apps-2"),
        proxy(cp, certs, "edge", "edge-1"),
        proxy(cp, certs, "edge", "edge-2"),
        grpc.aio.insecure_channel(cp.admin) as admin,
    ):
        # The admin address: every fleet, on every worker.
        async def everyone() -> bool:
            return node_ids(await csds(admin)) == ["apps-1", "apps-2", "edge-1", "edge-2"]

        await async_wait_until(everyone, what="every proxy on the admin address")
        for fleet in FLEETS:
            async with grpc.aio.secure_channel(cp.xds, credentials(certs, fleet)) as channel:
                assert node_ids(await csds(channel)) == [f"{fleet}-1", f"{fleet}-2"]
        # One peer, calls back to back: refused once its bucket is empty (2 at once, 1 a
        # second), naming the bound; the admin address still answers.
        async with grpc.aio.secure_channel(cp.xds, credentials(certs, "apps")) as channel:
            refused: grpc.aio.AioRpcError | None = None
            for _ in range(20):
                try:
                    await csds(channel)
                except grpc.aio.AioRpcError as exc:
                    refused = exc
                    break
            assert refused is not None, "20 CSDS calls back to back were all answered"
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 1 calls a second per peer" in (refused.details() or "")
        assert len((await csds(admin)).config) == 4


def test_a_worker_that_does_not_answer_fails_the_call_unavailable_naming_it(
    tmp_path: Path,
) -> None:
    """A stopped worker (SIGSTOP): a CSDS call on the admin address fails UNAVAILABLE naming
    it once the sibling timeout (10 s) runs out, before the caller's own 60 s deadline."""
    assert Workers([]).timeout == 10.0  # the README's figure
    cp = ControlPlane.create(tmp_path, extra=["--workers", "2"])
    cp.start()
    stopped: int | None = None
    try:
        cp.wait_ready()
        children = [  # the workers, not the group's registry watcher
            pid
            for pid in Path(f"/proc/{cp.pid}/task/{cp.pid}/children").read_text().split()
            if b"control_plane.group.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(children) == 2
        admins = {
            json.loads(line)["admin"]
            for line in cp.log().splitlines()
            if '"control_plane_started"' in line
        }
        assert len(admins) == 2, admins
        stopped = int(children[0])
        os.kill(stopped, signal.SIGSTOP)
        with grpc.insecure_channel(cp.admin) as channel, pytest.raises(grpc.RpcError) as refused:
            csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(
                csds_pb2.ClientStatusRequest(), timeout=60
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        details = refused.value.details() or ""
        [named] = [a for a in admins if f"worker at {a} did not answer" in details]
        # The one named is the stopped one: the other worker's admin address answers.
        [other] = admins - {named}
        assert http_get(f"http://{other}/healthz", timeout=5)[0] == 200
        assert http_get(f"http://{named}/healthz", timeout=1)[0] == 0
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        cp.stop()

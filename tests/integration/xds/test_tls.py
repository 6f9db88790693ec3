"""mTLS between Envoy and the control plane; a proxy gets only the group its certificate
allows."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.dev.certs import dev_certs
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ENVOY, ROUTEPLANE, ControlPlane, Envoy
from harness.waiting import free_port, wait_until

pytestmark = pytest.mark.envoy
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _first_response(target: str, credentials: grpc.ChannelCredentials, cluster: str) -> object:
    with grpc.secure_channel(target, credentials) as channel:
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            iter(
                [
                    discovery_pb2.DiscoveryRequest(
                        node=base_pb2.Node(id="raw", cluster=cluster), type_url=CDS
                    )
                ]
            ),
            timeout=10,
        )
        try:
            return next(stream)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def test_envoy_converges_over_mtls_and_identity_limits_the_group(
    tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    certs = tmp_path / "certs"
    dev_certs(certs, clusters=["edge", "other"], cn_only=("edge",))
    cp = ControlPlane.create(
        tmp_path,
        extra=[
            "--tls-cert",
            str(certs / "server.pem"),
            "--tls-key",
            str(certs / "server-key.pem"),
            "--client-ca",
            str(certs / "ca.pem"),
        ],
    )
    cp.start()
    envoy = None
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
        registry.register_replica(
            server="echo", address=echo_factory("a").address, region="us-west"
        )
        registry.close()
        listen, admin = free_port(), free_port()
        bootstrap = subprocess.run(
            [
                ROUTEPLANE,
                "bootstrap",
                "--node-id",
                "tls-edge",
                "--cluster",
                "edge",
                "--region",
                "us-west",
                "--xds",
                cp.xds,
                "--listen",
                f"127.0.0.1:{listen}",
                "--admin",
                f"127.0.0.1:{admin}",
                "--tls-cert",
                str(certs / "client-edge.pem"),
                "--tls-key",
                str(certs / "client-edge-key.pem"),
                "--ca",
                str(certs / "ca.pem"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        path = tmp_path / "tls-edge.yaml"
        path.write_text(bootstrap)
        envoy = Envoy(
            argv=[
                ENVOY,
                "-c",
                str(path),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
            log_path=tmp_path / "tls-edge.log",
            listen=f"127.0.0.1:{listen}",
            admin=f"127.0.0.1:{admin}",
            node_id="tls-edge",
        )
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local") == (200, "a\n"), what="routing over mTLS")

        ca = (certs / "ca.pem").read_bytes()

        def client(name: str) -> grpc.ChannelCredentials:
            return grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=(certs / f"client-{name}-key.pem").read_bytes(),
                certificate_chain=(certs / f"client-{name}.pem").read_bytes(),
            )

        # A certificate for fleet "other" may not ask for fleet "edge"'s configuration.
        code, details = _first_response(cp.xds, client("other"), "edge")  # type: ignore[misc]
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "not 'edge'" in details
        response = _first_response(cp.xds, client("edge"), "edge")
        assert getattr(response, "type_url", "") == CDS
        # A certificate naming its fleet by CN alone (no URI SAN) is judged by the CN.
        response = _first_response(cp.xds, client("edge-cn"), "edge")
        assert getattr(response, "type_url", "") == CDS
        code, details = _first_response(cp.xds, client("edge-cn"), "other")  # type: ignore[misc]
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "['edge'], not 'other'" in details
        # A plaintext client gets no stream at all.
        with grpc.insecure_channel(cp.xds) as plain:
            stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(plain).StreamAggregatedResources(
                iter([discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="p"), type_url=CDS)]),
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as plaintext:
                next(stream)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        # No client certificate: no handshake.
        refused = _first_response(
            cp.xds, grpc.ssl_channel_credentials(root_certificates=ca), "edge"
        )
        assert isinstance(refused, tuple)
        assert refused[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()

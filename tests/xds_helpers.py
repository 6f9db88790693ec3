"""xDS test helpers: snapshots of sample servers and raw SotW/delta requests and responses.

A plain module (not a conftest), so unit and integration tests can both import it.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from control_plane.translate import ProxyView, to_resources
from control_plane.xds.snapshot import Snapshot, build_snapshot
from harness.models import endpoint, server, table

VIEW = ProxyView(region="us-west", listen_host="127.0.0.1", listen_port=10000)


def snapshot(*servers: Any) -> Snapshot:
    return build_snapshot(to_resources(table(*servers), VIEW))


def two_servers(*, echo_port: int = 8081, api_port: int = 8082) -> Snapshot:
    return snapshot(
        server("echo", endpoint("r1", echo_port)), server("api", endpoint("r2", api_port))
    )


def sotw_request(
    type_url: str,
    *,
    names: tuple[str, ...] = (),
    nonce: str = "",
    version: str = "",
    error: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url,
        resource_names=list(names),
        response_nonce=nonce,
        version_info=version,
        node=base_pb2.Node(id="n1"),
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def delta_request(
    type_url: str,
    *,
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    initial: dict[str, str] | None = None,
    error: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
        node=base_pb2.Node(id="n1"),
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def parse_sotw(payload: bytes) -> discovery_pb2.DiscoveryResponse:
    return discovery_pb2.DiscoveryResponse.FromString(payload)


def parse_delta(payload: bytes) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse.FromString(payload)

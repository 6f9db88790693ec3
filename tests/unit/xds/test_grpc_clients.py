"""gRPC's own xDS client on a SotW stream: its group, and named CDS/LDS answered by name."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from control_plane.translate import ProxyView, to_resources
from control_plane.xds.nodes import NodeGroup, to_node_group
from control_plane.xds.resources import CLUSTER, LISTENER
from control_plane.xds.snapshot import build_snapshot
from control_plane.xds.sotw import SotwStream
from harness.models import endpoint, server, table
from tests.xds_helpers import parse_sotw, sotw_request

GRPC_VIEW = ProxyView(region="us-west", listen_host="", listen_port=0, kind="grpc")


def grpc_snapshot():  # type: ignore[no-untyped-def]
    return build_snapshot(
        to_resources(
            table(
                server("tokens", endpoint("r1", 9000), protocol="grpc"),
                server("embed", endpoint("r2", 9001), protocol="grpc"),
                server("web", endpoint("r3", 8080)),
            ),
            GRPC_VIEW,
        )
    )


def test_a_grpc_node_is_grouped_by_cluster_and_locality_without_a_listen_address() -> None:
    metadata = struct_pb2.Struct()
    metadata["routeplane.listen"] = "127.0.0.1:1"
    node = base_pb2.Node(
        id="g1",
        cluster="apps",
        locality=base_pb2.Locality(region="us-west", zone="a"),
        user_agent_name="gRPC C-core linux Python",
        metadata=metadata,
    )
    group = to_node_group(node)
    assert group == NodeGroup(cluster="apps", region="us-west", zone="a", listen="", kind="grpc")
    assert group.key == "apps/us-west/a@grpc"
    envoy = to_node_group(base_pb2.Node(id="e1", cluster="edge", user_agent_name="envoy"))
    assert envoy.kind == "envoy"
    assert envoy.key == "edge/@127.0.0.1:10000"


def test_named_lds_gets_exactly_the_named_listener() -> None:
    stream = SotwStream(control_plane_id="cp")
    stream.on_request(sotw_request(LISTENER, names=("tokens.local",)))
    [out] = stream.responses(grpc_snapshot())
    assert out.resource_names == ["tokens.local"]
    stream.on_request(
        sotw_request(LISTENER, names=("tokens.local",), nonce=out.nonce, version=out.version)
    )
    assert stream.status[LISTENER].state == "SYNCED"


def test_a_name_that_is_no_grpc_server_gets_an_empty_response_and_shows_missing() -> None:
    stream = SotwStream(control_plane_id="cp")
    names = ("web.local", "nothing.local")
    stream.on_request(sotw_request(LISTENER, names=names))
    [out] = stream.responses(grpc_snapshot())
    assert list(parse_sotw(out.payload).resources) == []
    stream.on_request(sotw_request(LISTENER, names=names, nonce=out.nonce, version=out.version))
    status = stream.status[LISTENER]
    assert status.state == "MISSING"
    assert status.missing == {"web.local", "nothing.local"}


def test_named_cds_gets_only_the_named_clusters_in_every_response() -> None:
    stream = SotwStream(control_plane_id="cp")
    stream.on_request(sotw_request(CLUSTER, names=("default_tokens",)))
    [first] = stream.responses(grpc_snapshot())
    assert first.resource_names == ["default_tokens"]
    stream.on_request(
        sotw_request(
            CLUSTER,
            names=("default_tokens", "default_embed"),
            nonce=first.nonce,
            version=first.version,
        )
    )
    [second] = stream.responses(grpc_snapshot())
    # SotW CDS: every subscribed cluster, not only the new one.
    assert sorted(second.resource_names) == ["default_embed", "default_tokens"]


def test_dropping_the_last_named_cluster_subscribes_to_nothing_not_to_everything() -> None:
    stream = SotwStream(control_plane_id="cp")
    stream.on_request(sotw_request(CLUSTER, names=("default_tokens",)))
    [out] = stream.responses(grpc_snapshot())
    stream.on_request(sotw_request(CLUSTER, nonce=out.nonce, version=out.version))
    assert not stream.status[CLUSTER].wildcard
    for response in stream.responses(grpc_snapshot()):
        assert response.resource_names == []

"""The hand-assembled responses must parse as exactly what protobuf would have built."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control_plane.xds.resources import (
    CLUSTER,
    control_plane_field,
    delta_response,
    sotw_response,
    to_resource,
    varint,
)


def _cluster(name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)


def test_varint_matches_protobuf_encoding() -> None:
    for value, expected in [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**21, b"\x80\x80\x80\x01"),
    ]:
        assert varint(value) == expected


def test_sotw_response_parses_with_every_field() -> None:
    resources = [to_resource(CLUSTER, n, _cluster(n)) for n in ("a", "b" * 300)]
    payload = sotw_response(
        version_info="v1",
        resources=resources,
        type_url=CLUSTER,
        nonce="7",
        control_plane=control_plane_field(identifier="cp-1", field_number=6),
    )
    parsed = discovery_pb2.DiscoveryResponse.FromString(payload)
    assert parsed.version_info == "v1"
    assert parsed.type_url == CLUSTER
    assert parsed.nonce == "7"
    assert parsed.control_plane.identifier == "cp-1"
    names = []
    for any_msg in parsed.resources:
        assert any_msg.type_url == CLUSTER
        names.append(cluster_pb2.Cluster.FromString(any_msg.value).name)
    assert names == ["a", "b" * 300]


def test_delta_response_parses_with_versions_and_removals() -> None:
    resource = to_resource(CLUSTER, "a", _cluster("a"))
    payload = delta_response(
        system_version_info="s1",
        resources=[resource],
        removed=["gone-1", "gone-2"],
        type_url=CLUSTER,
        nonce="9",
        control_plane=control_plane_field(identifier="cp-1", field_number=7),
    )
    parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(payload)
    assert parsed.system_version_info == "s1"
    assert [(r.name, r.version) for r in parsed.resources] == [("a", resource.version)]
    assert cluster_pb2.Cluster.FromString(parsed.resources[0].resource.value).name == "a"
    assert list(parsed.removed_resources) == ["gone-1", "gone-2"]
    assert parsed.nonce == "9"
    assert parsed.control_plane.identifier == "cp-1"


def test_versions_derive_from_content_only() -> None:
    first = to_resource(CLUSTER, "a", _cluster("a"))
    again = to_resource(CLUSTER, "a", _cluster("a"))
    other = to_resource(CLUSTER, "a", cluster_pb2.Cluster(name="a"))
    assert first.version == again.version
    assert first.version != other.version

"""A node's group: ``routeplane.listen`` parsed once, when the group is made at the stream's
start, and a value that is no ``HOST:PORT`` refused there, by field and value."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2

from control_plane.xds.nodes import NodeGroup, to_node_group


def envoy_node(listen: str | None) -> base_pb2.Node:
    node = base_pb2.Node(
        id="e1",
        cluster="edge",
        locality=base_pb2.Locality(region="us-west"),
        user_agent_name="envoy",
    )
    if listen is not None:
        node.metadata.fields["routeplane.listen"].string_value = listen
    return node


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        (None, "127.0.0.1", 10000),
        ("", "127.0.0.1", 10000),
        ("0.0.0.0:10001", "0.0.0.0", 10001),
        ("[::1]:10002", "::1", 10002),
        ("proxy.local", "proxy.local", 10000),
    ],
    ids=["absent", "empty", "v4", "v6", "bare-host"],
)
def test_the_listen_address_is_parsed_into_the_group(
    listen: str | None, host: str, port: int
) -> None:
    group = to_node_group(envoy_node(listen))
    assert (group.listen_host, group.listen_port, group.listen_problem) == (host, port, "")


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("127.0.0.1:notaport", "port 'notaport' is not a number"),
        ("127.0.0.1:0", "port 0 is out of range"),
        ("127.0.0.1:65536", "port 65536 is out of range"),
        (":10000", "no host"),
        ("[]:10000", "no host"),
    ],
    ids=["not-a-number", "zero", "too-high", "no-host", "empty-brackets"],
)
def test_a_listen_address_that_is_no_address_is_refused_by_field_and_value(
    listen: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=r"routeplane\.listen") as caught:
        to_node_group(envoy_node(listen))
    assert str(caught.value) == f"node metadata routeplane.listen {listen!r}: {problem}"


def test_a_long_listen_value_is_refused_by_its_length_before_it_is_parsed() -> None:
    with pytest.raises(ValueError, match="characters") as caught:
        to_node_group(envoy_node("x" * 1000))
    assert str(caught.value) == "node.metadata routeplane.listen of 1000 characters; at most 128"


def test_the_parsed_parts_follow_the_value_and_are_left_out_of_equality() -> None:
    made = NodeGroup(cluster="edge", region="us-west", listen="[::1]:10002")
    assert made == to_node_group(envoy_node("[::1]:10002"))
    assert hash(made) == hash(to_node_group(envoy_node("[::1]:10002")))
    assert (made.listen_host, made.listen_port) == ("::1", 10002)
    grpc = NodeGroup(cluster="apps", region="us-west", listen="", kind="grpc")
    assert (grpc.listen_host, grpc.listen_port, grpc.listen_problem) == ("", 0, "")


def test_a_group_made_in_process_with_no_address_carries_why() -> None:
    group = NodeGroup(cluster="edge", region="us-west", listen="127.0.0.1:notaport")
    assert group.listen_problem == (
        "node metadata routeplane.listen '127.0.0.1:notaport': port 'notaport' is not a number"
    )

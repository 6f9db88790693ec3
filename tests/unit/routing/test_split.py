"""Traffic splits resolved against the replicas' revisions (issue 26): weights, latest, tags,
and the problems of a split that names a revision with no READY replica."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.routing import to_routing_table
from control_plane.routing.model import RoutedServer, RoutingTable


def srv(traffic: list[dict[str, Any]] | None = None, **spec: Any) -> Server:
    if traffic is not None:
        spec["traffic"] = traffic
    return Server(name="chat", hostnames=("chat.local",), protocol="http", spec=json.dumps(spec))


def rep(rid: str, revision: str = "", at: float = 0.0, **overrides: Any) -> Replica:
    values: dict[str, Any] = {
        "id": rid,
        "server": "chat",
        "host": "127.0.0.1",
        "port": 8081,
        "region": "us-west",
        "revision": revision,
        "registered_at": at,
    }
    values.update(overrides)
    return Replica(**values)


def route(server: Server, *replicas: Replica) -> RoutingTable:
    return to_routing_table(
        RegistryState.of(servers=[server], replicas=replicas, revision=1, committed_at=0.0)
    )


def routed(server: Server, *replicas: Replica) -> RoutedServer:
    [only] = route(server, *replicas).servers
    return only


def split(percents: dict[str, int], tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
    tags = tags or {}
    return [
        {"revision": r, "percent": p, **({"tag": tags[r]} if r in tags else {})}
        for r, p in percents.items()
    ]


def test_a_server_whose_replicas_carry_no_revision_is_routed_as_before() -> None:
    server = routed(srv(), rep("r1"), rep("r2", port=8082))
    assert (server.revisions, server.split, server.tags) == ((), (), ())
    assert {e.revision for e in server.endpoints} == {""}


def test_no_traffic_block_sends_everything_to_the_revision_that_appeared_last() -> None:
    server = routed(
        srv(),
        rep("a1", "v1", at=10.0),
        rep("a2", "v1", at=30.0),  # a late v1 replica does not make v1 newer
        rep("b1", "v2", at=20.0),
    )
    assert server.revisions == ("v1", "v2")
    assert server.split == (("v2", 100),)
    assert route(srv(), rep("a1", "v1", at=10.0), rep("b1", "v2", at=20.0)).problems == ()


def test_latest_ties_go_to_the_greater_name_and_skip_a_revision_with_no_ready_replica() -> None:
    assert routed(srv(), rep("a", "v1", at=5.0), rep("b", "v2", at=5.0)).split == (("v2", 100),)
    server = routed(srv(), rep("a", "v1", at=5.0), rep("b", "v2", at=9.0, state="DRAINING"))
    assert server.split == (("v1", 100),)
    assert server.revisions == ("v1", "v2")  # the draining one keeps its cluster


def test_replicas_from_older_writers_are_revision_empty_next_to_named_ones() -> None:
    server = routed(srv(), rep("old", "", at=0.0), rep("new", "v1", at=50.0))
    assert server.revisions == ("", "v1")
    assert server.split == (("v1", 100),)


def test_an_explicit_split_keeps_its_percents_and_tags() -> None:
    server = routed(
        srv(split({"v1": 90, "v2": 10}, {"v2": "canary"})),
        rep("a", "v1", at=1.0),
        rep("b", "v2", at=2.0),
    )
    assert server.split == (("v1", 90), ("v2", 10))
    assert server.tags == (("canary", "v2"),)


def test_latest_in_a_split_names_the_newest_and_adds_to_an_entry_of_the_same_revision() -> None:
    traffic = [
        {"revision": "v1", "percent": 60},
        {"revision": "v2", "percent": 30},
        {"revision": "latest", "percent": 10, "tag": "next"},
    ]
    server = routed(srv(traffic), rep("a", "v1", at=1.0), rep("b", "v2", at=2.0))
    assert server.split == (("v1", 60), ("v2", 40))
    assert server.tags == (("next", "v2"),)


@pytest.mark.parametrize(
    ("percents", "down", "expected"),
    [
        pytest.param({"v1": 90, "v2": 10}, "v2", (("v1", 100),), id="two-one-down"),
        pytest.param(
            {"v1": 20, "v2": 30, "v3": 50}, "v3", (("v1", 40), ("v2", 60)), id="proportional"
        ),
        pytest.param(
            {"v1": 10, "v2": 20, "v3": 70}, "v3", (("v1", 33), ("v2", 67)), id="largest-remainder"
        ),
        pytest.param(
            {"v1": 0, "v2": 0, "v3": 100}, "v3", (("v1", 50), ("v2", 50)), id="zeros-share-equally"
        ),
    ],
)
def test_a_revision_with_no_ready_replica_gets_nothing_and_its_share_goes_to_the_others(
    percents: dict[str, int], down: str, expected: tuple[tuple[str, int], ...]
) -> None:
    replicas = [
        rep(f"r-{r}", r, at=float(i), state="DRAINING" if r == down else "READY", port=8081 + i)
        for i, r in enumerate(percents)
    ]
    table = route(srv(split(percents)), *replicas)
    [server] = table.servers
    assert server.split == expected
    assert sum(w for _, w in server.split) == 100
    [problem] = table.problems
    index = list(percents).index(down)
    assert (problem.kind, problem.name, problem.field, problem.value) == (
        "server",
        "chat",
        f"spec.traffic[{index}].revision",
        down,
    )
    assert "no READY replica" in problem.message


def test_a_revision_no_replica_carries_is_a_problem_naming_the_field_and_never_stops_routing() -> (
    None
):
    table = route(srv(split({"v1": 50, "v9": 50})), rep("a", "v1"))
    [server] = table.servers
    assert server.split == (("v1", 100),)
    [problem] = table.problems
    assert (problem.field, problem.value) == ("spec.traffic[1].revision", "v9")
    assert "no replica carries" in problem.message


def test_a_revision_at_zero_percent_with_no_ready_replica_is_no_problem() -> None:
    table = route(
        srv(split({"v1": 100, "v2": 0}, {"v2": "next"})),
        rep("a", "v1"),
        rep("b", "v2", state="DRAINING", port=8082),
    )
    assert table.problems == ()
    [server] = table.servers
    assert server.split == (("v1", 100),)
    assert server.tags == (("next", "v2"),)  # its tag stays: requests to it get 503


def test_with_no_ready_replica_in_the_split_everything_goes_to_its_first_revisions_cluster() -> (
    None
):
    # v3 is READY but not in the split: the split never sends it anything.
    table = route(srv(split({"v2": 100})), rep("a", "v3"))
    [server] = table.servers
    assert server.split == (("v2", 100),)
    assert server.revisions == ("v2", "v3")  # v2's cluster exists, empty: 503 at once
    assert [p.field for p in table.problems] == ["spec.traffic[0].revision"]


def test_no_ready_replica_at_all_with_revisions_goes_to_the_plain_cluster() -> None:
    server = routed(srv(), rep("a", "v1", state="DRAINING"))
    assert server.split == (("", 100),)
    assert server.revisions == ("", "v1")


def test_a_tag_on_a_latest_that_cannot_be_resolved_is_a_problem_and_left_out() -> None:
    traffic = [{"revision": "v1", "percent": 100}, {"revision": "latest", "percent": 0, "tag": "x"}]
    table = route(srv(traffic), rep("a", "v1", state="DRAINING"))
    [server] = table.servers
    assert server.tags == ()
    assert [p.field for p in table.problems] == [
        "spec.traffic[0].revision",
        "spec.traffic[1].revision",
    ]


@pytest.mark.parametrize(
    "revision",
    [
        pytest.param("V1", id="upper-case"),
        pytest.param("latest", id="reserved"),
        pytest.param("a" * 64, id="too-long"),
        pytest.param("-v1", id="leading-dash"),
        pytest.param(7, id="not-a-string"),
    ],
)
def test_a_replica_with_a_bad_revision_is_a_problem_naming_the_field_and_left_out(
    revision: Any,
) -> None:
    table = route(srv(), rep("bad", revision), rep("good", "v1", port=8082))
    [server] = table.servers
    assert [e.replica_id for e in server.endpoints] == ["good"]
    [problem] = table.problems
    assert (problem.kind, problem.name, problem.field) == ("replica", "bad", "revision")


def test_endpoints_carry_their_replicas_revision_and_registration_time() -> None:
    [endpoint] = routed(srv(), rep("a", "v1", at=42.0)).endpoints
    assert (endpoint.revision, endpoint.registered_at) == ("v1", 42.0)

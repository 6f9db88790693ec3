"""Routing decisions from registry rows; bad rows become problems, the rest is routed."""

from __future__ import annotations

import pytest

from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.routing import to_routing_table
from control_plane.routing.build import evaluate_with


def srv(name: str, *hosts: str, protocol: str = "http") -> Server:
    return Server(name=name, hostnames=hosts or (f"{name}.local",), protocol=protocol)


def rep(rid: str, server: str = "echo", **overrides: object) -> Replica:
    values: dict[str, object] = {
        "id": rid,
        "server": server,
        "host": "127.0.0.1",
        "port": 8081,
        "region": "us-west",
    }
    values.update(overrides)
    return Replica(**values)  # type: ignore[arg-type]


def state(servers: list[Server], replicas: list[Replica]) -> RegistryState:
    return RegistryState.of(servers=servers, replicas=replicas, revision=1, committed_at=0.0)


@pytest.mark.parametrize(
    ("replica", "routed", "draining"),
    [
        pytest.param(rep("r1"), True, False, id="ready-routed"),
        pytest.param(rep("r1", state="STARTING"), False, False, id="starting-not-routed"),
        pytest.param(rep("r1", state="DRAINING"), True, True, id="draining-kept-as-draining"),
    ],
)
def test_replica_states(replica: Replica, routed: bool, draining: bool) -> None:
    table = to_routing_table(state([srv("echo")], [replica]))
    endpoints = table.servers[0].endpoints
    assert bool(endpoints) == routed
    if routed:
        assert endpoints[0].draining == draining
    assert table.problems == ()


@pytest.mark.parametrize(
    ("replica", "field"),
    [
        pytest.param(rep("bad", port=0), "port", id="port-zero"),
        pytest.param(rep("bad", host="no such host!"), "address", id="bad-host"),
        pytest.param(rep("bad", weight=-3), "weight", id="negative-weight"),
        pytest.param(rep("bad", state="ZOMBIE"), "state", id="unknown-state"),
        pytest.param(rep("bad", region=""), "region", id="no-region"),
    ],
)
def test_a_malformed_replica_is_a_problem_and_the_rest_still_routes(
    replica: Replica, field: str
) -> None:
    table = to_routing_table(state([srv("echo")], [replica, rep("good", port=8082)]))
    assert [e.replica_id for e in table.servers[0].endpoints] == ["good"]
    [problem] = table.problems
    assert (problem.kind, problem.name, problem.field) == ("replica", "bad", field)


def test_an_unknown_protocol_leaves_only_that_server_out() -> None:
    table = to_routing_table(state([srv("echo"), srv("weird", protocol="ftp")], [rep("r1")]))
    assert [s.name for s in table.servers] == ["echo"]
    [problem] = table.problems
    assert (problem.name, problem.field, problem.value) == ("weird", "protocol", "ftp")


def test_a_hostname_claimed_twice_goes_to_the_first_server_by_name() -> None:
    table = to_routing_table(
        state([srv("beta", "shared.local", "beta.local"), srv("alpha", "shared.local")], []),
    )
    hosts = {s.name: s.hostnames for s in table.servers}
    assert hosts == {"alpha": ("shared.local",), "beta": ("beta.local",)}
    [problem] = table.problems
    assert (problem.name, problem.field, problem.value) == ("beta", "hostname", "shared.local")


def test_replicas_of_unknown_servers_are_problems() -> None:
    table = to_routing_table(state([], [rep("r1", server="ghost")]))
    [problem] = table.problems
    assert (problem.name, problem.field, problem.value) == ("r1", "server", "ghost")


@pytest.mark.parametrize(
    "edit",
    ["changed", "added", "removed", "first-changed", "last-removed", "regions-only"],
)
def test_evaluation_from_previous_verdicts_equals_a_fresh_one_and_judges_only_the_change(
    edit: str,
) -> None:
    server = srv("echo")
    rows = tuple(
        rep(f"r{i:02d}", port=8000 + i, state=("READY", "DRAINING")[i % 2]) for i in range(20)
    )
    _, verdicts = evaluate_with(server, rows)
    new = list(rows)
    if edit == "changed":
        new[7] = rep("r07", port=9999)
    elif edit == "added":
        new.insert(5, rep("r04a", region="us-east"))
    elif edit == "removed":
        del new[3]
    elif edit == "first-changed":
        new[0] = rep("r00", state="STARTING")
    elif edit == "last-removed":
        del new[-1]
    else:
        server = Server(
            name="echo", hostnames=("echo.local",), protocol="http", spec='{"regions": ["us-east"]}'
        )
        new[2] = rep("r02", region="us-east")
    after = tuple(new)
    ev, reused = evaluate_with(server, after, previous=(rows, verdicts))
    assert (ev, reused) == evaluate_with(server, after)
    # Rows equal to earlier ones kept their verdicts: the same endpoints, not judged again.
    old = dict(zip((row.id for row in rows), verdicts[0], strict=True))
    kept = [
        endpoint is old[row.id]
        for row, endpoint in zip(after, reused[0], strict=True)
        if row in rows and endpoint is not None
    ]
    assert kept
    assert all(kept)

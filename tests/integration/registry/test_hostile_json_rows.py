"""A spec column 1,000 levels deep or holding a float no spec should hold, written by another
writer, in both stores (Spanner through the real emulator): reads, the watch and routing never
raise, the row is a problem naming it, and writes of other servers (which check hostname
conflicts against it) go on (issue 23, items 1 and 2)."""

from __future__ import annotations

import json

import pytest

from control_plane.registry import Registry
from control_plane.registry.model import Server
from control_plane.routing.build import to_routing_table

DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        pytest.param(DEEP, "spec", "nested deeper than 32 levels", id="deep"),
        pytest.param(
            '{"a":' * 1000 + "1" + "}" * 1000, "spec", "nested deeper than 32 levels", id="deep-obj"
        ),
        pytest.param(
            json.dumps({"autoscaling": {"target_concurrency": 5e-324}}),
            "spec.autoscaling.target_concurrency",
            "expected 0 (off) or a number from 0.01 to 1e+06",
            id="tiny-target",
        ),
    ],
)
async def test_a_hostile_spec_row_is_a_problem_in_every_store(
    registry: Registry, spec: str, field: str, message: str
) -> None:
    registry.put_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    states = registry.watch(poll_interval=0.002)
    first = await anext(states)
    # As another writer would write it: put_servers takes rows as they are.
    registry.put_servers([Server(name="bad", hostnames=("bad.local",), protocol="http", spec=spec)])
    watched = await anext(states)
    assert watched.revision > first.revision
    await states.aclose()
    for state in (watched, registry.read_state()):
        table = to_routing_table(state)
        assert [s.name for s in table.servers] == ["echo"]
        (problem,) = table.problems
        assert (problem.name, problem.field, problem.message) == ("bad", field, message)
        assert len(problem.value) < 120
    assert {s.name for s in registry.list_servers()} == {"bad", "echo"}
    # Another server's write checks its hostnames against every row, this one included.
    _, outcome = registry.put_server(name="more", hostnames=["more.local"], protocol="http")
    assert outcome == "created"

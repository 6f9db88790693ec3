"""One pipeline step: servers whose rows are equal by value are reused, not evaluated again,
and the step's table equals a full build (the differential test checks this over random
sequences: ``test_differential.py``)."""

from __future__ import annotations

from control_plane.pipeline import Pipeline
from control_plane.registry.model import RegistryState
from control_plane.routing import to_routing_table
from tests.unit.routing.test_build import rep, srv, state


def test_a_pipeline_step_reuses_unchanged_servers_and_equals_a_full_build() -> None:
    servers = [srv("echo"), srv("api")]
    replicas = [rep("r1"), rep("r2", server="api")]
    pipeline = Pipeline()
    first = pipeline.step(state(servers, replicas), ()).table
    after = RegistryState.of(
        servers=servers,
        replicas=[*replicas, rep("r3", server="api", port=9000)],
        revision=2,
        committed_at=0.0,
    )
    step = pipeline.step(after, ())
    assert step.table == to_routing_table(after)
    assert step.changed_servers == {"api"}
    echo_before = next(s for s in first.servers if s.name == "echo")
    echo_after = next(s for s in step.table.servers if s.name == "echo")
    assert echo_after is echo_before
    assert [e.replica_id for e in step.table.servers[0].endpoints] == ["r2", "r3"]


def test_rows_equal_by_value_are_not_evaluated_again() -> None:
    pipeline = Pipeline()
    pipeline.step(state([srv("echo")], [rep("r1")]), ())
    # New objects, same values: nothing changed.
    assert pipeline.step(state([srv("echo")], [rep("r1")]), ()).changed_servers == frozenset()
    drained = pipeline.step(state([srv("echo")], [rep("r1", state="DRAINING")]), ())
    assert drained.changed_servers == {"echo"}
    assert drained.table.servers[0].endpoints[0].draining


def test_a_split_moving_changes_the_route_and_keeps_every_revisions_cluster() -> None:
    import json

    from control_plane.registry.model import Server
    from control_plane.xds.nodes import NodeGroup
    from control_plane.xds.resources import CLUSTER, ROUTE

    group = NodeGroup(cluster="edge", region="us-west")

    def split(v1: int) -> Server:
        traffic = [{"revision": "v1", "percent": v1}, {"revision": "v2", "percent": 100 - v1}]
        return Server(
            name="echo",
            hostnames=("echo.local",),
            protocol="http",
            spec=json.dumps({"traffic": traffic}),
        )

    replicas = [rep("r1", revision="v1"), rep("r2", port=8082, revision="v2")]
    pipeline = Pipeline()
    before = pipeline.step(state([split(90)], replicas), [group]).snapshots[group]
    assert sorted(before.of_type(CLUSTER)) == ["default_echo_rev_v1", "default_echo_rev_v2"]
    after = pipeline.step(state([split(50)], replicas), [group]).snapshots[group]
    assert after.changed is not None
    assert set(after.changed.get(ROUTE, ())) == {"ingress_http"}
    assert not after.changed.get(CLUSTER)
    for name, cluster in after.of_type(CLUSTER).items():
        assert cluster is before.of_type(CLUSTER)[name]

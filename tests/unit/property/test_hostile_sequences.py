"""Property tests over hostile sequences (issue 12): delta subscriptions with large and repeated
name sets, and many distinct nodes connecting and leaving. Nothing raises but the stream's own
limit error, what a stream or the cache holds stays bounded, and a healthy node group's
snapshot, in the same cache and pipeline, is unaffected."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.pipeline import Pipeline
from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.delta import DeltaStream
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import CLUSTER, ENDPOINT
from control_plane.xds.stream import LimitExceededError, Limits
from tests.xds_helpers import two_servers

LIMITS = Limits(max_names=500)
SNAPSHOT = two_servers()
name_sets = st.one_of(
    st.lists(st.sampled_from(["default_echo", "default_api", "*", "gone"]), max_size=6),
    st.integers(0, 800).map(lambda n: [f"junk-{i}" for i in range(n)]),  # large, repeated
)
delta_requests = st.builds(
    lambda type_url, subscribe, unsubscribe, initial: discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe,
        initial_resource_versions=dict.fromkeys(initial, "v"),
    ),
    st.sampled_from([CLUSTER, ENDPOINT, "type.googleapis.com/x.Y", ""]),
    name_sets,
    name_sets,
    name_sets,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(delta_requests, max_size=20))
def test_delta_subscriptions_of_any_size_stay_bounded(requests: list[object]) -> None:
    stream = DeltaStream(control_plane_id="cp", limits=LIMITS)
    for request in requests:
        refusal = ""
        try:
            stream.on_request(request)
        except LimitExceededError as exc:
            refusal = str(exc)
        if refusal:
            assert "at most 500" in refusal or "resource types" in refusal
            break  # the server ends the stream here
        stream.responses(SNAPSHOT)
    for status in stream.status.values():
        assert len(status.names) <= LIMITS.max_names
    for acked in stream.acked.values():
        assert len(acked) <= LIMITS.max_names
    assert len(stream.status) <= LIMITS.max_types
    # (A healthy proxy beside a hostile one, sharing the real server, is in
    # tests/integration/xds/test_hostile_streams.py.)


HEALTHY = NodeGroup(cluster="edge", region="us-west")
STATE = RegistryState.of(
    servers=[Server(name="echo", hostnames=("echo.local",), protocol="http")],
    replicas=[Replica(id="r1", server="echo", host="127.0.0.1", port=8081, region="us-west")],
    revision=1,
    committed_at=0.0,
)
nodes = st.builds(
    NodeGroup,
    cluster=st.sampled_from(["edge", "a", "b", "c", "d"]),
    region=st.sampled_from(["us-west", "us-east", "eu", ""]),
    zone=st.sampled_from(["", "a", "b"]),
    listen=st.sampled_from(["127.0.0.1:10000", "127.0.0.1:10001", "[::1]:1", "x:notaport"]),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), nodes), max_size=60))
def test_distinct_nodes_connecting_and_leaving_stay_within_the_caps(
    events: list[tuple[bool, NodeGroup]],
) -> None:
    now = [0.0]
    cache = SnapshotCache(grace_seconds=5, clock=lambda: now[0], max_groups=6)
    cache.max_groups_per_fleet = 3
    pipeline = Pipeline()
    keep = cache.watch(HEALTHY, lambda: None)
    healthy = pipeline.step(STATE, cache.wanted()).snapshots[HEALTHY]
    open_watches: dict[NodeGroup, list[object]] = {}
    for connect, group in events:
        now[0] += 1
        if connect:
            if cache.refusal(group):
                continue  # RESOURCE_EXHAUSTED: the server refuses the stream
            open_watches.setdefault(group, []).append(cache.watch(group, lambda: None))
        elif open_watches.get(group):
            open_watches[group].pop()()  # type: ignore[operator]
        cache.expire()
        wanted = cache.wanted()
        assert len(wanted) <= 6
        assert all(
            sum(1 for g in wanted if g.cluster == c) <= 3 for c in {g.cluster for g in wanted}
        )
        step = pipeline.step(STATE, wanted)
        assert step.snapshots[HEALTHY].version == healthy.version
        assert set(step.snapshots) | set(step.failures) == set(wanted)
    keep()

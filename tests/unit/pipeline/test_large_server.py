"""A change costs the change in a large server (issue 29): one long-lived pipeline driven through
random single-replica changes in one server of 1,000 replicas (three localities) gives, after
every step and for every view, byte-identical ClusterLoadAssignments to a rebuild from scratch
and to the message built field by field with the protobuf library; the same versions as the
rebuild; a version that moves exactly when the bytes do; and it encodes only the endpoints that
changed (the rest of the assignment is kept as parts and joined, and versioned from those
parts' digests, never by hashing the whole assignment)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.pipeline import Pipeline
from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.translate import endpoints as endpoint_encoding
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import ENDPOINT, content_hash
from control_plane.xds.snapshot import Snapshot
from tests.unit.translate.test_encoding import reference_load_assignment

SIZE = 1000
WHERE = [("us-west", "a"), ("us-west", "b"), ("us-east", "")]
GROUPS = frozenset(
    {
        NodeGroup(cluster="edge", region="us-west", zone="a"),
        NodeGroup(cluster="edge", region="us-east"),
        NodeGroup(cluster="edge", region="eu-central"),  # sees every locality at priority 1
    }
)
CLUSTER = "default_big"
SPECS = ["{}", json.dumps({"failover": "local_only"})]


def _replica(i: int, **changes: object) -> Replica:
    region, zone = WHERE[i % len(WHERE)]
    row = Replica(
        id=f"r{i:05d}",
        server="big",
        host=f"10.0.{i // 250}.{i % 250}",
        port=8000 + i % 50,
        region=region,
        zone=zone,
        weight=100,
    )
    return replace(row, **changes)  # type: ignore[arg-type]


edits = st.tuples(
    st.sampled_from(["port", "drain", "ready", "remove", "add", "weight", "zone", "spec"]),
    st.integers(0, SIZE * 2),
)


class Model:
    def __init__(self) -> None:
        self.server = Server(name="big", hostnames=("big.local",), protocol="http")
        self.replicas = {r.id: r for r in map(_replica, range(SIZE))}
        self.revision = 1
        self.added = SIZE

    def apply(self, kind: str, n: int) -> None:
        ids = sorted(self.replicas)
        target = self.replicas[ids[n % len(ids)]] if ids else None
        if kind == "add" or target is None:
            self.added += 1
            fresh = _replica(self.added, host=f"10.9.{self.added // 250}.{self.added % 250}")
            self.replicas[fresh.id] = fresh
        elif kind == "remove":
            del self.replicas[target.id]
        elif kind == "spec":
            self.server = replace(self.server, spec=SPECS[n % len(SPECS)])
        else:
            changes: dict[str, object] = {
                "port": {"port": 9000 + n % 1000},
                "drain": {"state": "DRAINING"},
                "ready": {"state": "READY"},
                "weight": {"weight": n % 300},
                "zone": {"region": WHERE[n % 3][0], "zone": WHERE[n % 3][1]},
            }[kind]
            self.replicas[target.id] = replace(target, **changes)  # type: ignore[arg-type]
        self.revision += 1

    def state(self) -> RegistryState:
        return RegistryState.of(
            servers=[self.server],
            replicas=self.replicas.values(),
            revision=self.revision,
            committed_at=float(self.revision),
        )


def _assignments(snapshots: dict[NodeGroup, Snapshot]) -> dict[NodeGroup, tuple[str, bytes]]:
    out = {}
    for group, snapshot in snapshots.items():
        resource = snapshot.of_type(ENDPOINT)[CLUSTER]
        out[group] = (resource.version, resource.any_bytes)
    return out


@pytest.fixture
def encoded_endpoints(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The replica ids of the endpoints encoded (``lb_endpoint_field`` calls)."""
    seen: list[str] = []
    encode = endpoint_encoding.lb_endpoint_field

    def counted(endpoint: endpoint_encoding.Endpoint) -> bytes:
        seen.append(endpoint.replica_id)
        return encode(endpoint)

    monkeypatch.setattr(endpoint_encoding, "lb_endpoint_field", counted)
    return seen


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=st.lists(edits, min_size=1, max_size=10))
def test_incremental_changes_in_a_server_of_1000_equal_a_rebuild_byte_for_byte(
    encoded_endpoints: list[str], sequence: list[tuple[str, int]]
) -> None:
    model = Model()
    pipeline = Pipeline()
    first = pipeline.step(model.state(), GROUPS)
    last, parents = _assignments(dict(first.snapshots)), dict(first.snapshots)
    for kind, n in sequence:
        before = dict(model.replicas)
        model.apply(kind, n)
        state = model.state()
        encoded_endpoints.clear()
        step = pipeline.step(state, GROUPS)
        # Only what changed is encoded: at most the one replica this edit touched (a spec
        # change re-encodes nothing: endpoints are the same values).
        changed = (model.replicas.keys() | before.keys()) - {
            rid for rid, row in model.replicas.items() if before.get(rid) == row
        }
        assert set(encoded_endpoints) <= changed, (kind, n)
        assert len(encoded_endpoints) <= 1, (kind, n)
        rebuild = Pipeline().step(state, GROUPS)
        now = _assignments(dict(step.snapshots))
        assert now == _assignments(dict(rebuild.snapshots)), (kind, n)
        routed = step.table.servers[0]
        for group, (version, any_bytes) in now.items():
            snapshot = step.snapshots[group]
            payload = snapshot.of_type(ENDPOINT)[CLUSTER].message.SerializeToString(
                deterministic=True
            )
            expected = reference_load_assignment(routed, region=group.region, zone=group.zone)
            assert payload == expected.SerializeToString(deterministic=True), (group, kind)
            # The version moves exactly when the bytes do, and the snapshot names it then.
            moved = last[group][1] != any_bytes
            assert (last[group][0] != version) == moved, (group, kind)
            if snapshot.parent_version == parents[group].version:
                assert (CLUSTER in (snapshot.changed or {}).get(ENDPOINT, ())) == moved
            else:  # nothing changed for this group: the same snapshot again
                assert snapshot is parents[group]
                assert not moved
            # Versioned from the parts' digests, not by hashing the whole payload.
            assert version != content_hash(ENDPOINT.encode(), payload)
        last, parents = now, dict(step.snapshots)

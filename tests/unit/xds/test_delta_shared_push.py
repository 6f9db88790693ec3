"""Property test of the shared delta push (issue 17, CPU per stream per push): streams synced to
the parent snapshot reuse one computed push (its encoding with only the nonce spliced in, and the
state it leaves) instead of each computing it. Differential: a fleet of streams taking that path
and a twin fleet always computing theirs, fed the same requests (subscriptions, ACKs, NACKs,
unanswered responses) and the same chain of snapshots, send the same bytes and hold the same
state. (Types the snapshot did not change take a shorter path still, covered alike.)"""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.xds import delta
from control_plane.xds.delta import DeltaState, DeltaStream
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control_plane.xds.snapshot import Snapshot
from control_plane.xds.stream import Outgoing
from tests.unit.xds.test_delta_versions import SNAPSHOTS


class Computing(DeltaStream):
    """A delta stream that never takes the shared path."""

    def _response_for(
        self, type_url: str, state: DeltaState, snapshot: Snapshot
    ) -> Outgoing | None:
        return self._compute(type_url, state, snapshot)


subscriptions = st.sampled_from(
    [
        {CLUSTER: [], ENDPOINT: ["default_a", "default_b", "default_c", "default_d"]},
        {CLUSTER: [], ENDPOINT: ["default_a", "default_b"]},
        {ENDPOINT: ["default_b", "default_d", "gone"]},
        {CLUSTER: ["default_a"], ENDPOINT: ["*"], LISTENER: [], ROUTE: ["*"]},
    ]
)
# What a stream does with each response: ACK it, NACK it, or leave it unanswered.
answers = st.lists(st.sampled_from(["ack", "ack", "ack", "nack", "none"]), min_size=1, max_size=8)
# Which snapshot each step publishes: mostly the next of the chain, sometimes a jump or a repeat.
steps = st.lists(st.integers(0, len(SNAPSHOTS) - 1), min_size=1, max_size=8)


def _answer(stream: DeltaStream, outgoing: list[Outgoing], how: str) -> None:
    for response in outgoing:
        if how == "none":
            continue
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
        if how == "nack":
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message="no"))
        stream.on_request(request)


def _state(stream: DeltaStream) -> Any:
    return (
        stream.acked,
        {t: s.known() for t, s in stream._types.items()},
        {
            t: [(n, p.sent, p.removed, p.version) for n, p in s.pending.items()]
            for t, s in stream._types.items()
        },
        {
            t: (
                s.status.sent_version,
                s.status.acked_version,
                s.status.pushes,
                s.status.resources_sent,
                s.status.state,
            )
            for t, s in stream._types.items()
        },
    )


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(subscriptions, answers), min_size=1, max_size=6), steps)
def test_shared_pushes_send_and_keep_what_computing_each_would(
    fleet: list[tuple[dict[str, list[str]], list[str]]], published: list[int]
) -> None:
    delta._SHARED.clear()
    pairs = []
    for subscription, _ in fleet:
        pair = (DeltaStream(control_plane_id="cp"), Computing(control_plane_id="cp"))
        for stream in pair:
            for type_url, names in subscription.items():
                stream.on_request(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=type_url, resource_names_subscribe=names
                    )
                )
        pairs.append(pair)
    for step, index in enumerate([0, *published]):
        snapshot = SNAPSHOTS[index]
        for (shared, computing), (_, how) in zip(pairs, fleet, strict=True):
            got, expected = shared.responses(snapshot), computing.responses(snapshot)
            assert [(o.payload, o.nonce, o.resource_names, o.removed) for o in got] == [
                (o.payload, o.nonce, o.resource_names, o.removed) for o in expected
            ]
            answer = how[step % len(how)]
            _answer(shared, got, answer)
            _answer(computing, expected, answer)
            assert _state(shared) == _state(computing)


def test_a_synced_fleet_shares_one_computed_push() -> None:
    delta._SHARED.clear()
    streams = [DeltaStream(control_plane_id="cp") for _ in range(3)]
    for stream in streams:
        stream.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER))
        stream.on_request(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=ENDPOINT,
                resource_names_subscribe=["default_a", "default_b", "default_c"],
            )
        )
        _answer(stream, stream.responses(SNAPSHOTS[0]), "ack")
    pushes = [stream.responses(SNAPSHOTS[1]) for stream in streams]
    # One entry for the whole fleet (as Envoy does, subscribed to every cluster's endpoints),
    # for the type that changed (EDS); a type that did not (CDS) needs none. The same bytes
    # but the nonce.
    assert [key[1] for key in delta._SHARED.cached() if key[0] == SNAPSHOTS[1].version] == [
        ENDPOINT
    ]
    assert [o.resource_names for [o] in pushes] == [["default_a"]] * 3
    assert len({o.payload.replace(o.nonce.encode(), b"") for [o] in pushes}) == 1


def test_the_shared_pushes_stay_within_their_bounds() -> None:
    shared = delta._SharedPushes(max_entries=3, max_bytes=100)
    entry = delta._Shared(
        send=True,
        to_send=[],
        removed=[],
        sent={},
        own=None,
        unacked=None,
        base={},
        base_version=None,
        head=b"x" * 60,
        tail=b"",
        resource_names=[],
    )
    for i in range(10):
        shared.put((i,), entry)
        assert len(shared.cached()) <= 2  # a second entry brings it to 120 bytes: emptied next
    assert shared.get((9,)) is entry

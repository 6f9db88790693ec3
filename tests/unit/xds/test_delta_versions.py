"""Property test of a delta stream's per-type versions (issue 17, memory per stream): what the
proxy was sent is kept as a snapshot's resources shared between streams plus this stream's
differences, what it ACKed as the differences from that, and both read back exactly as two
plain dicts updated the obvious way would, after any sequence of sends, ACKs, removals,
unsubscriptions, initial versions and re-basings onto snapshots (related or not)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control_plane.pipeline import Pipeline
from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.xds.delta import DeltaState
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import ENDPOINT
from control_plane.xds.snapshot import Snapshot

GROUP = NodeGroup(cluster="edge", region="us-west")


def _chain() -> list[Snapshot]:
    """Four snapshots, each built from the one before (so each knows what it changed), each
    changing some assignments and not others."""
    pipeline = Pipeline()
    snapshots = []
    steps = [
        {"a": 1, "b": 1, "c": 1},
        {"a": 2, "b": 1, "c": 1},
        {"a": 2, "b": 2, "d": 1},
        {"a": 3, "b": 2, "d": 1},
    ]
    for revision, ports in enumerate(steps, start=1):
        state = RegistryState.of(
            servers=[Server(name=s, hostnames=(f"{s}.local",), protocol="http") for s in ports],
            replicas=[
                Replica(id=s, server=s, host="127.0.0.1", port=8000 + p, region="us-west")
                for s, p in ports.items()
            ],
            revision=revision,
            committed_at=0.0,
        )
        snapshots.append(pipeline.step(state, [GROUP]).snapshots[GROUP])
    return snapshots


SNAPSHOTS = _chain()
names = st.sampled_from(["default_a", "default_b", "default_c", "default_d", "gone"])
# The snapshots' own versions (so a stream's entries match a base) and any a proxy may claim.
versions = st.sampled_from(
    sorted({r.version for s in SNAPSHOTS for r in s.of_type(ENDPOINT).values()} | {"1", ""})
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set_acked"), names, versions),
        st.tuples(st.just("drop"), names),
        st.tuples(st.just("send"), names, versions),
        st.tuples(st.just("forget_sent"), names),
        st.tuples(
            st.just("ack"),
            st.dictionaries(names, versions, max_size=3),
            st.lists(names, max_size=2),
        ),
        st.tuples(st.just("rebase"), st.sampled_from(range(len(SNAPSHOTS))), st.booleans()),
    ),
    max_size=40,
)


@given(operations)
def test_sent_and_acked_read_back_as_two_plain_dicts_whatever_they_are_based_on(
    steps: list[tuple[object, ...]],
) -> None:
    state = DeltaState()
    known: dict[str, str] = {}
    acked: dict[str, str] = {}
    for step in steps:
        match step:
            case ("set_acked", str(name), str(version)):
                state.set_acked(name, version)
                known[name] = acked[name] = version
            case ("drop", str(name)):
                state.drop(name)
                known.pop(name, None)
                acked.pop(name, None)
            case ("send", str(name), str(version)):
                state.send(name, version)
                known[name] = version
            case ("forget_sent", str(name)):
                assert state.forget_sent(name) == (name in known)
                known.pop(name, None)
            case ("ack", dict(sent), list(removed)):
                # A response's removals are names it did not send.
                gone = [n for n in removed if n not in sent]
                state.ack(sent, gone)
                acked.update(sent)
                for name in gone:
                    acked.pop(name, None)
            case ("rebase", int(index), bool(full)):
                state.rebase(SNAPSHOTS[index], ENDPOINT, full=full)
        assert state.known() == known
        assert all(state.known_version(n) == known.get(n) for n in ["default_a", "gone"])
        assert sorted(state.known_names()) == sorted(known)
        assert state.acked() == acked
        # Nothing kept besides what was sent when the proxy ACKed all of it.
        assert (state.unacked is None) == (acked == known)
        assert state.own is None or all(
            v != (state.base[n].version if n in state.base else None) for n, v in state.own.items()
        )


def test_a_stream_synced_to_a_snapshot_keeps_no_versions_of_its_own() -> None:
    state = DeltaState()
    first, second = SNAPSHOTS[0], SNAPSHOTS[1]
    for name, resource in first.of_type(ENDPOINT).items():
        state.send(name, resource.version)
    state.rebase(first, ENDPOINT, full=True)
    assert state.own is None
    assert state.base is first.of_type(ENDPOINT)
    # The next snapshot changed one assignment: sent, then based on it at O(changes).
    for name in second.changed[ENDPOINT]:  # type: ignore[index]
        state.send(name, second.of_type(ENDPOINT)[name].version)
    state.rebase(second, ENDPOINT, full=False)
    assert state.own is None
    assert state.base is second.of_type(ENDPOINT)

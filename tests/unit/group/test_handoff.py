"""The watcher -> worker hand-off (``group/handoff.py``): every change reaches a worker once and
in order, whatever the channel does (duplicates, lost messages, a dead watcher replaced by a
new one), and the worker ends with the registry's state; frames round-trip and bad ones are
refused naming the field."""

from __future__ import annotations

import contextlib
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.group.handoff import (
    MAX_FRAME_BYTES,
    Follower,
    HandOffError,
    Message,
    OutOfSync,
    Publisher,
    apply,
    decode,
    delta_message,
    encode,
    frame_length,
    same_rows,
)
from control_plane.registry.model import RegistryState, Replica, Server, group_replicas

SERVERS = [f"s{i}" for i in range(4)]
REPLICAS = [f"r{i}" for i in range(8)]

servers = st.builds(
    Server,
    name=st.sampled_from(SERVERS),
    hostnames=st.lists(st.sampled_from(["a.local", "b.local", "c.local"]), max_size=2).map(tuple),
    protocol=st.sampled_from(["http", "grpc"]),
    spec=st.sampled_from(["{}", '{"retries": 2}']),
    updated_at=st.floats(0, 1e9),
)
replicas = st.builds(
    Replica,
    id=st.sampled_from(REPLICAS),
    server=st.sampled_from([*SERVERS, "unknown"]),
    host=st.sampled_from(["127.0.0.1", "::1"]),
    port=st.integers(1, 65535),
    region=st.sampled_from(["us-west", "us-east"]),
    weight=st.integers(1, 100),
    state=st.sampled_from(["READY", "DRAINING", "STARTING"]),
    lease_expires_at=st.one_of(st.none(), st.floats(0, 1e9)),
    revision=st.sampled_from(["", "v1"]),
)
rows = st.tuples(
    st.lists(servers, max_size=4, unique_by=lambda s: s.name),
    st.lists(replicas, max_size=8, unique_by=lambda r: r.id),
)


def state(servers: list[Server], replicas: list[Replica], revision: int) -> RegistryState:
    return RegistryState.of(
        servers=servers, replicas=replicas, revision=revision, committed_at=float(revision)
    )


@given(a=rows, b=rows)
def test_a_delta_applied_to_the_state_before_it_gives_the_state_after(a: tuple, b: tuple) -> None:
    before, after = state(*a, revision=1), state(*b, revision=2)
    message = delta_message(before, after, epoch="e", seq=2)
    assert apply(before, message) == after
    assert decode(encode(message)[4:]) == message


# What the channel between a watcher and a worker does to each message.
DELIVER, DUPLICATE, LOSE, RECONNECT, WATCHER_DIES = range(5)
faults = st.sampled_from([DELIVER] * 6 + [DUPLICATE, LOSE, RECONNECT, WATCHER_DIES])


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(st.tuples(rows, faults), min_size=1, max_size=25),
    per_process_revisions=st.booleans(),
)
def test_every_change_reaches_a_worker_once_in_order_and_it_ends_at_the_registrys_state(
    history: list[tuple[tuple, int]], per_process_revisions: bool
) -> None:
    """The watcher reads each registry state in turn and publishes it; the channel delivers,
    repeats or loses the message, the worker reconnects, or the watcher dies and a new one
    (a new epoch, and with a Spanner-like store its own revision numbers) starts from the
    registry's current state. The worker hands on a subsequence of the registry's states, in
    order, none twice, with rising revisions, and after the last delivery it has the last."""
    epochs = iter(f"epoch{i}" for i in range(100))
    publisher = Publisher(next(epochs))
    follower = Follower()
    read: list[RegistryState] = []  # every state the registry went through, in order
    handed: list[RegistryState] = []
    local_revision = 0

    def receive(message: Message | None) -> None:
        if message is None:
            return
        try:
            got = follower.take(message)
        except OutOfSync:  # the worker reconnects: the watcher's current state in full
            got = follower.take(publisher.current())  # type: ignore[arg-type]
        if got is not None:
            handed.append(got)

    for index, ((server_rows, replica_rows), fault) in enumerate(history):
        local_revision += 1
        revision = local_revision if per_process_revisions else index + 1
        current = state(server_rows, replica_rows, revision)
        read.append(current)
        if fault == WATCHER_DIES:
            publisher = Publisher(next(epochs))
            local_revision = 1
            current = state(server_rows, replica_rows, 1 if per_process_revisions else index + 1)
            publisher.publish(current)
            receive(publisher.current())  # the worker reconnects to the new watcher
            continue
        message = publisher.publish(current)
        if fault == LOSE:
            continue
        receive(message)
        if fault == DUPLICATE:
            receive(message)
        elif fault == RECONNECT:
            receive(publisher.current())
    receive(publisher.current())  # a last reconnect, so a final lost delta is made good

    position = -1
    for got in handed:
        later = [i for i in range(position + 1, len(read)) if same_rows(read[i], got)]
        assert later, f"handed a state the registry never had after position {position}"
        assert not (position >= 0 and same_rows(read[position], got)), "handed twice"
        position = later[0]
    assert [s.revision for s in handed] == sorted({s.revision for s in handed})
    assert follower.delivered is not None
    assert same_rows(follower.delivered, read[-1])


def test_a_new_watcher_with_the_same_rows_hands_on_nothing() -> None:
    rows = state([Server(name="s0", hostnames=("a",), protocol="http")], [], revision=7)
    follower = Follower()
    first = Publisher("one")
    assert follower.take(first.publish(rows)) == rows  # type: ignore[arg-type]
    second = Publisher("two")
    second.publish(state(list(rows.servers), [], revision=1))
    assert follower.take(second.current()) is None  # type: ignore[arg-type]
    # The next change gets a revision above the one handed on, not the new watcher's 2.
    changed = state([], [], revision=2)
    got = follower.take(second.publish(changed))  # type: ignore[arg-type]
    assert got is not None
    assert got.revision == 8
    assert got.servers == ()


def test_a_delta_after_a_gap_or_from_another_watcher_is_out_of_sync() -> None:
    publisher = Publisher("one")
    follower = Follower()
    follower.take(publisher.publish(state([], [], 1)))  # type: ignore[arg-type]
    publisher.publish(state([Server(name="a", hostnames=(), protocol="http")], [], 2))
    third = publisher.publish(state([], [], 3))
    with pytest.raises(OutOfSync, match="message 3 after 1"):
        follower.take(third)  # type: ignore[arg-type]
    other = Message(epoch="two", seq=2, full=False)
    with pytest.raises(OutOfSync, match="a delta of watcher two before its full state"):
        follower.take(other)


def test_a_publisher_sends_nothing_when_no_row_changed() -> None:
    publisher = Publisher("one")
    assert publisher.publish(state([], [], 1)) is not None
    assert publisher.publish(state([], [], 2)) is None
    assert publisher.seq == 1


def test_frames_round_trip_full_states_with_every_field() -> None:
    replica = Replica(
        id="r1",
        server="s0",
        host="::1",
        port=8080,
        region="us-west",
        zone="a",
        weight=7,
        state="DRAINING",
        lease_expires_at=12.5,
        updated_at=3.0,
        revision="v2",
        registered_at=1.0,
    )
    server = Server(
        name="s0", workspace="w", hostnames=("x", "y"), protocol="grpc", spec='{"a": 1}'
    )
    publisher = Publisher("one")
    message = publisher.publish(state([server], [replica], 4))
    assert message is not None
    frame = encode(message)
    assert frame_length(frame[:4]) == len(frame) - 4
    assert decode(frame[4:]) == message
    assert group_replicas([replica]) == decode(frame[4:]).replicas


BAD_FRAMES = {
    "not json": (b"{", "invalid frame: not JSON"),
    "not an object": (b"[1]", "invalid frame: expected an object, got list"),
    "seq as text": (b'{"epoch": "e", "seq": "1", "full": true}', "invalid seq '1'"),
    "a replica port as text": (
        json.dumps(
            {
                "epoch": "e",
                "seq": 1,
                "full": True,
                "revision": 1,
                "committed_at": 0,
                "servers": [],
                "gone_servers": [],
                "replicas": {"s": [["r1", "h", "80", "us", "", 1, "READY", None, 0, "", 0]]},
                "gone_replicas": {},
                "gone_keys": [],
            }
        ).encode(),
        "invalid replicas.port '80' of r1",
    ),
    "a server row too short": (
        json.dumps(
            {
                "epoch": "e",
                "seq": 1,
                "full": True,
                "revision": 1,
                "committed_at": 0,
                "servers": [["s0"]],
                "gone_servers": [],
                "replicas": {},
                "gone_replicas": {},
                "gone_keys": [],
            }
        ).encode(),
        "invalid servers row ['s0']: expected 7 fields",
    ),
}


@pytest.mark.parametrize(("body", "error"), BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_a_bad_frame_is_refused_naming_the_field(body: bytes, error: str) -> None:
    with pytest.raises(HandOffError, match=error.replace("[", r"\[").replace("]", r"\]")):
        decode(body)


def test_a_frame_past_the_bound_is_refused_before_it_is_read() -> None:
    with pytest.raises(HandOffError, match=f"at most {MAX_FRAME_BYTES} bytes"):
        frame_length((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))


@given(st.binary(max_size=200) | st.text(string.printable, max_size=200).map(str.encode))
def test_any_frame_body_decodes_or_is_refused_with_hand_off_error(body: bytes) -> None:
    with contextlib.suppress(HandOffError):
        decode(body)

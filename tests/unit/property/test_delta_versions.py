"""Property test of a delta stream's per-type versions (issue 17, memory per stream): what the
proxy ACKed is kept only where it differs from what it was sent, and reads back exactly as two
plain dicts updated the obvious way would, after any sequence of sends, ACKs, removals,
unsubscriptions and initial versions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control_plane.xds.delta import DeltaState

names = st.sampled_from(["a", "b", "c", "d"])
versions = st.sampled_from(["1", "2", ""])  # a proxy may claim any version, even ""
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
    ),
    max_size=40,
)


@given(operations)
def test_acked_reads_back_as_two_plain_dicts_and_costs_nothing_once_all_is_acked(
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
        assert state.known == known
        assert state.acked() == acked
        # Nothing kept besides ``known`` when the proxy ACKed all of it.
        assert (state.unacked is None) == (acked == known)

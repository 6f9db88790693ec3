"""Name bytes (issue 23, item 10): a stream's names are bounded in length and in total bytes,
over every type, and a refused request leaves the stream as it was."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from control_plane.xds.delta import DeltaStream
from control_plane.xds.resources import CLUSTER, ENDPOINT, ROUTE
from control_plane.xds.sotw import SotwStream
from control_plane.xds.stream import LimitExceededError, Limits
from tests.xds_helpers import delta_request, sotw_request, two_servers

LIMITS = Limits(max_name_bytes=64, max_stream_name_bytes=1_000)


def names(prefix: str, count: int, size: int) -> tuple[str, ...]:
    return tuple(f"{prefix}-{i}-".ljust(size, "x") for i in range(count))


def delta() -> DeltaStream:
    return DeltaStream(control_plane_id="cp-test", limits=LIMITS)


def sotw() -> SotwStream:
    return SotwStream(control_plane_id="cp-test", limits=LIMITS)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        pytest.param(
            delta_request(ENDPOINT, subscribe=("ok", "a" * 65)),
            "a name of 65 bytes in resource_names_subscribe for ClusterLoadAssignment; at most 64",
            id="delta-subscribe",
        ),
        pytest.param(
            delta_request(CLUSTER, initial={"b" * 65: "v1"}),
            "a name of 65 bytes in initial_resource_versions for Cluster; at most 64",
            id="delta-initial-name",
        ),
        pytest.param(
            delta_request(CLUSTER, initial={"ok": "v" * 65}),
            "a name of 65 bytes in initial_resource_versions for Cluster; at most 64",
            id="delta-initial-version",
        ),
        pytest.param(
            delta_request(ENDPOINT, subscribe=("é" * 33,)),  # 33 characters, 66 bytes
            "a name of 66 bytes",
            id="utf8-bytes-not-characters",
        ),
    ],
)
def test_a_name_longer_than_the_bound_is_refused_naming_it(request_: object, message: str) -> None:
    stream = delta()
    with pytest.raises(LimitExceededError, match=message):
        stream.on_request(request_)
    assert stream.name_bytes == 0


def test_sotw_a_long_name_is_refused() -> None:
    with pytest.raises(LimitExceededError, match="a name of 65 bytes in resource_names for"):
        sotw().on_request(sotw_request(ENDPOINT, names=("a" * 65,)))


def test_delta_names_over_every_type_are_bounded_in_bytes_and_the_refusal_changes_nothing() -> None:
    stream = delta()
    stream.on_request(delta_request(ENDPOINT, subscribe=names("e", 10, 50)))  # 500 bytes
    stream.on_request(delta_request(ROUTE, subscribe=names("r", 9, 50)))  # 450 bytes
    assert stream.name_bytes == 950
    with pytest.raises(
        LimitExceededError,
        match=r"1050 bytes of resource names on one stream \(this request: "
        r"ClusterLoadAssignment\); at most 1000 bytes over all types",
    ):
        stream.on_request(delta_request(ENDPOINT, subscribe=names("more", 2, 50)))
    assert stream.name_bytes == 950
    assert len(stream.status[ENDPOINT].names) == 10


def test_delta_unsubscribing_gives_the_bytes_back_and_names_held_are_not_counted_twice() -> None:
    stream = delta()
    first = names("e", 10, 50)
    stream.on_request(delta_request(ENDPOINT, subscribe=first))
    stream.on_request(delta_request(ENDPOINT, subscribe=first))  # the same names again
    assert stream.name_bytes == 500
    stream.on_request(delta_request(ENDPOINT, unsubscribe=first[:4]))
    assert stream.name_bytes == 300
    # Room again: 300 + 700 = 1,000, the bound itself.
    stream.on_request(delta_request(ENDPOINT, subscribe=names("f", 14, 50)))
    assert stream.name_bytes == 1_000


def test_delta_initial_versions_count_their_names_and_versions() -> None:
    stream = delta()
    stream.on_request(delta_request(CLUSTER, initial={"a" * 40: "v" * 10, "b" * 40: "v" * 10}))
    assert stream.name_bytes == 100
    with pytest.raises(LimitExceededError, match="bytes of resource names on one stream"):
        delta().on_request(delta_request(CLUSTER, initial=dict.fromkeys(names("i", 20, 60), "v")))


def test_a_reconnect_naming_its_names_in_both_fields_counts_each_name_once() -> None:
    """Envoy reconnecting: ``resource_names_subscribe`` and ``initial_resource_versions`` list
    the same names; counted twice, a fleet well inside the bound was refused on every reconnect."""
    stream = delta()
    held = names("e", 15, 50)
    stream.on_request(delta_request(ENDPOINT, subscribe=held, initial=dict.fromkeys(held, "v1")))
    assert stream.name_bytes == 15 * 50 + 15 * 2  # names once, and their versions


def test_sotw_names_replace_the_types_bytes() -> None:
    stream = sotw()
    stream.on_request(sotw_request(ENDPOINT, names=names("e", 10, 50)))
    stream.on_request(sotw_request(ROUTE, names=names("r", 9, 50)))
    assert stream.name_bytes == 950
    stream.on_request(sotw_request(ENDPOINT, names=names("e", 2, 50)))
    assert stream.name_bytes == 550
    with pytest.raises(LimitExceededError, match="1050 bytes of resource names on one stream"):
        stream.on_request(sotw_request(ENDPOINT, names=names("e", 12, 50)))
    assert stream.name_bytes == 550
    assert len(stream.status[ENDPOINT].names) == 2


def test_what_a_closed_stream_held_is_freed() -> None:
    """Names of a stream that pushed (shared pushes, shared name sets, interned strings) do
    not outlive it: traced memory returns to where it was."""
    snap = two_servers()
    limits = Limits(max_name_bytes=1_000, max_names=2_000)
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for round_ in range(3):
            stream = DeltaStream(control_plane_id="cp-test", limits=limits)
            stream.on_request(delta_request(ENDPOINT, subscribe=names(f"n{round_}", 1_000, 1_000)))
            [out] = stream.responses(snap)
            stream.on_request(delta_request(ENDPOINT, nonce=out.nonce))
            stream.responses(snap)
            del stream, out
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    # 3 MB of names went through; what is left is small change.
    assert held < 200_000, f"{held} bytes still held after the streams closed"

"""The book of load reports: sums across proxies, never counts a proxy twice, ignores what
routeplane does not serve, clips absurd counters and never raises on a report's content."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import load_report_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.load.reports import MAX_COUNT, Catalog, LoadBook

CATALOG = Catalog(
    servers={"default_echo": "echo"},
    regions={"default_echo": frozenset({"us-west", "us-east"})},
    endpoints={"default_echo": {("127.0.0.1", 8081): ("r1", "us-west")}},
)


def stats(
    *,
    cluster: str = "default_echo",
    region: str = "us-west",
    in_flight: int = 0,
    issued: int = 0,
    errors: int = 0,
    seconds: float = 1.0,
    endpoint: str = "127.0.0.1:8081",
) -> load_report_pb2.ClusterStats:
    host, port = endpoint.rsplit(":", 1)
    report = load_report_pb2.ClusterStats(cluster_name=cluster)
    report.load_report_interval.FromNanoseconds(int(seconds * 1e9))
    locality = report.upstream_locality_stats.add(
        locality=base_pb2.Locality(region=region),
        total_requests_in_progress=in_flight,
        total_issued_requests=issued,
        total_error_requests=errors,
    )
    locality.upstream_endpoint_stats.add(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=host, port_value=int(port))
        ),
        total_requests_in_progress=in_flight,
        total_issued_requests=issued,
    )
    return report


def record(book: LoadBook, node: str, *reports: object, stream: int = 1, now: float = 0.0) -> None:
    book.record(node, reports, stream=stream, now=now, asked_interval=1.0, catalog=CATALOG)


def test_proxies_are_summed_per_server_region_and_replica() -> None:
    book = LoadBook()
    record(book, "a", stats(in_flight=3, issued=20, errors=2, seconds=2.0))
    record(
        book,
        "b",
        stats(in_flight=2, issued=10),
        stats(region="us-east", in_flight=1, endpoint="127.0.0.9:1"),  # not a known replica
    )
    totals, replicas = book.loads()
    assert totals[("echo", "*")].in_flight == 6
    assert totals[("echo", "*")].requests_per_second == 20 / 2 + 10
    assert totals[("echo", "*")].errors_per_second == 1
    assert totals[("echo", "us-west")].in_flight == 5
    assert totals[("echo", "us-east")].in_flight == 1
    assert replicas["r1"].in_flight == 5


def test_a_proxy_that_reconnects_replaces_its_report_and_an_old_stream_end_does_not_drop_it() -> (
    None
):
    book = LoadBook()
    record(book, "a", stats(in_flight=3), stream=1)
    record(book, "a", stats(in_flight=4), stream=2)  # reconnected: same node id
    book.forget("a", stream=1)  # the old stream's end arrives late
    assert book.loads()[0][("echo", "*")].in_flight == 4
    book.forget("a", stream=2)
    assert book.loads()[0] == {}


def test_a_silent_proxy_expires_after_three_intervals() -> None:
    book = LoadBook()
    record(book, "a", stats(in_flight=3), now=0.0)
    assert book.expire(2.9) == []
    assert book.expire(3.1) == ["a"]


def test_what_is_not_served_is_ignored_and_counted_and_absurd_counters_clipped() -> None:
    book = LoadBook()
    record(
        book,
        "a",
        stats(cluster="default_nope", in_flight=5),
        stats(region="mars", in_flight=5),
        stats(endpoint="10.9.9.9:1", in_flight=1),
        stats(in_flight=2**63),
    )
    assert (book.ignored.clusters, book.ignored.localities, book.ignored.endpoints) == (1, 1, 1)
    assert book.ignored.clipped >= 1
    assert book.loads()[0][("echo", "*")].in_flight == 1 + MAX_COUNT


cluster_stats = st.builds(
    stats,
    cluster=st.sampled_from(["default_echo", "x", ""]),
    region=st.sampled_from(["us-west", "us-east", "", "\x00"]),
    in_flight=st.integers(0, 2**64 - 1),
    issued=st.integers(0, 2**64 - 1),
    errors=st.integers(0, 2**64 - 1),
    seconds=st.sampled_from([0.0, 1.0, 1e-9, 1e9, 315576000000.0]),
    endpoint=st.sampled_from(["127.0.0.1:8081", "[::1]:1", "1.2.3.4:65535"]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 3), st.lists(cluster_stats)),
        max_size=20,
    )
)
def test_any_sequence_of_reports_never_raises_and_stays_bounded(
    reports: list[tuple[str, int, list[load_report_pb2.ClusterStats]]],
) -> None:
    book = LoadBook()
    for now, (node, stream, items) in enumerate(reports):
        book.record(node, items, stream=stream, now=float(now), asked_interval=1.0, catalog=CATALOG)
        totals, _ = book.loads()
        assert book.proxies <= 3
        for load in totals.values():
            assert 0 <= load.in_flight <= 3 * 10 * MAX_COUNT
            assert load.requests_per_second >= 0

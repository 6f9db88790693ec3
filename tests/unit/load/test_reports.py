"""The book of load reports: sums across streams, lets no stream replace another's report,
ignores what routeplane does not serve, merges a report before bounding what one proxy can
contribute, and never raises on a report's content."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import load_report_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.load.reports import PER_PROXY, PER_SERVER, Catalog, LoadBook

CATALOG = Catalog(
    servers={"default_echo": "echo"},
    regions={"default_echo": frozenset({"us-west", "us-east"})},
    endpoints={"default_echo": {("127.0.0.1", 8081): ("r1", "us-west")}},
)
# A second server, with no ready replica (a drop there is a cold start).
IDLE_CATALOG = Catalog(
    servers={**CATALOG.servers, "default_gpu": "gpu"},
    regions={**CATALOG.regions, "default_gpu": frozenset({"us-west"})},
    endpoints={**CATALOG.endpoints, "default_gpu": {}},
    idle=frozenset({"default_gpu"}),
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
    dropped: int = 0,
) -> load_report_pb2.ClusterStats:
    host, port = endpoint.rsplit(":", 1)
    report = load_report_pb2.ClusterStats(cluster_name=cluster, total_dropped_requests=dropped)
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


def record(
    book: LoadBook,
    node: str,
    *reports: object,
    stream: int = 1,
    now: float = 0.0,
    catalog: Catalog = CATALOG,
) -> None:
    book.record(node, reports, stream=stream, now=now, asked_interval=1.0, catalog=catalog)


def test_proxies_are_summed_per_server_region_and_replica() -> None:
    book = LoadBook()
    record(book, "a", stats(in_flight=3, issued=20, errors=2, seconds=2.0))
    record(
        book,
        "b",
        stats(in_flight=2, issued=10),
        stats(region="us-east", in_flight=1, endpoint="127.0.0.9:1"),  # not a known replica
        stream=2,
    )
    totals, replicas = book.loads()
    assert totals[("echo", "*")].in_flight == 6
    assert totals[("echo", "*")].requests_per_second == 20 / 2 + 10
    assert totals[("echo", "*")].errors_per_second == 1
    assert totals[("echo", "us-west")].in_flight == 5
    assert totals[("echo", "us-east")].in_flight == 1
    assert replicas[("echo", "r1")].in_flight == 5


def test_a_stream_replaces_only_its_own_report_whatever_node_id_another_claims() -> None:
    book = LoadBook()
    record(book, "a", stats(in_flight=4), stream=1)
    record(book, "a", stats(in_flight=3), stream=1)  # its next report replaces its own
    assert book.loads()[0][("echo", "*")].in_flight == 3
    # Another stream claiming node "a" reports nothing in flight: it cannot hide a's load.
    record(book, "a", stats(issued=1), stream=2)
    assert book.loads()[0][("echo", "*")].in_flight == 3
    book.forget(2)
    assert book.loads()[0][("echo", "*")].in_flight == 3
    book.forget(1)
    assert book.loads()[0] == {}


def test_a_silent_stream_expires_after_three_intervals() -> None:
    book = LoadBook()
    record(book, "a", stats(in_flight=3), now=0.0)
    assert book.expire(2.9) == []
    assert book.expire(3.1) == ["a"]


def test_what_is_not_served_is_ignored_and_counted() -> None:
    book = LoadBook()
    record(
        book,
        "a",
        stats(cluster="default_nope", in_flight=5),
        stats(region="mars", in_flight=5),
        stats(endpoint="10.9.9.9:1", in_flight=1),
    )
    assert (book.ignored.clusters, book.ignored.localities, book.ignored.endpoints) == (1, 1, 1)
    assert book.ignored.clipped == 0
    assert book.loads()[0][("echo", "*")].in_flight == 1


def test_duplicated_entries_are_merged_before_the_per_server_bound() -> None:
    book = LoadBook()
    huge = stats(in_flight=10**7, issued=10**9, errors=10**9, dropped=10**9)
    record(book, "a", *[huge] * 1000)  # one locality and one cluster, 1,000 times
    record(book, "b", stats(in_flight=4, issued=8), stream=2)  # an honest proxy
    totals, replicas = book.loads()
    echo = totals[("echo", "*")]
    assert echo.in_flight == PER_SERVER.in_flight + 4
    assert echo.requests_per_second == PER_SERVER.requests_per_second + 8
    assert echo.errors_per_second == PER_SERVER.errors_per_second
    assert echo.dropped_per_second == PER_SERVER.dropped_per_second
    assert replicas[("echo", "r1")].in_flight == PER_SERVER.in_flight + 4
    assert book.ignored.clipped == 1  # one report clipped
    book.forget(1)
    assert book.loads()[0][("echo", "*")].in_flight == 4  # exactly: no float dust left


def test_one_proxy_contributes_at_most_its_total_bound_over_many_servers() -> None:
    servers = {f"default_s{i}": f"s{i}" for i in range(30)}
    catalog = Catalog(
        servers=servers,
        regions={name: frozenset({"us-west"}) for name in servers},
        endpoints={name: {} for name in servers},
    )
    book = LoadBook()
    record(book, "a", *[stats(cluster=name, in_flight=10**7) for name in servers], catalog=catalog)
    totals, _ = book.loads()
    in_flight = sum(load.in_flight for (_, region), load in totals.items() if region == "*")
    assert in_flight == pytest.approx(PER_PROXY.in_flight)
    assert all(load.in_flight <= PER_SERVER.in_flight for load in totals.values())


@pytest.mark.parametrize(
    ("cluster", "cold_starts"),
    [
        pytest.param("default_gpu", {"gpu": 5}, id="no ready replica: a drop is a cold start"),
        pytest.param("default_echo", {}, id="ready replicas: a drop is no cold start"),
    ],
)
def test_drops_are_cold_starts_only_for_a_server_with_no_ready_replica(
    cluster: str, cold_starts: dict[str, int]
) -> None:
    book = LoadBook()
    record(book, "a", stats(cluster=cluster, dropped=5), catalog=IDLE_CATALOG)
    assert book.cold_starts == cold_starts


def test_forged_drops_on_an_idle_server_count_at_most_the_bound() -> None:
    book = LoadBook()
    record(
        book, "a", *[stats(cluster="default_gpu", dropped=3 * 10**11)] * 10, catalog=IDLE_CATALOG
    )
    assert book.cold_starts["gpu"] <= PER_SERVER.dropped_per_second * 4  # <= 4 intervals


def test_a_claimed_tiny_interval_does_not_inflate_rates() -> None:
    book = LoadBook()
    record(book, "a", stats(issued=10, seconds=1e-9))
    assert book.loads()[0][("echo", "*")].requests_per_second == 10 / 0.25


cluster_stats = st.builds(
    stats,
    cluster=st.sampled_from(["default_echo", "default_gpu", "x", ""]),
    region=st.sampled_from(["us-west", "us-east", "", "\x00"]),
    in_flight=st.integers(0, 2**64 - 1),
    issued=st.integers(0, 2**64 - 1),
    errors=st.integers(0, 2**64 - 1),
    seconds=st.sampled_from([0.0, 1.0, 1e-9, 1e9, 315576000000.0]),
    endpoint=st.sampled_from(["127.0.0.1:8081", "[::1]:1", "1.2.3.4:65535"]),
    dropped=st.integers(0, 2**64 - 1),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 3), st.lists(cluster_stats)),
        max_size=20,
    )
)
def test_any_sequence_of_reports_never_raises_and_stays_within_the_bounds(
    reports: list[tuple[str, int, list[load_report_pb2.ClusterStats]]],
) -> None:
    book = LoadBook()
    for now, (node, stream, items) in enumerate(reports):
        book.record(
            node, items, stream=stream, now=float(now), asked_interval=1.0, catalog=IDLE_CATALOG
        )
        totals, replicas = book.loads()
        assert book.proxies <= 3  # one report per stream
        for load in totals.values():
            assert 0 <= load.in_flight <= 3 * PER_SERVER.in_flight
            assert 0 <= load.requests_per_second <= 3 * PER_SERVER.requests_per_second
            assert 0 <= load.errors_per_second <= 3 * PER_SERVER.errors_per_second
            assert 0 <= load.dropped_per_second <= 3 * PER_SERVER.dropped_per_second
        for load in replicas.values():
            assert 0 <= load.in_flight <= 3 * PER_SERVER.in_flight


@pytest.mark.parametrize("seconds", [0.643353683, 1.330542040, 3.175930101, 0.097, 1.0])
def test_one_drop_on_an_idle_server_is_one_cold_start_whatever_the_interval(
    seconds: float,
) -> None:
    # The drop is a rate (1 / interval) and back a count (rate * interval): for these intervals
    # the float product is 0.9999999999999999, which was truncated to no cold start at all.
    book = LoadBook()
    record(
        book, "a", stats(cluster="default_gpu", dropped=1, seconds=seconds), catalog=IDLE_CATALOG
    )
    assert book.cold_starts == {"gpu": 1}

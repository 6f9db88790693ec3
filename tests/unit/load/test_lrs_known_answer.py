"""Known answers for the load-report path of issue 29: the same reports (raw bytes as Envoy
sends them, its node in each) through the new path (the node skipped unparsed, endpoint
entries read only for the servers whose replicas are read, bounds checked by running sums, a
stream's totals moved by the difference) and through the old one (``lrs_oracle.py``: every
report parsed whole, every endpoint entry read, the old bounds and book) give the same totals:
in flight, requests, errors and drops per server and region, cold starts, and the per-replica
rows of the servers whose replicas are read (the others have none on the new path)."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import replace
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.load_stats.v3 import lrs_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.load.server import LoadService, catalog_of
from control_plane.registry.spec import Autoscaling
from control_plane.routing.model import Endpoint, RoutedServer
from harness.models import endpoint, server, table
from tests.unit.load.lrs_oracle import OldBook


def at(replica: str, port: int, *, region: str = "us-west", revision: str = "") -> Endpoint:
    return replace(endpoint(replica, port, region=region), revision=revision)


def ruled(made: RoutedServer, rule: Autoscaling) -> RoutedServer:
    return replace(made, spec=replace(made.spec, autoscaling=rule))


TABLE = table(
    # No rule: its replicas' load is not read.
    server("plain", at("p1", 8101), at("p2", 8102, region="us-east")),
    # A concurrency rule never below its ready replicas (a tiny target, at least 2): not read.
    ruled(
        server("up", at("u1", 8201), at("u2", 8202)),
        Autoscaling(target_concurrency=0.001, min_replicas=2, max_replicas=50),
    ),
    # A concurrency rule scaling down (a target no load here reaches): read, for candidates.
    ruled(
        server("down", at("d1", 8301), at("d2", 8302, region="us-east"), at("d3", 8303)),
        Autoscaling(target_concurrency=1e6, min_replicas=1, max_replicas=50),
    ),
    # Replicas with revisions: read (load by revision).
    server("rev", at("r1", 8401, revision="v1"), at("r2", 8402, revision="v2")),
)
READ = {"down", "rev"}
CATALOG = catalog_of(TABLE)
CLUSTERS = [*sorted(CATALOG.servers), "routeplane_xds", "default_nope"]
PORTS = {name: sorted(port for _, port in CATALOG.endpoints[name]) for name in CATALOG.servers}
NODE = base_pb2.Node(
    id="edge-1",
    cluster="edge",
    user_agent_name="envoy",
    extensions=[base_pb2.Extension(name=f"envoy.ext.{i}", category="c") for i in range(50)],
)


def request(entries: list[dict[str, Any]], *, nanos: int) -> bytes:
    """A LoadStatsRequest as Envoy sends one: its node first, then the clusters' entries."""
    message = lrs_pb2.LoadStatsRequest(node=NODE)
    for entry in entries:
        stats = message.cluster_stats.add(
            cluster_name=entry["cluster"], total_dropped_requests=entry["dropped"]
        )
        stats.load_report_interval.FromNanoseconds(nanos)
        locality = stats.upstream_locality_stats.add(
            locality=base_pb2.Locality(region=entry["region"]),
            total_requests_in_progress=entry["in_flight"],
            total_issued_requests=entry["issued"],
            total_error_requests=entry["errors"],
        )
        for point in entry["points"]:
            added = locality.upstream_endpoint_stats.add(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(
                        address="127.0.0.1", port_value=point["port"]
                    )
                ),
                total_requests_in_progress=point["in_flight"],
                total_issued_requests=point["issued"],
                total_error_requests=point["errors"],
            )
            if point["metric"] is not None:
                name, value, count = point["metric"]
                added.load_metric_stats.add(
                    metric_name=name,
                    total_metric_value=value,
                    num_requests_finished_with_metric=count,
                )
    return message.SerializeToString()


def _counts(high: int) -> st.SearchStrategy[int]:
    # Mostly small, sometimes past a bound (100,000 requests/s per server and proxy).
    return st.one_of(st.integers(0, 50), st.integers(0, high))


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    cluster = draw(st.sampled_from(CLUSTERS))
    ports = PORTS.get(cluster, [8101])
    points = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "port": st.sampled_from([*ports, 9999]),
                    "in_flight": _counts(20_000),
                    "issued": _counts(300_000),
                    "errors": _counts(300_000),
                    "metric": st.none()
                    | st.tuples(
                        st.sampled_from(["application_utilization", "cpu_utilization"]),
                        st.floats(0, 3),
                        st.integers(0, 5),
                    ),
                }
            ),
            max_size=4,
        )
    )
    return {
        "cluster": cluster,
        "region": draw(st.sampled_from(["us-west", "us-east", "mars"])),
        "in_flight": draw(_counts(20_000)),
        "issued": draw(_counts(300_000)),
        "errors": draw(_counts(300_000)),
        "dropped": draw(st.sampled_from([0, 0, 3, 200_000])),
        "points": points,
    }


reports = st.lists(
    st.tuples(
        st.integers(1, 3),  # the stream
        st.lists(entries(), max_size=6),
        st.sampled_from([500_000_000, 998_722_000, 1_000_000_000, 2_000_000_000]),
    ),
    min_size=1,
    max_size=8,
)


def services() -> tuple[LoadService, LoadService]:
    """The new path, and the old one (``OldBook``; every endpoint entry read)."""
    clock = [100.0]
    new = LoadService(table=lambda: TABLE, interval=1.0, clock=lambda: clock[0])
    old = LoadService(table=lambda: TABLE, interval=1.0, clock=lambda: clock[0])
    old.book = old.intake.book = OldBook()
    everything = dataclasses.replace(CATALOG, per_replica=None)
    old.intake._catalog = lambda: everything
    new.tick()  # the first tick: "down" is scaling down, its replicas are read from here
    old.tick()
    return new, old


def taken(sent: list[tuple[int, list[dict[str, Any]], int]]) -> tuple[LoadService, LoadService]:
    new, old = services()

    async def take() -> None:
        for stream, stats, nanos in sent:
            raw = request(stats, nanos=nanos)
            assert await new.intake._read("edge-1", raw, stream) is None
            assert (
                await old.intake._read("edge-1", lrs_pb2.LoadStatsRequest.FromString(raw), stream)
                is None
            )

    asyncio.run(take())
    return new, old


def assert_same(new: LoadService, old: LoadService) -> None:
    assert new.book.region_loads() == old.book.region_loads()
    assert new.book.cold_starts == old.book.cold_starts
    for name in ("plain", "up"):
        assert new.book.replica_loads(name) == []
    for name in READ:
        assert new.book.replica_loads(name) == old.book.replica_loads(name)
    new_rows, old_rows = new.tick(), old.tick()
    assert len(new_rows) == len(old_rows)
    for mine, theirs in zip(new_rows, old_rows, strict=True):
        if mine.server in READ:
            assert mine == theirs
        else:
            # The same row but its replicas (and, as a fallback only, their utilization).
            assert mine.replicas == ()
            assert replace(mine, utilization=None) == replace(
                theirs, replicas=(), utilization=None, revisions=mine.revisions
            )


@settings(max_examples=60, deadline=None)
@given(reports)
def test_the_new_path_gives_the_old_totals(sent: list[Any]) -> None:
    new, old = taken(sent)
    assert_same(new, old)


def test_known_totals_from_two_proxies() -> None:
    # Two proxies, one second each: "down" in us-west 3 + 2 in flight, 100 + 50 requests,
    # 4 + 1 errors; per replica d1: 2 in flight and 60 requests, d3: 30 requests.
    first = [
        {
            "cluster": "default_down",
            "region": "us-west",
            "in_flight": 3,
            "issued": 100,
            "errors": 4,
            "dropped": 0,
            "points": [
                {"port": 8301, "in_flight": 2, "issued": 40, "errors": 0, "metric": None},
                {"port": 8303, "in_flight": 0, "issued": 30, "errors": 0, "metric": None},
            ],
        },
        {
            "cluster": "default_plain",
            "region": "us-east",
            "in_flight": 7,
            "issued": 70,
            "errors": 0,
            "dropped": 0,
            "points": [{"port": 8102, "in_flight": 7, "issued": 70, "errors": 0, "metric": None}],
        },
    ]
    second = [
        {
            "cluster": "default_down",
            "region": "us-west",
            "in_flight": 2,
            "issued": 50,
            "errors": 1,
            "dropped": 0,
            "points": [{"port": 8301, "in_flight": 0, "issued": 20, "errors": 1, "metric": None}],
        }
    ]
    new, old = taken([(1, first, 1_000_000_000), (2, second, 1_000_000_000)])
    assert_same(new, old)
    loads = new.book.region_loads()
    west = loads[("down", "us-west")]
    assert (west.in_flight, west.requests_per_second, west.errors_per_second) == (5, 150, 5)
    assert loads[("plain", "us-east")].requests_per_second == 70
    assert new.book.replica_loads("down") == [
        ("d1", 2_000_000, 60_000_000, 1_000_000, 0, 0),
        ("d3", 0, 30_000_000, 0, 0, 0),
    ]
    assert new.book.replica_loads("plain") == []  # nothing reads its replicas
    # A proxy's next report replaces its own: stream 1 now reports "down" alone, smaller.
    again = [dict(first[0], in_flight=1, issued=10, errors=0, points=[])]
    new, old = taken(
        [(1, first, 1_000_000_000), (2, second, 1_000_000_000), (1, again, 1_000_000_000)]
    )
    assert_same(new, old)
    loads = new.book.region_loads()
    assert loads[("down", "us-west")].in_flight == 3
    assert ("plain", "us-east") not in loads
    assert new.book.replica_loads("down") == [("d1", 0, 20_000_000, 1_000_000, 0, 0)]

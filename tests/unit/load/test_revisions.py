"""Load by revision (issue 26): a replica's errors per second and its revision (from the
routing table, never from a report) reach the "*" row, which has one row per revision with a
ready replica or load; a server whose replicas carry no revision reads as before."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import load_report_pb2

from control_plane.load.server import LoadService
from control_plane.load.totals import (
    MAX_REVISION_ROWS,
    MILLION,
    RegionTotals,
    ReplicaTotals,
    RevisionRow,
    ServerTotals,
    revision_rows,
)
from control_plane.routing.model import Endpoint, RoutingTable
from harness.models import endpoint, server, table


def at(replica: str, port: int, revision: str, *, draining: bool = False) -> Endpoint:
    return replace(endpoint(replica, port, draining=draining), revision=revision)


def report(*points: tuple[int, int, int, int]) -> list[object]:
    """One ClusterStats for echo: per endpoint (port, in flight, issued, errors) over 1 s."""
    stats = load_report_pb2.ClusterStats(cluster_name="default_echo")
    stats.load_report_interval.FromNanoseconds(1_000_000_000)
    locality = stats.upstream_locality_stats.add(
        locality=base_pb2.Locality(region="us-west"),
        total_requests_in_progress=sum(p[1] for p in points),
        total_issued_requests=sum(p[2] for p in points),
        total_error_requests=sum(p[3] for p in points),
    )
    for port, in_flight, issued, errors in points:
        locality.upstream_endpoint_stats.add(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
            ),
            total_requests_in_progress=in_flight,
            total_issued_requests=issued,
            total_error_requests=errors,
        )
    return [stats]


def ticked(current: RoutingTable, *points: tuple[int, int, int, int]) -> LoadService:
    service = LoadService(table=lambda: current, clock=lambda: 100.0)
    service.tick()
    service.book.record(
        "proxy-1",
        report(*points),
        stream=1,
        now=100.0,
        asked_interval=1.0,
        catalog=service.catalog(),
    )
    service.tick()
    return service


def test_replicas_carry_their_errors_and_revision_and_the_row_has_them_by_revision() -> None:
    current = table(
        server(
            "echo",
            at("a1", 8081, "v1"),
            at("a2", 8082, "v1"),
            at("b1", 8083, "v2"),
            at("old", 8084, "v0", draining=True),
        )
    )
    # a1: 4 in flight; a2: 10/s; b1: 20/s of which 5 fail; old (draining) finishes 2/s.
    service = ticked(current, (8081, 4, 0, 0), (8082, 0, 10, 0), (8083, 0, 20, 5), (8084, 0, 2, 0))
    [total, *_] = service.rows_of("echo")
    assert total.region == "*"
    assert total.errors_per_second == 5
    assert total.replicas == (
        ReplicaTotals(replica="a1", in_flight=4 * MILLION, revision="v1"),
        ReplicaTotals(replica="a2", requests=10 * MILLION, revision="v1"),
        ReplicaTotals(replica="b1", requests=20 * MILLION, errors=5 * MILLION, revision="v2"),
        ReplicaTotals(replica="old", requests=2 * MILLION, revision="v0"),
    )
    assert total.revisions == (
        RevisionRow(revision="v0", ready_replicas=0, requests_per_second=2.0),
        RevisionRow(revision="v1", ready_replicas=2, in_flight=4.0, requests_per_second=10.0),
        RevisionRow(
            revision="v2", ready_replicas=1, requests_per_second=20.0, errors_per_second=5.0
        ),
    )
    [regional] = [r for r in service.rows_of("echo") if r.region != "*"]
    assert regional.revisions == ()  # the "*" row only


def test_replicas_from_older_writers_are_revision_empty_next_to_the_others() -> None:
    current = table(server("echo", at("a1", 8081, "v1"), at("x", 8082, "")))
    service = ticked(current, (8082, 0, 8, 1))
    [total, *_] = service.rows_of("echo")
    assert total.revisions == (
        RevisionRow(revision="", ready_replicas=1, requests_per_second=8.0, errors_per_second=1.0),
        RevisionRow(revision="v1", ready_replicas=1),
    )


def test_a_server_without_revisions_has_no_revision_rows_and_lists_no_ready_replicas() -> None:
    current = table(server("echo", endpoint("r1", 8081), endpoint("r2", 8082)))
    service = ticked(current, (8081, 1, 3, 1))
    [total, *_] = service.rows_of("echo")
    assert total.revisions == ()
    # Nothing reads its replicas (no autoscaling, utilization balancing or revisions): its
    # endpoint entries are not read (issue 29), so it has no replica rows; its load is whole.
    assert total.replicas == ()
    assert total.requests_per_second == 3
    # Without autoscaling and revisions, the totals carry no ready replicas (as before).
    assert service.totals().servers[0].ready_replicas == ()
    assert service.totals().servers[0].revisions == ()


def test_a_replica_with_only_errors_in_its_report_still_counts() -> None:
    # A request issued in one interval that fails in the next: errors, no new requests.
    current = table(server("echo", at("a1", 8081, "v1")))
    service = ticked(current, (8081, 0, 0, 3))
    [total, *_] = service.rows_of("echo")
    assert total.replicas == (ReplicaTotals(replica="a1", errors=3 * MILLION, revision="v1"),)
    assert total.revisions == (RevisionRow(revision="v1", ready_replicas=1, errors_per_second=3),)


def test_the_ready_replicas_totals_carry_the_revisions_of_every_ready_replica() -> None:
    current = table(
        server("echo", at("a1", 8081, "v1"), at("x", 8082, ""), at("d", 8083, "v9", draining=True))
    )
    service = ticked(current)
    [mine] = service.totals().servers
    assert mine.ready_replicas == (("a1", "us-west"), ("x", "us-west"))
    assert mine.revisions == (("a1", "v1"), ("x", ""))


def test_revision_rows_without_ready_revisions_count_the_ready_as_revision_empty() -> None:
    # A remote part's load names a revision the merged totals have no ready replica of.
    totals = ServerTotals(
        server="echo",
        regions=(RegionTotals(region="*", ready=3, requests=MILLION),),
        replicas=(ReplicaTotals(replica="z", requests=MILLION, revision="v2"),),
    )
    assert revision_rows(totals) == (
        RevisionRow(revision="", ready_replicas=3),
        RevisionRow(revision="v2", requests_per_second=1.0),
    )


def test_revision_rows_are_bounded_keeping_the_busiest() -> None:
    count = MAX_REVISION_ROWS + 10
    totals = ServerTotals(
        server="echo",
        regions=(RegionTotals(region="*", ready=count),),
        replicas=tuple(
            ReplicaTotals(replica=f"r{i:03}", requests=i * MILLION, revision=f"v{i:03}")
            for i in range(1, count + 1)
        ),
        ready_replicas=tuple((f"r{i:03}", "us-west") for i in range(1, count + 1)),
        revisions=tuple((f"r{i:03}", f"v{i:03}") for i in range(1, count + 1)),
    )
    rows = revision_rows(totals)
    assert len(rows) == MAX_REVISION_ROWS
    assert [r.revision for r in rows] == [f"v{i:03}" for i in range(11, count + 1)]


def test_the_wire_carries_errors_revisions_and_resends_ready_replicas_whose_revision_moved() -> (
    None
):
    from control_plane.admin.loadwire import TotalsFeed, totals_from

    current = [table(server("echo", at("a1", 8081, "v1"), at("b1", 8082, "v2")))]
    service = LoadService(table=lambda: current[0], clock=lambda: 100.0)
    service.tick()
    service.book.record(
        "proxy-1",
        report((8082, 1, 4, 2)),
        stream=1,
        now=100.0,
        asked_interval=1.0,
        catalog=service.catalog(),
    )
    service.tick()
    feed = TotalsFeed(service)
    taken: dict[str, ServerTotals] = {}

    def take() -> ServerTotals:
        for update in feed.updates():
            if update.HasField("totals"):
                for server_totals in totals_from(update.totals, taken).servers:
                    taken[server_totals.server] = server_totals
        return taken["echo"]

    first = take()
    assert first == service.totals().servers[0]
    assert first.revisions == (("a1", "v1"), ("b1", "v2"))
    assert first.replicas == (
        ReplicaTotals(
            replica="b1", in_flight=MILLION, requests=4 * MILLION, errors=2 * MILLION, revision="v2"
        ),
    )
    # The same replicas, b1 now at v3 (its row rewritten): the ready entries are sent again.
    current[0] = table(server("echo", at("a1", 8081, "v1"), at("b1", 8082, "v3")), revision=2)
    service.tick()
    assert take().revisions == (("a1", "v1"), ("b1", "v3"))
    # Only the load moves: the ready replicas go as sent, and are kept.
    service.book.record(
        "proxy-1",
        report((8082, 0, 9, 0)),
        stream=1,
        now=100.0,
        asked_interval=1.0,
        catalog=service.catalog(),
    )
    service.tick()
    again = take()
    assert again.revisions == (("a1", "v1"), ("b1", "v3"))
    assert again.replicas[0].requests == 9 * MILLION

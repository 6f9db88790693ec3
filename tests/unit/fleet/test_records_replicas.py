"""Published load records carry each replica's load and revision (issue 26), so that the
fleet's rows by replica and by revision add up every control plane's proxies; what one record
claims for its replicas is bounded (sums, count, names) and reported when cut."""

from __future__ import annotations

from control_plane.admin.loadwire import totals_message
from control_plane.fleet.records import MAX_RECORD_REPLICAS, publishable
from control_plane.load.reports import PER_PROXY, PER_SERVER
from control_plane.load.totals import MILLION, RegionTotals, ReplicaTotals, ServerTotals
from tests.unit.fleet.test_records import record, server, summed, totals


def loaded(name: str, *replicas: ReplicaTotals) -> ServerTotals:
    star = RegionTotals(region="*", requests=sum(r.requests for r in replicas))
    return ServerTotals(server=name, regions=(star,), replicas=replicas)


def test_replicas_with_their_errors_and_revision_are_published_and_summed() -> None:
    mine = ReplicaTotals(replica="r1", requests=4 * MILLION, errors=MILLION, revision="v2")
    value = totals(
        ServerTotals(
            server="echo",
            regions=(RegionTotals(region="*", requests=4 * MILLION, ready=2),),
            replicas=(mine,),
            ready_replicas=(("r1", "us-west"), ("r2", "us-west")),
            revisions=(("r1", "v2"), ("r2", "v1")),
        )
    )
    [published] = publishable(value).servers
    assert published.replicas == (mine,)
    assert published.ready_replicas == ()  # each reader reads its own
    assert published.revisions == ()
    theirs = ReplicaTotals(replica="r1", requests=2 * MILLION, errors=MILLION, revision="v2")
    summed_value, problems = summed(
        record("b", publishable(value)), record("c", totals(loaded("echo", theirs)))
    )
    [echo] = summed_value.servers
    assert echo.replicas == (
        ReplicaTotals(replica="r1", requests=6 * MILLION, errors=2 * MILLION, revision="v2"),
    )
    assert problems == []


def test_one_record_cannot_claim_more_for_a_servers_replicas_than_one_proxy_may() -> None:
    huge = ReplicaTotals(replica="r1", in_flight=10**18, requests=10**18, errors=10**18)
    fair = ReplicaTotals(replica="r2", requests=MILLION)
    value, problems = summed(record("evil", totals(loaded("echo", huge, fair))))
    [echo] = value.servers
    assert sum(r.in_flight for r in echo.replicas) <= PER_SERVER.in_flight * MILLION
    assert sum(r.requests for r in echo.replicas) <= PER_SERVER.requests_per_second * MILLION
    assert sum(r.errors for r in echo.replicas) <= PER_SERVER.errors_per_second * MILLION
    assert [(p.reason, p.field) for p in problems] == [("clipped", "echo.replicas")]


def test_one_record_cannot_claim_more_over_all_servers_replicas_than_one_proxy_may() -> None:
    per_server = ReplicaTotals(replica="r1", in_flight=PER_SERVER.in_flight * MILLION)
    many = [loaded(f"s{i:03}", per_server) for i in range(100)]
    value, problems = summed(record("evil", totals(*many)))
    total = sum(r.in_flight for s in value.servers for r in s.replicas)
    assert total <= PER_PROXY.in_flight * MILLION
    assert [p.reason for p in problems] == ["clipped"]


def test_replicas_past_the_bound_bad_ids_and_bad_revisions_are_left_out_and_reported() -> None:
    many = tuple(
        ReplicaTotals(replica=f"r{i:06}", requests=1) for i in range(MAX_RECORD_REPLICAS + 50)
    )
    value, problems = summed(record("evil", totals(loaded("echo", *many))))
    [echo] = value.servers
    assert len(echo.replicas) == MAX_RECORD_REPLICAS
    assert [(p.reason, p.field) for p in problems] == [("clipped", "echo.replicas")]

    message = totals_message(
        totals(
            loaded(
                "echo",
                ReplicaTotals(replica="ok", requests=MILLION, revision="v1"),
                ReplicaTotals(replica="bad-rev", requests=MILLION, revision="v1"),
                ReplicaTotals(replica="x" * 600, requests=MILLION),
            )
        )
    )
    message.servers[0].replicas[1].revision = "Not A Revision\n"
    value, problems = summed(record("odd", data=message.SerializeToString()))
    [echo] = value.servers
    assert [(r.replica, r.revision) for r in echo.replicas] == [("bad-rev", ""), ("ok", "v1")]
    assert [(p.reason, p.field) for p in problems] == [("clipped", "echo.replicas")]


def test_a_server_without_replica_load_publishes_as_before() -> None:
    [published] = publishable(totals(server("a", 3, ready=2))).servers
    assert published.replicas == ()

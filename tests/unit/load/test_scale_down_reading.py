"""Issue 29: a server under a concurrency rule has its replicas' load read (proxies asked for
endpoint entries) only while it is scaling down, and its candidates are never named from load
not read yet: withheld until every stream's report read with its endpoint entries is in (or,
for streams that never send one, ``WARM_INTERVALS``), and withheld from whoever sums the
totals too (a supervisor, another control plane)."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import load_report_pb2

from control_plane.load.reading import WARM_INTERVALS
from control_plane.load.server import LoadService
from control_plane.registry.spec import Autoscaling
from control_plane.routing.model import RoutedServer
from harness.models import endpoint, server, table

RULE = Autoscaling(target_concurrency=4, min_replicas=1, max_replicas=10, scale_down_window=0.0)


def ruled(made: RoutedServer) -> RoutedServer:
    return replace(made, spec=replace(made.spec, autoscaling=RULE))


def report(in_flight: dict[int, int]) -> list[object]:
    """echo's cluster: one locality, per endpoint (port -> requests in flight)."""
    stats = load_report_pb2.ClusterStats(cluster_name="default_echo")
    locality = stats.upstream_locality_stats.add(
        locality=base_pb2.Locality(region="us-west"),
        total_requests_in_progress=sum(in_flight.values()),
    )
    for port, count in in_flight.items():
        point = locality.upstream_endpoint_stats.add(total_requests_in_progress=count)
        point.address.socket_address.address = "127.0.0.1"
        point.address.socket_address.port_value = port
    return [stats]


def record(
    service: LoadService,
    now: float,
    in_flight: dict[int, int],
    *,
    granular: bool = True,
    stream: int = 1,
) -> None:
    """One report of echo's cluster into ``service``'s book at ``now``; per locality only (as
    sent before the proxy read an ask for endpoint entries) unless ``granular``."""
    [stats] = report(in_flight)
    if not granular:
        del stats.upstream_locality_stats[0].upstream_endpoint_stats[:]
    service.book.record(
        "edge", [stats], stream=stream, now=now, asked_interval=1.0, catalog=service.catalog()
    )


def test_candidates_wait_for_the_replica_load_they_are_named_from() -> None:
    one = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082, draining=True))))
    two = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082))), revision=2)
    current, clock = [one], [1000.0]
    service = LoadService(table=lambda: current[0], interval=1.0, clock=lambda: clock[0])

    def take(*, granular: bool = False, stream: int = 1) -> None:
        # "a" (the lower id: first by id alone) has 3 requests in flight; "b" none (stream 2:
        # a proxy with no load of its own for echo). Per locality only, unless ``granular``.
        load = {8081: 3} if stream == 1 else {}
        record(service, clock[0], load, granular=granular, stream=stream)

    take()
    take(stream=2)
    [total, *_] = service.tick()
    # One ready replica for 3 in flight under a target of 4: steady, nothing read per replica.
    assert total.desired_replicas == 1
    assert not service.catalog().granular
    assert service.rows_of("echo")[0].replicas == ()
    current[0] = two  # "b" READY: 2 ready for a load that needs 1
    clock[0] += 0.5
    take()
    [total, *_] = service.tick()
    assert total.desired_replicas == 1
    assert total.ready_replicas == 2
    assert total.scale_down_candidates == ()  # withheld: "a" would be named, from no load
    assert service.catalog().granular
    assert service.catalog().per_replica == frozenset({"default_echo"})
    [sent] = service.totals().servers
    assert sent.withheld  # nor named by a supervisor
    assert len(sent.ready_replicas) == 2  # which still counts both ready
    # Reports per locality only (sent before the proxy read the new ask), however many, do
    # not end the wait, though the other stream's (no load of echo: nothing missing) is in.
    for _ in range(4):
        clock[0] += 0.5
        take()
        take(stream=2)
        [total, *_] = service.tick()
        assert total.scale_down_candidates == ()
        assert service.totals().servers[0].withheld
    # The last stream's comes: "b" is named, from the load that has come.
    clock[0] += 0.5
    take(granular=True)
    [total, *_] = service.tick()
    assert total.scale_down_candidates == ("b",)
    assert [r.replica for r in total.replicas] == ["a"]
    assert not service.totals().servers[0].withheld
    # The load grows past what 2 replicas serve: no longer scaling down, no longer read.
    record(service, clock[0], {8081: 9})
    clock[0] += 0.5
    [total, *_] = service.tick()
    assert total.desired_replicas == 3
    assert not service.catalog().granular


def test_a_server_that_always_reads_its_replicas_names_candidates_at_once() -> None:
    # Revisions: read from the start, so there is nothing to wait for.
    made = server(
        "echo",
        replace(endpoint("a", 8081), revision="v1"),
        replace(endpoint("b", 8082), revision="v1"),
    )
    current = [table(ruled(made))]
    clock = [1000.0]
    service = LoadService(table=lambda: current[0], interval=1.0, clock=lambda: clock[0])
    assert service.catalog().per_replica == frozenset({"default_echo"})
    record(service, clock[0], {8081: 3})
    [total, *_] = service.tick()
    assert total.desired_replicas == 1
    assert total.scale_down_candidates == ("b",)


def test_a_stream_that_never_carries_endpoint_entries_is_waited_for_only_so_long() -> None:
    one = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082, draining=True))))
    two = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082))), revision=2)
    current, clock = [one], [1000.0]
    service = LoadService(table=lambda: current[0], interval=1.0, clock=lambda: clock[0])

    def take() -> None:
        # Per locality only (sent before the proxy read the new ask, every time).
        record(service, clock[0], {8081: 3}, granular=False)

    take()
    service.tick()
    current[0] = two
    began = clock[0] = clock[0] + 0.5
    take()
    service.tick()
    while clock[0] - began < WARM_INTERVALS - 0.5:
        clock[0] += 0.5
        take()
        [total, *_] = service.tick()
        assert total.scale_down_candidates == ()
    clock[0] += 0.5
    take()
    [total, *_] = service.tick()
    assert total.scale_down_candidates == ("a",)  # named from what came: none per replica


def test_one_part_withholding_withholds_the_sum() -> None:
    """A supervisor (or another control plane) sums parts: one still waiting for its replicas'
    load withholds the candidates the others' ready ids would name, through the wire."""
    from control_plane.admin.loadwire import totals_from, totals_message
    from control_plane.load.totals import (
        History,
        LoadSpec,
        LoadTotals,
        RegionTotals,
        ServerTotals,
        merge_servers,
        recommend,
    )

    ready = (("a", "us-west"), ("b", "us-west"))
    busy = RegionTotals(region="*", in_flight=3_000_000, ready=2)
    waiting = ServerTotals(server="echo", regions=(busy,), ready_replicas=ready, withheld=True)
    idle = ServerTotals(
        server="echo", regions=(RegionTotals(region="*", ready=2),), ready_replicas=ready
    )
    wired = totals_from(totals_message(LoadTotals(servers=(waiting,))))
    assert wired.servers[0].withheld
    specs = {"echo": LoadSpec(autoscaling=RULE)}
    for parts in ([wired.servers, [idle]], [[idle], wired.servers]):
        summed = LoadTotals(servers=merge_servers(parts))
        [row, *_] = recommend(summed, specs, History(), now=1000.0)["echo"].rows
        assert row.desired_replicas == 1
        assert row.scale_down_candidates == ()
    summed = LoadTotals(servers=merge_servers([[replace(waiting, withheld=False)], [idle]]))
    [row, *_] = recommend(summed, specs, History(), now=1000.0)["echo"].rows
    assert row.scale_down_candidates == ("a",)  # ready ids alone: the lower id


def test_a_group_names_no_candidate_while_one_worker_lags_in_its_routing_table() -> None:
    """Under ``serve --workers`` the workers' routing tables follow the registry a moment apart.
    A worker that already sees "b" READY (2 ready ids, no load of its own) and one that still
    sees it DRAINING (1 ready, the proxy's 3 requests in flight on "a", read per server only)
    sum to 2 ready for a load that needs 1: the sum names no candidate (the lower id, "a", is the
    busy one) until the loaded worker reads its replicas' load; then it names "b"."""
    from control_plane.admin.loadwire import TotalsFeed
    from control_plane.group.admin import LoadSum

    one = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082, draining=True))))
    two = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082))), revision=2)
    tables, clock = {"loaded": one, "idle": one}, [1000.0]
    loaded = LoadService(table=lambda: tables["loaded"], interval=1.0, clock=lambda: clock[0])
    idle = LoadService(table=lambda: tables["idle"], interval=1.0, clock=lambda: clock[0])
    feeds = [TotalsFeed(loaded), TotalsFeed(idle)]
    summed = LoadSum(2)

    def step(*, granular: bool = False) -> tuple[str, ...]:
        clock[0] += 0.5
        record(loaded, clock[0], {8081: 3}, granular=granular)
        for number, (worker, feed) in enumerate(zip((loaded, idle), feeds, strict=True)):
            worker.tick()
            for update in feed.updates():
                summed.take_update(number, update)
        summed.sum(now=clock[0])
        [row, *_] = summed.rows_of("echo")
        return row.scale_down_candidates

    assert step() == ()
    tables["idle"] = two  # the idle worker's table moves first
    assert step() == ()
    [row, *_] = summed.rows_of("echo")
    assert (row.ready_replicas, row.desired_replicas) == (2, 1)  # the sum scales down
    tables["loaded"] = two
    assert step() == ()  # now reading per replica: reports sent before the ask lack it
    assert step() == ()
    assert step(granular=True) == ("b",)


def test_a_stream_connected_before_the_ask_that_has_not_reported_yet_is_waited_for() -> None:
    """The server starts to scale down before any report (startup): a stream already connected
    was asked for no endpoint entries, so its first report is per locality only; the busy
    replica is not named from it."""
    both = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082))))
    clock = [1000.0]
    service = LoadService(table=lambda: both, interval=1.0, clock=lambda: clock[0])
    service.intake._live.add(1)  # connected (the stream's first response already sent)
    [total, *_] = service.tick()
    assert (total.ready_replicas, total.desired_replicas) == (2, 1)
    assert total.scale_down_candidates == ()

    def take(*, granular: bool) -> tuple[str, ...]:
        clock[0] += 0.5
        record(service, clock[0], {8081: 3}, granular=granular)
        [total, *_] = service.tick()
        return total.scale_down_candidates

    assert take(granular=False) == ()  # "a" would be named, from no load per replica
    assert take(granular=True) == ("b",)

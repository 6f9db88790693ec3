"""Issue 29: a server under a concurrency rule has its replicas' load read (proxies asked for
endpoint entries) only while it is scaling down, and its candidates are never named from load
not read yet: withheld until the proxies' reports can carry it."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import load_report_pb2

from control_plane.load.server import WARM_INTERVALS, LoadService
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


def test_candidates_wait_for_the_replica_load_they_are_named_from() -> None:
    one = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082, draining=True))))
    two = table(ruled(server("echo", endpoint("a", 8081), endpoint("b", 8082))), revision=2)
    current, clock = [one], [1000.0]
    service = LoadService(table=lambda: current[0], interval=1.0, clock=lambda: clock[0])

    def take() -> None:
        # "a" (the lower id: first by id alone) has 3 requests in flight; "b" none.
        service.book.record(
            "edge",
            report({8081: 3}),
            stream=1,
            now=clock[0],
            asked_interval=1.0,
            catalog=service.catalog(),
        )

    take()
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
    assert service.totals().servers[0].ready_replicas == ()  # nor named by a supervisor
    # The proxies' next reports carry the endpoint entries; past the wait, "b" is named.
    while clock[0] < 1000.5 + WARM_INTERVALS:
        clock[0] += 0.5
        take()
        [total, *_] = service.tick()
    assert total.scale_down_candidates == ("b",)
    assert [r.replica for r in total.replicas] == ["a"]
    # The load grows past what 2 replicas serve: no longer scaling down, no longer read.
    service.book.record(
        "edge",
        report({8081: 9}),
        stream=1,
        now=clock[0],
        asked_interval=1.0,
        catalog=service.catalog(),
    )
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
    service.book.record(
        "edge",
        report({8081: 3}),
        stream=1,
        now=clock[0],
        asked_interval=1.0,
        catalog=service.catalog(),
    )
    [total, *_] = service.tick()
    assert total.desired_replicas == 1
    assert total.scale_down_candidates == ("b",)

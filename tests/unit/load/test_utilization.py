"""Utilization (ORCA, issue 27), known answers: the ``target_utilization`` rule, the reading of
Envoy's ``load_metric_stats`` with clipping and counting, the request-weighted mean over
proxies and processes, the rows, the wire, and the spec."""

from __future__ import annotations

import math

import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import load_report_pb2

from control_plane.admin.loadwire import rule_from, rule_message, totals_from, totals_message
from control_plane.fleet.records import _bounded_replicas
from control_plane.load.autoscale import Recommender, raw_desired
from control_plane.load.quiet import settled
from control_plane.load.reports import MAX_METRIC_ENTRIES, PER_SERVER, Catalog, LoadBook
from control_plane.load.totals import (
    History,
    LoadSpec,
    LoadTotals,
    RegionTotals,
    ReplicaTotals,
    ServerTotals,
    millionths,
    recommend,
)
from control_plane.registry.errors import ValidationError
from control_plane.registry.spec import Autoscaling, _autoscaling

KV = "named_metrics.kv_cache"
RULE = Autoscaling(target_utilization=0.5, metric=KV, max_replicas=10)


# --- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utilization", "ready", "spec", "expected"),
    [
        pytest.param(1.2, 2, RULE, 3, id="ceil-0.8+0.4-over-0.5"),
        pytest.param(1.0, 2, RULE, 2, id="exact"),
        pytest.param(0.0, 4, RULE, 0, id="reported-idle-to-zero"),
        pytest.param(None, 4, RULE, 4, id="none-reported-holds-at-ready"),
        pytest.param(None, 0, RULE, 0, id="none-reported-at-zero"),
        pytest.param(None, 40, RULE, 10, id="hold-clamped-to-max"),
        pytest.param(
            1.2, 2, Autoscaling(target_utilization=0.5, buffer_replicas=1), 4, id="buffer"
        ),
        pytest.param(0.1, 2, Autoscaling(target_utilization=0.5, min_replicas=2), 2, id="min"),
        pytest.param(90.0, 2, Autoscaling(target_utilization=0.01, max_replicas=20), 20, id="max"),
        pytest.param(math.nan, 2, RULE, 0, id="nan-is-no-load"),
        pytest.param(math.inf, 2, RULE, 10, id="inf-is-max"),
    ],
)
def test_raw_desired_under_target_utilization(
    utilization: float | None, ready: int, spec: Autoscaling, expected: int
) -> None:
    # in_flight is ignored by a utilization rule.
    assert raw_desired(99.0, spec, utilization=utilization, ready=ready) == expected


def test_the_windows_and_the_wake_apply_to_target_utilization() -> None:
    spec = Autoscaling(target_utilization=0.5, scale_up_window=0, scale_down_window=10)
    rec = Recommender()
    update = rec.update
    assert update("s", in_flight=0, ready=2, spec=spec, now=0, utilization=None) == 2
    assert update("s", in_flight=0, ready=2, spec=spec, now=1, utilization=1.2) == 3  # up at once
    assert update("s", in_flight=0, ready=3, spec=spec, now=2, utilization=0.3) == 3  # wait
    assert update("s", in_flight=0, ready=3, spec=spec, now=12.5, utilization=0.3) == 1  # down
    # A server at zero: nothing reports; a wake scales it from zero at once.
    assert update("z", in_flight=0, ready=0, spec=spec, now=0, utilization=None) == 0
    assert update("z", in_flight=0, ready=0, spec=spec, now=1, utilization=None, wake=True) == 1


def test_a_recommendation_with_no_utilization_settles_at_the_ready_count() -> None:
    assert settled(4, in_flight=3, wake=False, spec=RULE, utilization=None, ready=4)
    assert not settled(4, in_flight=0, wake=False, spec=RULE, utilization=0.5, ready=4)
    assert not settled(3, in_flight=0, wake=False, spec=RULE, utilization=None, ready=4)
    assert not settled(4, in_flight=0, wake=True, spec=RULE, utilization=None, ready=4)


# --- reading Envoy's reports ------------------------------------------------------------------


CATALOG = Catalog(
    servers={"default_kv": "kv", "default_echo": "echo"},
    regions={"default_kv": frozenset({"us-west"}), "default_echo": frozenset({"us-west"})},
    endpoints={
        "default_kv": {("10.0.0.1", 80): ("a", "us-west"), ("10.0.0.2", 80): ("b", "us-west")},
        "default_echo": {("10.0.0.3", 80): ("e", "us-west")},
    },
    metrics={"default_kv": KV},
)


def report(
    points: dict[str, list[tuple[str, float, int]]], *, cluster: str = "default_kv"
) -> load_report_pb2.ClusterStats:
    """One cluster's report: per endpoint address, (metric, total value, requests) entries;
    each endpoint issued as many requests as its first entry counts."""
    stats = load_report_pb2.ClusterStats(cluster_name=cluster)
    stats.load_report_interval.FromSeconds(1)
    locality = stats.upstream_locality_stats.add(locality=base_pb2.Locality(region="us-west"))
    for host, entries in points.items():
        issued = entries[0][2] if entries else 0
        locality.total_issued_requests += issued
        point = locality.upstream_endpoint_stats.add(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=host, port_value=80)
            ),
            total_issued_requests=issued,
        )
        for name, total, count in entries:
            for where in (point, locality):  # Envoy reports both (probed, 1.40)
                where.load_metric_stats.add(
                    metric_name=name,
                    total_metric_value=total,
                    num_requests_finished_with_metric=count,
                )
    return stats


def utilization(book: LoadBook, server: str) -> dict[str, tuple[float, float]]:
    """replica -> (mean, weight per second) from the book."""
    return {
        replica: (value / weight, weight / 1e6)
        for replica, _, _, _, value, weight in book.replica_loads(server)
        if weight
    }


def take(book: LoadBook, stats: load_report_pb2.ClusterStats, *, stream: int = 1) -> int:
    ignored = book.record(
        "edge", [stats], stream=stream, now=10.0, asked_interval=1.0, catalog=CATALOG
    )
    return ignored.utilization


def test_the_rule_metric_is_read_per_endpoint_as_a_mean() -> None:
    book = LoadBook()
    clipped = take(
        book,
        report(
            {
                "10.0.0.1": [(KV, 8.0, 10), ("application_utilization", 1.0, 10)],
                "10.0.0.2": [(KV, 2.0, 5)],
            }
        ),
    )
    assert clipped == 0
    assert utilization(book, "kv") == {"a": (pytest.approx(0.8), 10.0), "b": (0.4, 5.0)}


@pytest.mark.parametrize(
    ("entries", "expected", "counted"),
    [
        pytest.param([(KV, -3.0, 10)], 0.0, 1, id="negative-to-0"),
        pytest.param([(KV, 50.0, 10)], 1.0, 1, id="above-1-to-1"),
        pytest.param([(KV, math.nan, 10)], None, 1, id="nan-left-out"),
        pytest.param([(KV, math.inf, 10)], None, 1, id="inf-left-out"),
        pytest.param([(KV, 1.0, 0)], None, 1, id="no-requests-left-out"),
        pytest.param([("named_metrics.other", 0.5, 10)], None, 0, id="another-metric-not-read"),
        pytest.param(
            [(f"named_metrics.m{i}", 0.5, 10) for i in range(MAX_METRIC_ENTRIES)] + [(KV, 5.0, 10)],
            None,
            1,
            id="entries-past-the-bound-unread",
        ),
    ],
)
def test_bad_values_are_clipped_or_left_out_and_counted(
    entries: list[tuple[str, float, int]], expected: float | None, counted: int
) -> None:
    book = LoadBook()
    assert take(book, report({"10.0.0.1": entries})) == counted
    found = utilization(book, "kv").get("a")
    assert (found[0] if found else None) == expected


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(
            [("application_utilization", 6.0, 10), ("cpu_utilization", 2.0, 10)], 0.6, id="app"
        ),
        pytest.param(
            # Envoy reports a standard metric the response left out as 0 (probed, 1.40).
            [("application_utilization", 0.0, 10), ("cpu_utilization", 2.0, 10)],
            0.2,
            id="app-0-then-cpu",
        ),
        pytest.param([(KV, 9.0, 10)], None, id="a-named-metric-is-not-the-default"),
    ],
)
def test_without_a_metric_envoys_order_is_read(
    entries: list[tuple[str, float, int]], expected: float | None
) -> None:
    book = LoadBook()
    take(book, report({"10.0.0.3": entries}, cluster="default_echo"))
    found = utilization(book, "echo").get("e")
    assert (pytest.approx(found[0]) if found else None) == expected


def test_over_two_proxies_the_mean_is_weighted_by_requests_and_a_stream_replaces_its_own() -> None:
    book = LoadBook()
    take(book, report({"10.0.0.1": [(KV, 9.0, 10)]}), stream=1)  # 0.9 over 10 requests
    take(book, report({"10.0.0.1": [(KV, 3.0, 30)]}), stream=2)  # 0.1 over 30 requests
    mean, weight = utilization(book, "kv")["a"]
    assert mean == pytest.approx((9.0 + 3.0) / 40)
    assert weight == 40.0
    take(book, report({"10.0.0.1": [(KV, 5.0, 10)]}), stream=2)  # stream 2's newest: 0.5
    assert utilization(book, "kv")["a"][0] == pytest.approx((9.0 + 5.0) / 20)
    book.forget(1)
    book.forget(2)
    assert utilization(book, "kv") == {}


def test_one_reports_weight_is_bounded_and_its_mean_kept() -> None:
    book = LoadBook()
    huge = int(PER_SERVER.requests_per_second * 10)
    take(book, report({"10.0.0.1": [(KV, 0.7 * huge, huge)]}))
    mean, weight = utilization(book, "kv")["a"]
    assert mean == pytest.approx(0.7)
    assert weight == pytest.approx(PER_SERVER.requests_per_second)


# --- totals, rows, the wire -------------------------------------------------------------------


def replica(name: str, mean: float, weight: float, region: str = "us-west") -> ReplicaTotals:
    return ReplicaTotals(
        replica=name,
        requests=millionths(weight),
        utilization_value=millionths(mean * weight),
        utilization_weight=millionths(weight),
        region=region,
    )


def kv_totals(*replicas: ReplicaTotals, ready: int = 2) -> LoadTotals:
    return LoadTotals(
        servers=(
            ServerTotals(
                server="kv",
                regions=(RegionTotals(region="*", ready=ready), RegionTotals(region="us-west")),
                replicas=tuple(sorted(replicas, key=lambda r: r.replica)),
            ),
        )
    )


def test_a_replica_merged_over_processes_is_the_request_weighted_mean() -> None:
    merged = replica("a", 0.9, 10).merge(replica("a", 0.1, 30))
    assert merged.utilization == pytest.approx(0.3)
    assert ReplicaTotals(replica="x", requests=5).utilization is None


def test_rows_show_the_mean_per_region_and_the_desired_count() -> None:
    totals = kv_totals(
        replica("a", 0.8, 10), replica("b", 0.4, 10), replica("c", 0.3, 10, region="us-east")
    )
    rows = recommend(
        totals, {"kv": LoadSpec(regions=("us-west",), autoscaling=RULE)}, History(), now=0
    )["kv"].rows
    by_region = {row.region: row for row in rows}
    assert by_region["*"].utilization == pytest.approx(0.5)
    assert by_region["us-west"].utilization == pytest.approx(0.6)
    assert by_region["*"].desired_replicas == 3  # ceil(1.5 / 0.5)
    assert by_region["us-west"].desired_replicas == 3  # ceil(1.2 / 0.5)


def test_a_server_with_no_utilization_has_none_and_holds() -> None:
    totals = kv_totals(ReplicaTotals(replica="a", requests=millionths(3)), ready=4)
    rows = recommend(totals, {"kv": LoadSpec(autoscaling=RULE)}, History(), now=0)["kv"].rows
    assert rows[0].utilization is None
    assert rows[0].desired_replicas == 4


def test_utilization_crosses_the_wire_and_a_record_cannot_outweigh_the_rest() -> None:
    totals = kv_totals(replica("a", 0.8, 10), replica("b", 0.4, 10))
    back = totals_from(totals_message(totals))
    assert back.servers[0].replicas == totals.servers[0].replicas
    message = totals_message(totals)
    message.servers[0].replicas[0].utilization_value = 10**15  # a mean above 1: read as 1
    assert totals_from(message).servers[0].replicas[0].utilization == 1.0
    heavy = (replica("a", 0.9, PER_SERVER.requests_per_second * 50),)
    bounded = _bounded_replicas(heavy, PER_SERVER)
    assert bounded[0].utilization_weight <= millionths(PER_SERVER.requests_per_second)
    assert bounded[0].utilization == pytest.approx(0.9)
    assert rule_from(rule_message(RULE)) == RULE


# --- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "field"),
    [
        pytest.param(
            {"target_utilization": 0.5, "target_concurrency": 2}, "target_utilization", id="both"
        ),
        pytest.param({"target_utilization": 1.5}, "target_utilization", id="above-1"),
        pytest.param({"target_utilization": -0.5}, "target_utilization", id="negative"),
        pytest.param({"target_utilization": "high"}, "target_utilization", id="a-string"),
        pytest.param({"target_utilization": math.nan}, "target_utilization", id="nan"),
        pytest.param({"metric": KV}, "metric", id="metric-without-target"),
        pytest.param(
            {"target_utilization": 0.5, "metric": "named_metrics.*"}, "metric", id="wildcard"
        ),
        pytest.param({"target_utilization": 0.5, "metric": "gpu"}, "metric", id="unknown"),
        pytest.param({"target_utilization": 0.5, "metric": 7}, "metric", id="not-a-string"),
    ],
)
def test_bad_utilization_rules_name_the_field(block: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=f"spec.autoscaling.{field}"):
        _autoscaling(block)


def test_a_utilization_rule_is_read() -> None:
    assert _autoscaling({"target_utilization": 0.7}) == Autoscaling(target_utilization=0.7)
    assert _autoscaling({"target_utilization": 0.5, "metric": KV, "max_replicas": 10}) == RULE


@pytest.mark.parametrize(
    ("spec", "metric"),
    [
        pytest.param({}, "", id="nothing-named"),
        pytest.param({"load_balancing": {"utilization": {"metric": KV}}}, KV, id="balancing"),
        pytest.param(
            {
                "load_balancing": {"utilization": {"metric": KV}},
                "autoscaling": {"target_utilization": 0.5, "metric": "cpu_utilization"},
            },
            "cpu_utilization",
            id="the-rule-first",
        ),
        pytest.param(
            {"load_balancing": {"utilization": {"metric": "named_metrics.*"}}}, "", id="wildcard"
        ),
        pytest.param(
            {"load_balancing": {"utilization": {"metric": "utilization.gpu"}}}, "", id="other-map"
        ),
    ],
)
def test_the_view_reads_the_rules_metric_else_the_balancings(
    spec: dict[str, object], metric: str
) -> None:
    from control_plane.registry.spec import parse_spec, view_metric
    from control_plane.translate.clusters import endpoint_metrics

    parsed = parse_spec(spec)
    assert view_metric(parsed) == metric
    extra = (metric,) if metric and metric != "cpu_utilization" else ()
    assert endpoint_metrics(parsed) == ("application_utilization", "cpu_utilization", *extra)


# --- one process, end to end ------------------------------------------------------------------


def test_a_report_through_a_load_service_gives_rows_with_utilization_and_the_count() -> None:
    from dataclasses import replace

    from control_plane.load.server import LoadService
    from control_plane.translate.clusters import endpoint_metrics
    from harness.models import endpoint, server, table

    routed = server("kv", endpoint("a", 8081), endpoint("b", 8082, region="us-east"))
    routed = replace(routed, spec=replace(routed.spec, autoscaling=RULE))
    service = LoadService(table=lambda: table(routed), clock=lambda: 100.0)
    # The rule's metric is asked of Envoy, and read back from its reports.
    assert endpoint_metrics(routed.spec) == ("application_utilization", "cpu_utilization", KV)
    catalog = service.catalog()
    [cluster] = catalog.servers
    assert catalog.metrics == {cluster: KV}
    stats = load_report_pb2.ClusterStats(cluster_name=cluster)
    stats.load_report_interval.FromSeconds(1)
    for region, port, total in (("us-west", 8081, 8.0), ("us-east", 8082, 4.0)):
        locality = stats.upstream_locality_stats.add(
            locality=base_pb2.Locality(region=region), total_issued_requests=10
        )
        point = locality.upstream_endpoint_stats.add(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
            ),
            total_issued_requests=10,
        )
        point.load_metric_stats.add(
            metric_name=KV, total_metric_value=total, num_requests_finished_with_metric=10
        )
    service.book.record("edge", [stats], stream=1, now=100.0, asked_interval=1.0, catalog=catalog)
    rows = {row.region: row for row in service.tick()}
    assert rows["*"].utilization == pytest.approx(0.6)
    assert rows["us-west"].utilization == pytest.approx(0.8)
    assert rows["us-east"].utilization == pytest.approx(0.4)
    assert rows["*"].desired_replicas == 3
    assert {r.replica: r.utilization for r in rows["*"].replicas} == {
        "a": pytest.approx(0.8),
        "b": pytest.approx(0.4),
    }

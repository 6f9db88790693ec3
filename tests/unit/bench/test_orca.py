"""bench.orca's pure parts: the replicas' report and request cost, the shapes' capacity, the
Envoy bootstrap (a valid Envoy Bootstrap for every policy) and the per-policy summary."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (Any registry)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import (  # noqa: F401
    least_request_pb2,
)
from envoy.extensions.load_balancing_policies.round_robin.v3 import (  # noqa: F401
    round_robin_pb2,
)
from google.protobuf import json_format

from bench.orca import (
    METRICS,
    POLICIES,
    SHAPES,
    Segment,
    Shape,
    Weighting,
    bootstrap,
    load_balancing_policy,
    summarize,
    table,
)
from bench.orca_replicas import Replica, parse_cost, report_header
from bench.stats import MIN_FOR_P99


@pytest.mark.parametrize(
    ("head", "cost"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1.0),
        (b"GET /?cost=20 HTTP/1.1\r\n\r\n", 20.0),
        (b"GET /?a=1&cost=0.5 HTTP/1.1\r\n\r\n", 0.5),
    ],
    ids=["no-query", "cost", "cost-after-another"],
)
def test_a_request_costs_what_its_query_says(head: bytes, cost: float) -> None:
    assert parse_cost(head) == cost


@pytest.mark.parametrize(
    "head",
    [
        b"GET /?cost=0 HTTP/1.1\r\n\r\n",
        b"GET /?cost=-1 HTTP/1.1\r\n\r\n",
        b"GET /?cost=nan HTTP/1.1\r\n\r\n",
        b"GET /?cost=1e9 HTTP/1.1\r\n\r\n",
        b"GET /?cost=x HTTP/1.1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["zero", "negative", "nan", "enormous", "not-a-number", "no-request-line"],
)
def test_a_bad_cost_is_an_error_naming_it(head: bytes) -> None:
    with pytest.raises(ValueError, match=r"cost|request line"):
        parse_cost(head)


def _metrics(header: str) -> dict[str, float]:
    assert header.startswith("TEXT ")
    return {
        name: float(value)
        for name, _, value in (part.partition("=") for part in header[5:].split(", "))
    }


def test_the_report_is_envoys_text_form_with_every_metric() -> None:
    assert _metrics(report_header(work=0.25, busy=1.0, rps=57.5)) == {
        "named_metrics.work": 0.25,
        "named_metrics.busy": 1.0,
        "rps_fractional": 57.5,
    }
    assert set(METRICS) <= set(_metrics(report_header(work=1, busy=1, rps=1)))


def test_a_float_drifting_below_zero_is_reported_as_zero() -> None:
    assert _metrics(report_header(work=-1e-18, busy=0.5, rps=2.0))["named_metrics.work"] == 0


def test_a_replica_reports_its_queued_work_including_the_answered_request() -> None:
    """Two workers, three requests of 10 ms at once: the first answered sees all three in the
    replica (work 30 ms over 2 workers; busy clipped to 1), the last only itself."""

    async def scenario() -> list[str]:
        replica = Replica(name="r", workers=2, base_s=0.01, factor=1.0)
        workers = [asyncio.create_task(replica.work()) for _ in range(2)]
        loop = asyncio.get_running_loop()
        answers = [loop.create_future() for _ in range(3)]
        for done in answers:
            replica.in_system_s += 0.01
            replica.in_system += 1
            replica.queue.put_nowait((0.01, done))
        headers = [await done for done in answers]
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return headers

    first, _, last = asyncio.run(scenario())
    assert _metrics(first)["named_metrics.work"] == pytest.approx(0.015)
    assert _metrics(first)["named_metrics.busy"] == 1.0
    assert _metrics(last)["named_metrics.work"] == pytest.approx(0.005)
    assert _metrics(last)["named_metrics.busy"] == 0.5


def test_capacity_counts_the_slow_replica_and_the_expensive_requests() -> None:
    skewed, mixed = SHAPES
    # Three replicas of 4 workers at 40 ms (100/s each) and one 5x slower (20/s).
    assert skewed.capacity() == pytest.approx(320.0)
    # Mean cost 0.9 + 0.1 * 20 = 2.9 ordinary requests of 17 ms on four equal replicas.
    assert mixed.capacity() == pytest.approx(4 * 4 / (0.017 * 2.9))
    one = Shape(
        name="x", what="", base_ms=10.0, factors=(1.0,), expensive_share=0.0, expensive_cost=1.0
    )
    assert one.capacity() == pytest.approx(400.0)


def test_the_bootstrap_is_a_valid_envoy_bootstrap_with_one_cluster_per_policy() -> None:
    weighting = Weighting(metric="named_metrics.busy", weight_update_s=0.5)
    text = json.dumps(bootstrap(listen=1, admin=2, replicas=[3, 4, 5, 6], weighting=weighting))
    parsed = json_format.Parse(text, bootstrap_pb2.Bootstrap())
    clusters = {c.name: c for c in parsed.static_resources.clusters}
    assert list(clusters) == list(POLICIES)
    names = {
        name: c.load_balancing_policy.policies[0].typed_extension_config.name
        for name, c in clusters.items()
    }
    assert names == {
        "utilization": "envoy.load_balancing_policies.client_side_weighted_round_robin",
        "least_request": "envoy.load_balancing_policies.least_request",
        "round_robin": "envoy.load_balancing_policies.round_robin",
    }
    config = client_side_weighted_round_robin_pb2.ClientSideWeightedRoundRobin()
    clusters["utilization"].load_balancing_policy.policies[
        0
    ].typed_extension_config.typed_config.Unpack(config)
    assert list(config.metric_names_for_computing_utilization) == ["named_metrics.busy"]
    assert config.weight_update_period.ToMilliseconds() == 500
    assert config.blackout_period.ToMilliseconds() == 1000
    assert all(len(c.load_assignment.endpoints[0].lb_endpoints) == 4 for c in clusters.values())


def test_an_unknown_policy_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'maglev'"):
        load_balancing_policy("maglev")


def test_a_summary_has_a_p999_only_from_enough_samples_and_a_share_per_replica() -> None:
    names = {"1": "r0", "2": "r1"}
    few = Segment(
        latencies_ms=[1.0, 2.0, 3.0],
        lags_ms=[0.1] * 3,
        replicas={"r0": 3},
        errors={"status 503": 1},
    )
    row = summarize([few], names=names)
    assert row["n"] == 3
    assert row["p99_ms"] is None
    assert row["p999_ms"] is None
    assert row["max_ms"] == 3.0
    assert row["share"] == {"r0": 1.0, "r1": 0.0}
    assert row["errors"] == 1
    assert row["error_kinds"] == {"status 503": 1}
    assert row["late"] is False
    many = Segment(
        latencies_ms=[float(i) for i in range(1, 2001)],
        lags_ms=[0.5] * 2000,
        replicas={"r0": 1000, "r1": 1000},
        errors={},
    )
    row = summarize([many, many], names=names)
    assert row["n"] == 4000 >= MIN_FOR_P99
    assert row["p999_ms"] == 1998.0
    assert row["share"] == {"r0": 0.5, "r1": 0.5}
    assert row["lag_max_ms"] == 0.5
    assert row["segment_lag_p99_ms"] == [0.5, 0.5]
    late = Segment(latencies_ms=[1.0] * 100, lags_ms=[50.0] * 100, replicas={}, errors={})
    assert summarize([late], names=names)["late"] is True


def test_the_table_says_max_of_n_without_enough_samples_and_never_none() -> None:
    names = {"1": "r0", "2": "r1", "3": "r2", "4": "r3"}
    row = summarize(
        [Segment(latencies_ms=[5.0, 7.0], lags_ms=[0.1, 0.2], replicas={"r0": 2}, errors={})],
        names=names,
    )
    shape = {
        "shape": "skewed",
        "what": "one slow",
        "rate": 224.0,
        "policies": dict.fromkeys(POLICIES, row),
        "ratio": {
            "least_request": {"p50": 1.0, "p99": None, "p999": None},
            "round_robin": {"p50": 1.0, "p99": None, "p999": None},
        },
    }
    result = {
        "workers": 4,
        "metric": "named_metrics.work",
        "blackout_s": 1.0,
        "weight_update_s": 0.1,
        "load": 0.7,
        "shapes": [shape],
    }
    rendered = "\n".join(table(result))
    assert "max of 2: 7.0" in rendered
    assert "None" not in rendered
    assert " LATE |" not in rendered
    assert "utilization / least_request: p50 1.0x" in rendered

"""Utilization balancing through a real Envoy (client_side_weighted_round_robin): two replicas
reporting 0.9 and 0.1 get 10 % and 90 % of 2,000 requests, over HTTP (a header on every
response) and gRPC (a trailer on every call, or an out-of-band OpenRcaService stream); a
replica that stops reporting returns to an even share after ``weight_expiration_period``.

Envoy computes weight = rps_fractional / utilization as a whole number, at least 1: the
replicas report rps_fractional=100, so 0.9 weighs 111 and 0.1 weighs 1,000 (10 % / 90 %). The
weights are read from Envoy's admin ``/clusters`` (waited for, never slept for) before any
request is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from control_plane.registry import Registry
from harness.processes import Envoy
from harness.waiting import wait_until
from tests.integration.orca_routing.conftest import (
    ask_grpc,
    ask_http,
    envoy_weights,
    put_server,
    share,
    wait_for_answers,
)
from tests.integration.orca_routing.replicas import GrpcReplica, HttpReplica

pytestmark = pytest.mark.envoy

FAST = {"blackout_period": "0s", "weight_update_period": "100ms"}
COUNTED = 2000


def test_http_splits_10_90_by_per_response_reports_and_evens_out_when_reports_stop(
    registry: Registry, envoy: Envoy, stop_after: Callable[[Any], Any]
) -> None:
    host = put_server(
        registry, "web", protocol="http", utilization={**FAST, "weight_expiration_period": "1s"}
    )
    busy = stop_after(HttpReplica(name="busy", utilization=0.9))
    idle = stop_after(HttpReplica(name="idle", utilization=0.1))
    for replica in (busy, idle):
        registry.register_replica(server="web", address=replica.address, region="us-west")

    def ask(count: int = 20) -> Any:
        return ask_http(envoy, count, host=host)

    wait_for_answers(ask, {"busy", "idle"}, what="both replicas answering through Envoy")
    wait_until(
        lambda: ask(5) and envoy_weights(envoy, "web") == [111, 1000],
        timeout=30,
        what="Envoy's weights 111 (busy) and 1,000 (idle)",
    )
    answers = ask(COUNTED)
    assert sum(answers.values()) == COUNTED, answers  # every request answered 200
    assert 0.07 <= share(answers, "busy") <= 0.13, answers

    busy.report(None)  # busy stops reporting: its weight expires to the median (idle's)
    wait_until(
        lambda: ask(5) and envoy_weights(envoy, "web") == [1000, 1000],
        timeout=30,
        what="busy's weight expired to the median, 1,000",
    )
    answers = ask(1000)
    assert sum(answers.values()) == 1000, answers
    assert 0.44 <= share(answers, "busy") <= 0.56, answers


@pytest.mark.parametrize("out_of_band", [False, True], ids=["trailer", "out-of-band"])
def test_grpc_splits_10_90_by_trailers_or_out_of_band_reports(
    registry: Registry, envoy: Envoy, stop_after: Callable[[Any], Any], out_of_band: bool
) -> None:
    name = "tokens-oob" if out_of_band else "tokens"
    utilization: dict[str, Any] = dict(FAST)
    if out_of_band:
        utilization["out_of_band"] = {"period": "100ms"}
    host = put_server(registry, name, protocol="grpc", utilization=utilization)
    for replica, value in (("busy", 0.9), ("idle", 0.1)):
        echo = stop_after(GrpcReplica(name=replica, utilization=value))
        registry.register_replica(server=name, address=echo.address, region="us-west")

    def ask(count: int = 20) -> Any:
        return ask_grpc(envoy, count, host=host)

    wait_for_answers(ask, {"busy", "idle"}, what="both replicas answering through Envoy")
    wait_until(
        lambda: ask(5) and envoy_weights(envoy, name) == [111, 1000],
        timeout=30,
        what="Envoy's weights 111 (busy) and 1,000 (idle)",
    )
    answers = ask(COUNTED)
    assert sum(answers.values()) == COUNTED
    assert set(answers) == {"busy", "idle"}, answers  # no error
    assert 0.07 <= share(answers, "busy") <= 0.13, answers


def test_a_named_metric_steers_when_the_spec_names_it(
    registry: Registry, envoy: Envoy, stop_after: Callable[[Any], Any]
) -> None:
    """Replicas that report only ``named_metrics.kv_cache`` (no application or CPU
    utilization): ``metric: named_metrics.kv_cache`` makes Envoy weigh by it."""
    host = put_server(
        registry, "kv", protocol="http", utilization={**FAST, "metric": "named_metrics.kv_cache"}
    )
    for replica, value in (("busy", 0.9), ("idle", 0.1)):
        echo = stop_after(
            HttpReplica(name=replica, utilization=value, metric="named_metrics.kv_cache")
        )
        registry.register_replica(server="kv", address=echo.address, region="us-west")

    def ask(count: int = 20) -> Any:
        return ask_http(envoy, count, host=host)

    wait_for_answers(ask, {"busy", "idle"}, what="both replicas answering through Envoy")
    wait_until(
        lambda: ask(5) and envoy_weights(envoy, "kv") == [111, 1000],
        timeout=30,
        what="Envoy's weights 111 (busy) and 1,000 (idle) from the named metric",
    )
    answers = ask(1000)
    assert set(answers) == {"busy", "idle"}, answers
    assert 0.06 <= share(answers, "busy") <= 0.14, answers


def test_round_robin_through_envoy_alternates(
    registry: Registry, envoy: Envoy, stop_after: Callable[[Any], Any]
) -> None:
    registry.put_server(
        name="rr", hostnames=["rr.local"], protocol="http", spec={"load_balancing": "round_robin"}
    )
    for replica in ("a", "b"):
        echo = stop_after(HttpReplica(name=replica, utilization=None))
        registry.register_replica(server="rr", address=echo.address, region="us-west")

    def ask(count: int = 20) -> Any:
        return ask_http(envoy, count, host="rr.local")

    wait_for_answers(ask, {"a", "b"}, what="both replicas answering through Envoy")
    answers = ask(200)
    assert set(answers) == {"a", "b"}, answers
    assert abs(answers["a"] - 100) <= 5, answers  # alternating

"""Utilization balancing in a proxyless gRPC client (grpcio's xDS client, weighted_round_robin
from the same client_side_weighted_round_robin cluster entry Envoy reads): two replicas
reporting 0.9 and 0.1 get 10 % and 90 % of 2,000 calls, by per-call trailers or by
out-of-band OpenRcaService streams. gRPC weighs in floating point (0.1/0.9 exactly); it shows
no weights outside, so the weights are in force once a window of 200 calls is already skewed
(waited for with a deadline), and only the calls after it are counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from control_plane.registry import Registry
from harness.processes import GrpcClient
from harness.waiting import wait_until
from tests.integration.orca_routing.conftest import answered_by, put_server, share
from tests.integration.orca_routing.replicas import GrpcReplica

COUNTED = 2000
WINDOW = 200


def _window(client: GrpcClient, start: int, size: int) -> Counter[str] | None:
    calls = answered_by(client, start)
    return Counter(calls[:size]) if len(calls) >= size else None


@pytest.mark.parametrize(
    ("case", "knobs", "metric"),
    [
        pytest.param("px", {}, "application_utilization", id="trailer"),
        pytest.param(
            "px-oob", {"out_of_band": {"period": "100ms"}}, "application_utilization", id="oob"
        ),
        pytest.param(
            "px-kv", {"metric": "named_metrics.kv_cache"}, "named_metrics.kv_cache", id="named"
        ),
    ],
)
def test_a_proxyless_client_splits_10_90_by_trailers_or_out_of_band_reports(
    registry: Registry,
    grpc_client: Callable[..., GrpcClient],
    stop_after: Callable[[Any], Any],
    case: str,
    knobs: dict[str, Any],
    metric: str,
) -> None:
    """Per-call trailers, out-of-band streams, and a named metric the spec names (the
    replicas then report nothing else)."""
    name = case
    utilization = {"blackout_period": "0s", "weight_update_period": "100ms", **knobs}
    host = put_server(registry, name, protocol="grpc", utilization=utilization)
    for replica, value in (("busy", 0.9), ("idle", 0.1)):
        echo = stop_after(GrpcReplica(name=replica, utilization=value, metric=metric))
        registry.register_replica(server=name, address=echo.address, region="us-west")
    client = grpc_client(f"grpc-{name}", host, interval=0.001)

    def skewed() -> int | None:
        # Windows of 200 calls, from the newest whole one: the first that is skewed marks
        # the weights in force; the calls after it are the counted ones.
        start = max(0, len(answered_by(client)) - WINDOW)
        window = _window(client, start, WINDOW)
        if window is None or set(window) != {"busy", "idle"}:
            return None
        return start + WINDOW if share(window, "busy") <= 0.15 else None

    mark = wait_until(skewed, timeout=30, interval=0.05, what="a window of calls skewed to idle")
    answers = wait_until(
        lambda: _window(client, mark, COUNTED), timeout=60, interval=0.05, what="2,000 calls"
    )
    assert set(answers) == {"busy", "idle"}, answers  # no error
    assert 0.07 <= share(answers, "busy") <= 0.13, answers


def test_round_robin_in_a_proxyless_client_alternates(
    registry: Registry, grpc_client: Callable[..., GrpcClient], stop_after: Callable[[Any], Any]
) -> None:
    registry.put_server(
        name="px-rr",
        hostnames=["px-rr.local"],
        protocol="grpc",
        spec={"load_balancing": "round_robin"},
    )
    for replica in ("a", "b"):
        echo = stop_after(GrpcReplica(name=replica, utilization=None))
        registry.register_replica(server="px-rr", address=echo.address, region="us-west")
    client = grpc_client("grpc-px-rr", "px-rr.local", interval=0.001)
    wait_until(lambda: {"a", "b"} <= set(answered_by(client)), timeout=30, what="both answering")
    mark = len(answered_by(client))
    calls = wait_until(lambda: _window(client, mark, WINDOW), timeout=30, what="200 calls")
    assert set(calls) == {"a", "b"}, calls
    assert abs(calls["a"] - 100) <= 5, calls  # alternating (a reconnect may cost a turn)


def test_a_replica_that_stops_reporting_returns_to_an_even_share_in_a_proxyless_client(
    registry: Registry, grpc_client: Callable[..., GrpcClient], stop_after: Callable[[Any], Any]
) -> None:
    utilization = {
        "blackout_period": "0s",
        "weight_update_period": "100ms",
        "weight_expiration_period": "1s",
    }
    host = put_server(registry, "px-expiry", protocol="grpc", utilization=utilization)
    busy = stop_after(GrpcReplica(name="busy", utilization=0.9))
    idle = stop_after(GrpcReplica(name="idle", utilization=0.1))
    for echo in (busy, idle):
        registry.register_replica(server="px-expiry", address=echo.address, region="us-west")
    client = grpc_client("grpc-px-expiry", host, interval=0.001)

    def newest_window_where(low: float, high: float) -> int | None:
        start = max(0, len(answered_by(client)) - WINDOW)
        window = _window(client, start, WINDOW)
        if window is None or set(window) != {"busy", "idle"}:
            return None
        return start + WINDOW if low <= share(window, "busy") <= high else None

    wait_until(
        lambda: newest_window_where(0.0, 0.15), timeout=30, interval=0.05, what="skewed to idle"
    )
    busy.report(None)  # busy's weight expires after 1s: it gets the mean weight, idle's
    mark = wait_until(
        lambda: newest_window_where(0.4, 0.6), timeout=30, interval=0.05, what="an even window"
    )
    answers = wait_until(
        lambda: _window(client, mark, 1000), timeout=60, interval=0.05, what="1,000 calls"
    )
    assert set(answers) == {"busy", "idle"}, answers
    assert 0.44 <= share(answers, "busy") <= 0.56, answers

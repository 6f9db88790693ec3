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


@pytest.mark.parametrize("out_of_band", [False, True], ids=["trailer", "out-of-band"])
def test_a_proxyless_client_splits_10_90_by_trailers_or_out_of_band_reports(
    registry: Registry,
    grpc_client: Callable[..., GrpcClient],
    stop_after: Callable[[Any], Any],
    out_of_band: bool,
) -> None:
    name = "px-oob" if out_of_band else "px"
    utilization: dict[str, Any] = {"blackout_period": "0s", "weight_update_period": "100ms"}
    if out_of_band:
        utilization["out_of_band"] = {"period": "100ms"}
    host = put_server(registry, name, protocol="grpc", utilization=utilization)
    for replica, value in (("busy", 0.9), ("idle", 0.1)):
        echo = stop_after(GrpcReplica(name=replica, utilization=value))
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

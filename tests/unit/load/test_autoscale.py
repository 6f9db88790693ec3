"""The autoscaling rule, known load -> known recommendation, over time."""

from __future__ import annotations

import pytest

from control_plane.load.autoscale import Recommender, raw_desired
from control_plane.registry.spec import Autoscaling


@pytest.mark.parametrize(
    ("in_flight", "spec", "expected"),
    [
        pytest.param(0, Autoscaling(target_concurrency=4), 0, id="idle-to-zero"),
        pytest.param(1, Autoscaling(target_concurrency=4), 1, id="one-request-one-replica"),
        pytest.param(8, Autoscaling(target_concurrency=4), 2, id="exact"),
        pytest.param(9, Autoscaling(target_concurrency=4), 3, id="rounded-up"),
        pytest.param(9, Autoscaling(target_concurrency=4, buffer_replicas=2), 5, id="buffer"),
        pytest.param(0, Autoscaling(target_concurrency=4, min_replicas=2), 2, id="min"),
        pytest.param(1000, Autoscaling(target_concurrency=4, max_replicas=20), 20, id="max"),
        pytest.param(2.5, Autoscaling(target_concurrency=0.5), 5, id="fractional-target"),
    ],
)
def test_raw_desired(in_flight: float, spec: Autoscaling, expected: int) -> None:
    assert raw_desired(in_flight, spec) == expected


def test_scale_up_at_once_and_down_after_a_quiet_window() -> None:
    spec = Autoscaling(target_concurrency=2, scale_up_window=0, scale_down_window=10)
    rec = Recommender()
    assert rec.update("s", in_flight=0, ready=1, spec=spec, now=0) == 1  # starts from READY
    assert rec.update("s", in_flight=7, ready=1, spec=spec, now=1) == 4  # up at once
    assert rec.update("s", in_flight=0, ready=4, spec=spec, now=2) == 4  # quiet: wait
    assert rec.update("s", in_flight=0, ready=4, spec=spec, now=11) == 4  # 4 still in window
    assert rec.update("s", in_flight=0, ready=4, spec=spec, now=12.5) == 0  # a whole quiet window


def test_scale_up_needs_demand_sustained_for_the_up_window() -> None:
    spec = Autoscaling(target_concurrency=1, scale_up_window=5, scale_down_window=60)
    rec = Recommender()
    assert rec.update("s", in_flight=0, ready=1, spec=spec, now=0) == 1
    assert rec.update("s", in_flight=3, ready=1, spec=spec, now=1) == 1  # a burst
    assert rec.update("s", in_flight=0, ready=1, spec=spec, now=2) == 1
    assert rec.update("s", in_flight=3, ready=1, spec=spec, now=3) == 1
    assert rec.update("s", in_flight=3, ready=1, spec=spec, now=7) == 1  # 2 s in window at 0
    assert rec.update("s", in_flight=3, ready=1, spec=spec, now=8.5) == 3  # held 5 s


def test_a_forgotten_key_starts_again_from_ready() -> None:
    spec = Autoscaling(target_concurrency=1, scale_down_window=60)
    rec = Recommender()
    assert rec.update("s", in_flight=5, ready=1, spec=spec, now=0) == 5
    rec.forget(set())
    assert rec.update("s", in_flight=0, ready=2, spec=spec, now=1) == 2


def test_a_cold_start_wakes_a_server_at_zero_whatever_the_up_window() -> None:
    spec = Autoscaling(target_concurrency=1, scale_up_window=30, scale_down_window=10)
    rec = Recommender()
    assert rec.update("s", in_flight=0, ready=0, spec=spec, now=0) == 0
    assert rec.update("s", in_flight=0, ready=0, spec=spec, now=1, wake=True) == 1
    # The woken replica stays for the down window like any other demand, then goes.
    assert rec.update("s", in_flight=0, ready=1, spec=spec, now=5) == 1
    assert rec.update("s", in_flight=0, ready=1, spec=spec, now=14) == 1  # 1 was in force at 4
    assert rec.update("s", in_flight=0, ready=1, spec=spec, now=15.5) == 0


def test_a_cold_start_never_goes_past_max_replicas() -> None:
    spec = Autoscaling(target_concurrency=1, min_replicas=0, max_replicas=1)
    rec = Recommender()
    assert rec.update("s", in_flight=0, ready=0, spec=spec, now=0, wake=True) == 1
    assert rec.update("s", in_flight=9, ready=1, spec=spec, now=1, wake=True) == 1

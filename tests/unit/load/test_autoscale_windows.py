"""The autoscaling rule's windows in bounded memory, against the per-tick history it replaced
(``bench.autoscale.HistoryRecommender``, the old rule), and the rule's answers for floats no
spec should hold (it never raises)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.autoscale import HistoryRecommender
from control_plane.load.autoscale import WINDOW_BUCKETS, Recommender, raw_desired
from control_plane.registry.spec import Autoscaling

updates = st.lists(
    st.tuples(
        # Seconds since the previous update, in steps of 4 s: often a whole window or a
        # bucket, so that values end exactly where a window starts (the boundary an off-by-one
        # gets wrong).
        st.one_of(
            st.sampled_from([0, 4, 60, 64, 68, 124, 128, 132, 256]),
            st.integers(min_value=0, max_value=10).map(lambda n: 4 * n),
        ),
        st.integers(min_value=0, max_value=60),  # in flight
        st.booleans(),  # wake
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=500, deadline=None)
@given(
    steps=updates,
    up=st.sampled_from([0.0, 64.0, 128.0]),
    down=st.sampled_from([0.0, 64.0, 128.0, 256.0]),
    target=st.sampled_from([1.0, 2.0, 3.5]),
    ready=st.integers(min_value=0, max_value=12),
)
def test_same_as_the_per_tick_history_when_windows_start_on_a_bucket_boundary(
    steps: list[tuple[int, int, bool]], up: float, down: float, target: float, ready: int
) -> None:
    # Windows of 64, 128 and 256 s have buckets of 1, 2 and 4 s, and every time is a multiple
    # of 4 s: every window starts on a bucket boundary, where the two rules agree exactly.
    spec = Autoscaling(
        target_concurrency=target,
        min_replicas=0,
        max_replicas=12,
        scale_up_window=up,
        scale_down_window=down,
    )
    new, old = Recommender(), HistoryRecommender()
    now = 1_700_000_000.0
    for delta, in_flight, wake in steps:
        now += delta
        got = new.update("s", in_flight=in_flight, ready=ready, spec=spec, now=now, wake=wake)
        assert got == old.update(
            "s", in_flight=in_flight, ready=ready, spec=spec, now=now, wake=wake
        )


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=30, allow_nan=False),
            st.floats(min_value=0, max_value=60, allow_nan=False),
            st.booleans(),
        ),
        min_size=1,
        max_size=80,
    ),
    up=st.sampled_from([0.0, 0.0005, 1.5, 10.0, 45.0]),
    down=st.sampled_from([0.0, 2.0, 10.0, 60.0, 300.0]),
    buffer=st.integers(min_value=0, max_value=2),
    ready=st.integers(min_value=0, max_value=12),
)
def test_same_as_the_history_at_the_documented_resolution_at_any_time(
    steps: list[tuple[float, float, bool]], up: float, down: float, buffer: int, ready: int
) -> None:
    spec = Autoscaling(
        target_concurrency=2.5,
        min_replicas=1,
        max_replicas=12,
        buffer_replicas=buffer,
        scale_up_window=up,
        scale_down_window=down,
    )
    new, old = Recommender(), HistoryRecommender(bucketed=True)
    now = 1_000.0
    for delta, in_flight, wake in steps:
        now += delta
        got = new.update("s", in_flight=in_flight, ready=ready, spec=spec, now=now, wake=wake)
        assert got == old.update(
            "s", in_flight=in_flight, ready=ready, spec=spec, now=now, wake=wake
        )


def test_a_day_long_window_holds_a_bounded_number_of_entries() -> None:
    """A 24 h scale-down window ticked every 0.5 s over a day and a half, with load that keeps
    falling (the worst case for a monotonic deque): entries stay within the buckets."""
    spec = Autoscaling(
        target_concurrency=1, max_replicas=10_000, scale_up_window=600, scale_down_window=86_400
    )
    rec = Recommender()
    most = 0
    for tick in range(259_200):
        in_flight = 10_000 - (tick // 26)  # a new, lower value every 13 s
        rec.update("s", in_flight=in_flight, ready=0, spec=spec, now=tick * 0.5)
        most = max(most, rec.entries("s"))
    assert most <= 2 * (WINDOW_BUCKETS + 3)


@pytest.mark.parametrize(
    ("in_flight", "spec", "expected"),
    [
        pytest.param(
            3, Autoscaling(target_concurrency=5e-324, max_replicas=7), 7, id="tiny-target"
        ),
        pytest.param(
            3, Autoscaling(target_concurrency=math.nan, max_replicas=7), 0, id="nan-target"
        ),
        pytest.param(
            3, Autoscaling(target_concurrency=math.inf, max_replicas=7), 0, id="inf-target"
        ),
        pytest.param(
            3, Autoscaling(target_concurrency=-0.0, max_replicas=7), 0, id="negative-zero"
        ),
        pytest.param(
            3, Autoscaling(target_concurrency=-2, max_replicas=7), 0, id="negative-target"
        ),
        pytest.param(1e308, Autoscaling(target_concurrency=1e-308, max_replicas=7), 7, id="1e308"),
        pytest.param(math.inf, Autoscaling(target_concurrency=1, max_replicas=7), 7, id="inf-load"),
        pytest.param(math.nan, Autoscaling(target_concurrency=1, min_replicas=2), 2, id="nan-load"),
        pytest.param(-5, Autoscaling(target_concurrency=1, min_replicas=1), 1, id="negative-load"),
        pytest.param(
            3, Autoscaling(target_concurrency=1, min_replicas=5, max_replicas=2), 5, id="min>max"
        ),
    ],
)
def test_raw_desired_never_raises_and_stays_within_bounds(
    in_flight: float, spec: Autoscaling, expected: int
) -> None:
    assert raw_desired(in_flight, spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(Autoscaling(target_concurrency=5e-324, max_replicas=9), id="tiny-target"),
        pytest.param(
            Autoscaling(target_concurrency=1, scale_down_window=math.inf), id="inf-window"
        ),
        pytest.param(Autoscaling(target_concurrency=1, scale_up_window=math.nan), id="nan-window"),
        pytest.param(Autoscaling(target_concurrency=1, scale_up_window=1e-300), id="tiny-window"),
        pytest.param(Autoscaling(target_concurrency=1, scale_down_window=-0.0), id="negative-zero"),
        pytest.param(Autoscaling(target_concurrency=1, scale_down_window=1e308), id="1e308-window"),
    ],
)
@pytest.mark.parametrize("now", [0.0, 1e9, 1e308, math.inf, math.nan], ids=lambda n: f"now={n}")
def test_update_never_raises_and_stays_within_bounds(spec: Autoscaling, now: float) -> None:
    rec = Recommender()
    for step, load in enumerate([3.0, 1e308, math.inf, math.nan, 0.0, 5e-324]):
        got = rec.update("s", in_flight=load, ready=2, spec=spec, now=now + step, wake=step == 4)
        assert spec.min_replicas <= got <= spec.max_replicas

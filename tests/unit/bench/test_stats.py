"""The benchmarks' summaries: one percentile, a p99 only from enough samples, CPU at
nanosecond resolution."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.cpu import cpu_ns
from bench.stats import MIN_FOR_P99, percentile, summarize, tail, tail_name, tails_name

# 101 samples 1..101, shuffled: the rank is q percent of the way from the first to the last.
HUNDRED_AND_ONE = [float((i * 37) % 101 + 1) for i in range(101)]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        (HUNDRED_AND_ONE, 0, 1.0),
        (HUNDRED_AND_ONE, 50, 51.0),
        (HUNDRED_AND_ONE, 90, 91.0),
        (HUNDRED_AND_ONE, 99, 100.0),
        (HUNDRED_AND_ONE, 99.9, 101.0),
        (HUNDRED_AND_ONE, 100, 101.0),
        ([7.0], 0, 7.0),
        ([7.0], 99, 7.0),
        ([7.0], 100, 7.0),
        ([3.0, 1.0], 50, 1.0),  # rank 0.5 rounds half to even
        ([3.0, 1.0, 2.0, 4.0], 50, 3.0),  # rank 1.5 rounds to 2
        ([float(i) for i in range(1000)], 99, 989.0),
    ],
    ids=[
        "0-is-the-smallest",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "100-is-the-largest",
        "one-sample-q0",
        "one-sample-p99",
        "one-sample-q100",
        "two-samples-p50",
        "four-samples-p50",
        "1000-samples-p99",
    ],
)
def test_percentile_is_the_nearest_rank_with_q_in_percent(
    values: list[float], q: float, expected: float
) -> None:
    assert percentile(values, q) == expected


def test_percentile_of_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


@pytest.mark.parametrize("q", [-1, 100.5, 990])
def test_percentile_q_outside_0_to_100_is_an_error_naming_it(q: float) -> None:
    with pytest.raises(ValueError, match=f"got {q!r}"):
        percentile([1.0, 2.0], q)


@pytest.mark.parametrize(
    ("n", "has_p99"),
    [(3, False), (20, False), (50, False), (MIN_FOR_P99 - 1, False), (MIN_FOR_P99, True)],
    ids=["3", "20", "50", "199", "200"],
)
def test_a_p99_needs_200_samples(n: int, has_p99: bool) -> None:
    samples = [float(i) for i in range(n)]
    summary = summarize(samples)
    assert summary["n"] == n
    assert (summary["p99"] is not None) is has_p99
    assert summary["max"] == n - 1


def test_without_a_p99_the_tail_is_the_max_and_says_so() -> None:
    few = summarize([1.0, 2.0, 50.0], suffix="_ms")
    assert few["p99_ms"] is None
    assert tail(few) == 50.0
    assert tail_name(3) == "max of 3"
    many = summarize([float(i) for i in range(1000)], suffix="_ms")
    assert tail(many) == many["p99_ms"] == 989.0
    assert tail_name(1000) == "p99"


def test_one_column_name_for_rows_of_different_counts() -> None:
    assert tails_name([summarize([1.0] * 20), summarize([1.0] * 20)]) == "max of 20"
    assert tails_name([summarize([1.0] * 200), summarize([1.0] * 300)]) == "p99"
    assert "max" in tails_name([summarize([1.0] * 20), summarize([1.0] * 300)])


SPIN = """
import os, time
from bench.cpu import cpu_ns
before = cpu_ns(os.getpid())
spin_until = time.thread_time() + 0.03
while time.thread_time() < spin_until:
    pass
print(cpu_ns(os.getpid()) - before)
"""


def test_cpu_is_counted_in_nanoseconds_not_ticks() -> None:
    """Spin ~30 ms of CPU: /proc/PID/stat would count whole 10 ms ticks. (schedstat's figure
    for a thread that is running can lag its CPU clock by up to a tick, hence the slack.) In a
    process of its own: in the test process, threads of earlier tests ending meanwhile move
    their time from schedstat to whole ticks, rounded, and CI once read 13.5 ms here."""
    done = subprocess.run(
        [sys.executable, "-c", SPIN],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    spent = int(done.stdout)
    assert 15_000_000 <= spent < 500_000_000
    assert spent % 10_000_000 != 0


def test_cpu_of_a_thread_that_ended_is_kept() -> None:
    """A thread that spins ~50 ms and ends: its schedstat is gone, its time is not."""

    def spin() -> None:
        until = time.thread_time() + 0.05
        while time.thread_time() < until:
            pass

    before = cpu_ns(os.getpid())
    worker = threading.Thread(target=spin)
    worker.start()
    worker.join()
    assert cpu_ns(os.getpid()) - before >= 30_000_000

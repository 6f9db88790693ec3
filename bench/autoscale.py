"""The autoscaling rule's windows: memory and CPU per key for a long window, the per-tick
history (the rule before issue 23, kept here as the reference) against the bucketed deque.

``python -m bench.autoscale [--hours 24]``

One key, ``scale_down_window`` of ``--hours`` and ``scale_up_window`` of 10 min, ticked every
0.5 s (the tick of ``serve``'s load loop at the default 1 s report interval) for the window and
half as long again. Two load shapes: noisy (in flight 0-40 at random, seed 1) and falling (a new,
lower value every 13 s: the worst case for a monotonic deque). The new rule is run tick by tick
over the whole time; the old rule's history after the same time is built directly (running it
would take hours: every tick scans the whole window), then ticked 20 more times. Memory is what
``tracemalloc`` sees allocated for the key's state; CPU is the median of the last 200 ticks
(process time of one update, outside tracemalloc).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from control_plane.load.autoscale import WINDOW_BUCKETS, Recommender, raw_desired
from control_plane.registry.spec import Autoscaling

TICK = 0.5


class HistoryRecommender:
    """The rule before issue 23: one history entry per update for the whole window.

    With ``bucketed``, a window starts at the bucket boundary at or before ``now - window``
    (buckets of ``window / WINDOW_BUCKETS``): the resolution the new rule documents, so the
    two can be compared exactly (tests/unit/load/test_autoscale_windows.py)."""

    def __init__(self, *, bucketed: bool = False) -> None:
        self._history: dict[Hashable, deque[tuple[float, int]]] = {}
        self._desired: dict[Hashable, int] = {}
        self._bucketed = bucketed

    def entries(self, key: Hashable) -> int:
        return len(self._history.get(key, ()))

    def update(
        self,
        key: Hashable,
        *,
        in_flight: float,
        ready: int,
        spec: Autoscaling,
        now: float,
        wake: bool = False,
    ) -> int:
        raw = raw_desired(in_flight, spec)
        if wake:
            raw = max(raw, min(1, spec.max_replicas))
        history = self._history.get(key)
        if history is None:
            start = max(spec.min_replicas, min(spec.max_replicas, ready))
            history = self._history[key] = deque([(now, start)])
            self._desired[key] = start
        history.append((now, raw))
        horizon = now - max(spec.scale_up_window, spec.scale_down_window)
        if self._bucketed:
            horizon -= max(spec.scale_up_window, spec.scale_down_window) / WINDOW_BUCKETS
        while len(history) > 1 and history[1][0] <= horizon:
            history.popleft()
        up = min(self._covering(history, now, spec.scale_up_window))
        down = max(self._covering(history, now, spec.scale_down_window))
        current = self._desired[key]
        if wake and raw > current:
            current = raw
        elif up > current:
            current = up
        elif down < current:
            current = down
        self._desired[key] = current
        return current

    def fill(self, key: Hashable, history: list[tuple[float, int]], desired: int) -> None:
        """Give ``key`` the history it would have after those updates."""
        self._history[key] = deque(history)
        self._desired[key] = desired

    def _covering(self, history: deque[tuple[float, int]], now: float, window: float) -> list[int]:
        """The values in force at some time in the window (each until the next entry)."""
        ends = [at for at, _ in list(history)[1:]] + [math.inf]
        since = now - window
        if self._bucketed and window >= 0.001:
            width = window / WINDOW_BUCKETS
            first = math.floor(since / width)
            return [
                v
                for (_, v), end in zip(history, ends, strict=True)
                if end == math.inf or math.ceil(end / width) > first
            ]
        return [v for (_, v), end in zip(history, ends, strict=True) if end > since]


def _loads(shape: str, ticks: int) -> Callable[[int], float]:
    if shape == "falling":
        return lambda tick: float(max(0, 10_000 - tick // 26))
    rng = random.Random(1)
    values = [float(rng.randint(0, 40)) for _ in range(4096)]
    return lambda tick: values[tick % 4096]


def _measure(
    rec: Recommender, load: Callable[[int], float], spec: Autoscaling, ticks: range
) -> float:
    """Median process time of one update over ``ticks``, in us."""
    samples = []
    for tick in ticks:
        started = time.process_time_ns()
        rec.update("s", in_flight=load(tick), ready=0, spec=spec, now=tick * TICK)
        samples.append(time.process_time_ns() - started)
    return statistics.median(samples) / 1000


def run(*, hours: float = 24.0) -> dict[str, Any]:
    window = hours * 3600
    spec = Autoscaling(
        target_concurrency=1,
        max_replicas=10_000,
        scale_up_window=min(600.0, window),
        scale_down_window=window,
    )
    ticks = int(window * 1.5 / TICK)
    rows = []
    for shape in ("noisy", "falling"):
        load = _loads(shape, ticks)
        gc.collect()
        tracemalloc.start()
        new = Recommender()
        before = tracemalloc.get_traced_memory()[0]
        most = 0
        for tick in range(ticks - 200):
            new.update("s", in_flight=load(tick), ready=0, spec=spec, now=tick * TICK)
            most = max(most, new.entries("s"))
        new_bytes = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        new_us = _measure(new, load, spec, range(ticks - 200, ticks))
        # The old rule after the same time: the history of its last window, then 20 ticks.
        kept = int(window / TICK) + 1
        gc.collect()
        tracemalloc.start()
        old = HistoryRecommender()
        before = tracemalloc.get_traced_memory()[0]
        history = [
            (tick * TICK, raw_desired(load(tick), spec)) for tick in range(ticks - kept, ticks)
        ]
        old.fill("s", history, desired=max(v for _, v in history))
        del history
        old_bytes = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        old_samples = []
        for tick in range(ticks, ticks + 20):
            started = time.process_time_ns()
            old.update("s", in_flight=load(tick), ready=0, spec=spec, now=tick * TICK)
            old_samples.append(time.process_time_ns() - started)
        rows.append(
            {
                "shape": shape,
                "hours": hours,
                "ticks": ticks,
                "old_entries": old.entries("s"),
                "old_kb": round(old_bytes / 1024),
                "old_us_per_tick": round(statistics.median(old_samples) / 1000, 1),
                "new_entries_max": most,
                "new_entries_end": new.entries("s"),
                "new_kb": round(new_bytes / 1024, 1),
                "new_us_per_tick": round(new_us, 1),
            }
        )
    return {"buckets": WINDOW_BUCKETS, "tick_s": TICK, "rows": rows}


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Autoscaling windows, one key: scale_down_window of N hours, ticked every "
        f"{result['tick_s']:g} s for 1.5 windows; entries and memory (tracemalloc) of the key's "
        f"window state, CPU per tick (median of the last 200 ticks; old rule: of 20). Old = "
        f"one history entry per tick; new = a monotonic deque merged within "
        f"window/{result['buckets']} buckets",
        "| load | window | old entries | old memory | old per tick | new entries (max) | "
        "new memory | new per tick |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['shape']} | {row['hours']:g} h | {row['old_entries']:,} | "
            f"{row['old_kb']:,} KB | {row['old_us_per_tick']:,} us | {row['new_entries_max']} | "
            f"{row['new_kb']} KB | {row['new_us_per_tick']} us |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    result = run(hours=args.hours)
    print("\n".join(table(result)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The autoscaling rule: load -> how many replicas a server should run. Pure; time is an argument.

For a server (or one of its regions) with ``target_concurrency`` T > 0:

    raw = ceil(in_flight / T) + buffer_replicas, clamped to [min_replicas, max_replicas]

and the recommendation moves like the Kubernetes HPA's stabilization windows:

- up to the *lowest* raw value of the last ``scale_up_window`` (0s: the current raw value), when
  that is above the current recommendation: demand must hold for the window before it counts;
- down to the *highest* raw value of the last ``scale_down_window``, when that is below the
  current recommendation: a server goes down only after the whole window was quiet;
- otherwise it stays. The first recommendation starts from the server's READY replicas, so a
  quiet server at 3 replicas is recommended fewer only after ``scale_down_window``.

With ``target_utilization`` U > 0 instead (issue 27; the spec allows one of the two):

    raw = ceil(utilization / U) + buffer_replicas, clamped the same way

where ``utilization`` is the sum, over the replicas (of the server or region) that reported
one, of each one's utilization (``load/totals.py``: a request-weighted mean over proxies, each
in [0, 1]); the same windows and wake-from-zero follow. With no utilization reported (no
replica carried the metric in the last reports: no traffic, or replicas that send none), the
raw value is the current READY count, clamped: the recommendation holds where the server is,
neither up nor down (nothing tells how loaded the replicas are). So an idle server under a
utilization rule is not scaled to zero by the rule; a wake still scales it from zero.

``target_concurrency: 0`` and ``target_utilization: 0`` (the defaults) mean no recommendation.

Scale from zero: a request that met no replica (a cold start, ``wake``) makes the raw value at
least 1 and moves the recommendation up at once, whatever the scale-up window; it then stays
for the scale-down window like any other demand.

Memory and resolution: a window is kept as a monotonic deque of the raw values that can still
be its extreme, each with the time it stopped being in force, and two of them whose end falls
in the same bucket of ``window / WINDOW_BUCKETS`` are merged into one. So a key holds at most
``WINDOW_BUCKETS + 3`` entries per window (under 11 KB for both, measured), whatever the window
and the tick; a 24 h window, ticked every 0.5 s, used to hold 172,800. The price is resolution:
a window starts at the bucket boundary at or before ``now - window``, so it may reach back up to
``window / WINDOW_BUCKETS`` longer (60 s: 0.94 s; 24 h: 22.5 min), never shorter. Where
``now - window`` is on a boundary, the recommendation is exactly the old per-tick history's
(``bench.autoscale.HistoryRecommender``, compared by a property test). A window a spec change
makes longer starts with what the shorter one kept.

The rule never raises: a spec that validation would refuse (a target of 5e-324, nan, a window of
inf) or a load of nan or inf still gives a whole number within [min_replicas, max_replicas].
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable

from control_plane.registry.spec import Autoscaling

WINDOW_BUCKETS = 64
_WINDOW_MAX = 86_400.0  # what validation allows (registry/spec.py duration)


def _bounds(spec: Autoscaling) -> tuple[int, int]:
    low = max(0, spec.min_replicas)
    return low, max(low, spec.max_replicas)


def _clamp(value: int, spec: Autoscaling) -> int:
    low, high = _bounds(spec)
    return max(low, min(high, value))


def raw_desired(
    in_flight: float, spec: Autoscaling, *, utilization: float | None = None, ready: int = 0
) -> int:
    """The replicas ``in_flight`` requests (or, under a utilization rule, the summed
    ``utilization``; None: none reported, hold at ``ready``) need under ``spec``, before the
    windows. Never raises: whatever the floats, a whole number within [min_replicas,
    max_replicas]."""
    low, high = _bounds(spec)
    if spec.target_utilization > 0 and not spec.target_concurrency > 0:
        if utilization is None:
            return max(low, min(high, ready))
        in_flight, target = utilization, spec.target_utilization
    else:
        target = spec.target_concurrency
    load = in_flight if in_flight > 0 else 0.0  # nan and negatives: no load
    if load == 0 or not target > 0:  # a target of 0 (no recommendation), negative or nan
        demand = 0
    else:
        quotient = load / target  # inf for a tiny target or an infinite load
        demand = high if quotient >= high else math.ceil(quotient - 1e-9)
    return max(low, min(high, demand + max(0, spec.buffer_replicas)))


def _window(seconds: float) -> float:
    """A window's length as the rule uses it: nan and negatives as 0, at most 24 h."""
    return min(seconds, _WINDOW_MAX) if seconds > 0 else 0.0


def _width(window: float) -> float:
    """The bucket width of ``window``; 0 (exact, no buckets) below the 1 ms durations have."""
    return window / WINDOW_BUCKETS if window >= 0.001 else 0.0


class _Extreme:
    """The highest (or, with ``lowest``, the lowest) value in force at some time in the last
    ``window`` seconds, at bucket resolution (see the module docstring). Each entry is
    ``[end, value]``: the value was in force until ``end`` (``inf`` for the current one);
    values strictly decrease (or increase) from the front, so the front is the answer."""

    __slots__ = ("_entries", "_sign")

    def __init__(self, *, lowest: bool) -> None:
        self._entries: deque[list[float]] = deque()
        self._sign = -1 if lowest else 1

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, value: int, *, now: float, window: float) -> None:
        """``value`` is in force from ``now`` on (the previous one ended at ``now``)."""
        entries, key = self._entries, self._sign * value
        if entries:
            entries[-1][0] = now
        while entries and self._sign * entries[-1][1] <= key:
            entries.pop()  # never the extreme again: ``value`` is as extreme and later
        width = _width(window)
        # Merge the last two when they end in one bucket: the older, more extreme value then
        # counts until the newer one ended, which no bucket-aligned window tells apart.
        if (
            width > 0
            and len(entries) >= 2
            and math.ceil(entries[-1][0] / width) == math.ceil(entries[-2][0] / width)
        ):
            entries[-2][0] = entries[-1][0]
            entries.pop()
        entries.append([math.inf, value])

    def get(self, *, now: float, window: float) -> int:
        """The extreme over the values in force at some time in ``[start, now]``, ``start``
        being the bucket boundary at or before ``now - window``."""
        entries = self._entries
        width = _width(window)
        if width > 0:
            first = math.floor((now - window) / width)
            while len(entries) > 1 and math.ceil(entries[0][0] / width) <= first:
                entries.popleft()
        else:
            while len(entries) > 1 and entries[0][0] <= now - window:
                entries.popleft()
        return int(entries[0][1])


class Recommender:
    """Desired replicas per key (server, region) over time. Not thread-safe."""

    def __init__(self) -> None:
        self._up: dict[Hashable, _Extreme] = {}
        self._down: dict[Hashable, _Extreme] = {}
        self._desired: dict[Hashable, int] = {}

    def entries(self, key: Hashable) -> int:
        """How many window entries ``key`` holds (both windows): for benches and tests."""
        return len(self._up.get(key, ())) + len(self._down.get(key, ()))

    def update(
        self,
        key: Hashable,
        *,
        in_flight: float,
        ready: int,
        spec: Autoscaling,
        now: float,
        wake: bool = False,
        utilization: float | None = None,
    ) -> int:
        """Record the load of ``key`` at ``now``; returns its recommendation. ``wake``: a
        request met no replica since the last update; ``utilization``: the summed utilization
        of its reporting replicas (None: none reported). Never raises."""
        raw = raw_desired(in_flight, spec, utilization=utilization, ready=ready)
        if wake:
            raw = _clamp(max(raw, 1), spec)
        try:
            return self._update(key, raw=raw, ready=ready, spec=spec, now=now, wake=wake)
        except (OverflowError, ValueError):  # a clock of nan or 1e308: nothing is recorded
            return _clamp(self._desired.get(key, ready), spec)

    def _update(
        self, key: Hashable, *, raw: int, ready: int, spec: Autoscaling, now: float, wake: bool
    ) -> int:
        if not math.isfinite(now):
            raise ValueError(now)
        up_window, down_window = _window(spec.scale_up_window), _window(spec.scale_down_window)
        up, down = self._up.get(key), self._down.get(key)
        if up is None or down is None:
            start = _clamp(ready, spec)
            up = self._up[key] = _Extreme(lowest=True)
            down = self._down[key] = _Extreme(lowest=False)
            up.add(start, now=now, window=up_window)
            down.add(start, now=now, window=down_window)
            self._desired[key] = start
        up.add(raw, now=now, window=up_window)
        down.add(raw, now=now, window=down_window)
        lowest = up.get(now=now, window=up_window)
        highest = down.get(now=now, window=down_window)
        current = self._desired[key]
        if wake and raw > current:
            current = raw
        elif lowest > current:
            current = lowest
        elif highest < current:
            current = highest
        current = _clamp(current, spec)
        self._desired[key] = current
        return current

    def forget(self, keep: set[Hashable]) -> None:
        """Drop the history of every key not in ``keep``."""
        for key in [k for k in self._desired if k not in keep]:
            del self._up[key]
            del self._down[key]
            del self._desired[key]

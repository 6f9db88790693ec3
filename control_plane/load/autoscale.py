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

``target_concurrency: 0`` (the default) means no recommendation.

Scale from zero: a request that met no replica (a cold start, ``wake``) makes the raw value at
least 1 and moves the recommendation up at once, whatever the scale-up window; it then stays
for the scale-down window like any other demand.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable

from control_plane.registry.spec import Autoscaling


def raw_desired(in_flight: float, spec: Autoscaling) -> int:
    """The replicas ``in_flight`` requests need under ``spec``, before the windows."""
    demand = math.ceil(max(0.0, in_flight) / spec.target_concurrency - 1e-9)
    return max(spec.min_replicas, min(spec.max_replicas, demand + spec.buffer_replicas))


class Recommender:
    """Desired replicas per key (server, region) over time. Not thread-safe."""

    def __init__(self) -> None:
        self._history: dict[Hashable, deque[tuple[float, int]]] = {}
        self._desired: dict[Hashable, int] = {}

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
        """Record the load of ``key`` at ``now``; returns its recommendation. ``wake``: a
        request met no replica since the last update."""
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
        # Keep the newest entry at or before the horizon: it still covers the window's start.
        while len(history) > 1 and history[1][0] <= horizon:
            history.popleft()
        up_from = now - spec.scale_up_window
        down_from = now - spec.scale_down_window
        up = min(value for at, value in _covering(history, up_from))
        down = max(value for at, value in _covering(history, down_from))
        current = self._desired[key]
        if wake and raw > current:
            current = raw
        elif up > current:
            current = up
        elif down < current:
            current = down
        self._desired[key] = current
        return current

    def forget(self, keep: set[Hashable]) -> None:
        """Drop the history of every key not in ``keep``."""
        for key in [k for k in self._history if k not in keep]:
            del self._history[key]
            del self._desired[key]


def _covering(history: deque[tuple[float, int]], since: float) -> list[tuple[float, int]]:
    """The entries in force at some time in ``[since, now]``: those after ``since`` and the
    last one at or before it."""
    inside = [entry for entry in history if entry[0] > since]
    before = [entry for entry in history if entry[0] <= since]
    return ([before[-1]] if before else []) + inside

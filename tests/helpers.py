"""Shared test helpers: async waiting on conditions with a deadline, Envoy histogram reads
(ports and blocking waits are in ``harness.waiting``, routing-model builders in
``harness.models``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def histogram_quantile(stats_json: str, name: str, quantile: float) -> float | None:
    """From Envoy's ``/stats?format=json``: histogram ``name``'s cumulative ``quantile`` (0 is
    the smallest sample, 100 the largest), or None before a stats flush (every 5 s) has merged
    a sample. Envoy keeps two significant digits."""
    for stat in json.loads(stats_json)["stats"]:
        if "histograms" not in stat:
            continue
        histograms = stat["histograms"]
        index = histograms["supported_quantiles"].index(quantile)
        for entry in histograms["computed_quantiles"]:
            if entry["name"] == name:
                value = entry["values"][index]["cumulative"]
                return None if value is None else float(value)
    return None


async def async_wait_until(
    condition: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not an I/O timeout
    interval: float = 0.005,
    what: str = "",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(interval)

"""Shared test helpers: async waiting on conditions with a deadline, Envoy histogram reads,
small routing-model builders (ports and blocking waits are in ``harness.waiting``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from control_plane.routing.model import Endpoint, RoutedServer, RoutingTable

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


def endpoint(
    replica_id: str,
    port: int,
    *,
    region: str = "us-west",
    draining: bool = False,
    weight: int = 100,
    zone: str = "",
) -> Endpoint:
    return Endpoint(
        replica_id=replica_id,
        host="127.0.0.1",
        port=port,
        region=region,
        zone=zone,
        weight=weight,
        draining=draining,
    )


def server(
    name: str,
    *endpoints: Endpoint,
    hostnames: tuple[str, ...] = (),
    protocol: str = "http",
    workspace: str = "default",
) -> RoutedServer:
    return RoutedServer(
        name=name,
        workspace=workspace,
        hostnames=hostnames or (f"{name}.local",),
        protocol=protocol,
        endpoints=tuple(endpoints),
    )


def table(*servers: RoutedServer, revision: int = 1) -> RoutingTable:
    return RoutingTable(servers=tuple(servers), problems=(), revision=revision, committed_at=0.0)

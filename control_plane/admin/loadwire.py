"""The internal load messages between a ``serve --workers`` worker and its supervisor
(``WatchLoadTotals``): ``load/totals.py``'s values to and from the admin protos. The totals and
the specs travel as separate messages; a spec is sent only when it changes.

Reading is strict where a value could mislead (a negative count, a NaN time) and never raises:
a bad entry is left out. Imports the admin protos and the load and spec values only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from control_plane.admin.pb import admin_pb2
from control_plane.load.totals import (
    NEVER,
    LoadSpec,
    LoadTotals,
    RegionTotals,
    ServerTotals,
)
from control_plane.registry.spec import Autoscaling


class TotalsSource(Protocol):
    """A process's load view (``load/server.py``'s ``LoadService``)."""

    @property
    def version(self) -> int: ...

    @property
    def specs_version(self) -> str: ...

    @property
    def specs(self) -> Mapping[str, LoadSpec]: ...

    def totals(self, servers: Iterable[str] | None = None) -> LoadTotals: ...

    def changes_since(self, version: int) -> frozenset[str] | None: ...


class TotalsFeed:
    """One ``WatchLoadTotals`` stream: what to send next. The specs whenever their version
    moved since the last sent (before any totals that follow them); the totals of every
    server first, then of the servers that changed and those that went."""

    def __init__(self, source: TotalsSource) -> None:
        self._source = source
        self._specs_sent = ""
        self._sent: int | None = None

    def updates(self) -> list[Any]:
        """The ``LoadTotalsUpdate`` messages that bring the stream up to date (none: it is)."""
        source = self._source
        updates = []
        if source.specs_version != self._specs_sent:
            self._specs_sent = source.specs_version
            specs = specs_message(self._specs_sent, source.specs)
            updates.append(admin_pb2.LoadTotalsUpdate(specs=specs))
        version = source.version
        if version == self._sent:
            return updates
        changed = source.changes_since(self._sent) if self._sent is not None else None
        self._sent = version
        if changed is None:
            totals = totals_message(source.totals())
        elif changed:
            mine = source.totals(changed)
            present = {server.server for server in mine.servers}
            totals = totals_message(mine, changes_only=True, removed=changed - present)
        else:
            return updates
        updates.append(admin_pb2.LoadTotalsUpdate(totals=totals))
        return updates


def totals_message(
    totals: LoadTotals, *, changes_only: bool = False, removed: Iterable[str] = ()
) -> Any:
    """``totals`` as a ``LoadTotals`` message; ``changes_only``: only the servers that changed
    (``totals``) and those that went (``removed``)."""
    message = admin_pb2.LoadTotals(
        proxies=totals.proxies,
        interval_seconds=totals.interval,
        at=totals.at,
        changes_only=changes_only,
        removed_servers=sorted(removed),
    )
    for server in totals.servers:
        item = message.servers.add(server=server.server, cold_starts=server.cold_starts)
        if server.woken_at != NEVER:
            item.woken_at = server.woken_at
        for region in server.regions:
            item.regions.add(
                region=region.region,
                in_flight=region.in_flight,
                requests=region.requests,
                errors=region.errors,
                dropped=region.dropped,
                ready=region.ready,
            )
    return message


def totals_from(message: Any) -> LoadTotals:
    """A ``LoadTotals`` message -> the value (its servers sorted; a server or region named
    twice, merged)."""
    servers: dict[str, ServerTotals] = {}
    for item in message.servers:
        regions: dict[str, RegionTotals] = {}
        for region in item.regions:
            value = RegionTotals(
                region=region.region,
                in_flight=region.in_flight,
                requests=region.requests,
                errors=region.errors,
                dropped=region.dropped,
                ready=region.ready,
            )
            have = regions.get(value.region)
            regions[value.region] = value if have is None else have.merge(value)
        woken_at = item.woken_at if item.HasField("woken_at") else NEVER
        server = ServerTotals(
            server=item.server,
            regions=tuple(regions[name] for name in sorted(regions)),
            cold_starts=item.cold_starts,
            woken_at=woken_at if not math.isnan(woken_at) else NEVER,
        )
        have_server = servers.get(server.server)
        servers[server.server] = server if have_server is None else have_server.merge(server)
    return LoadTotals(
        servers=tuple(servers[name] for name in sorted(servers)),
        proxies=message.proxies,
        interval=message.interval_seconds,
        at=message.at,
    )


def specs_message(version: str, specs: Mapping[str, LoadSpec]) -> Any:
    message = admin_pb2.LoadSpecs(version=version)
    for name, spec in specs.items():
        item = message.specs.add(
            server=name, regions=spec.regions, cold_start_mode=spec.cold_start_mode
        )
        rule = spec.autoscaling
        if rule is not None:
            item.autoscaling.CopyFrom(rule_message(rule))
    return message


def specs_from(message: Any) -> tuple[str, dict[str, LoadSpec]]:
    """A ``LoadSpecs`` message -> its version and every server's spec."""
    specs = {
        item.server: LoadSpec(
            regions=tuple(item.regions),
            cold_start_mode=item.cold_start_mode,
            autoscaling=rule_from(item.autoscaling) if item.HasField("autoscaling") else None,
        )
        for item in message.specs
    }
    return message.version, specs


def rule_message(rule: Autoscaling) -> Any:
    return admin_pb2.AutoscalingRule(
        target_concurrency=rule.target_concurrency,
        min_replicas=rule.min_replicas,
        max_replicas=rule.max_replicas,
        buffer_replicas=rule.buffer_replicas,
        scale_up_window_seconds=rule.scale_up_window,
        scale_down_window_seconds=rule.scale_down_window,
    )


def rule_from(message: Any) -> Autoscaling:
    return Autoscaling(
        target_concurrency=message.target_concurrency,
        min_replicas=message.min_replicas,
        max_replicas=message.max_replicas,
        buffer_replicas=message.buffer_replicas,
        scale_up_window=message.scale_up_window_seconds,
        scale_down_window=message.scale_down_window_seconds,
    )

"""The internal load messages between a ``serve --workers`` worker and its supervisor
(``WatchLoadTotals``): ``load/totals.py``'s values to and from the admin protos. The totals and
the specs travel as separate messages; a spec is sent only when it changes, and a server's
ready replicas only when they change on that stream (``ready_as_sent``).

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
    ReplicaTotals,
    ServerTotals,
)
from control_plane.registry.spec import Autoscaling

# A server's ready replicas as sent: (id, region) pairs and (id, revision) pairs.
Ready = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


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

    @property
    def remote_version(self) -> int: ...

    def remote_totals(self) -> tuple[LoadTotals, bool]: ...


class TotalsFeed:
    """One ``WatchLoadTotals`` stream: what to send next. The specs whenever their version
    moved since the last sent (before any totals that follow them); the totals of every
    server first, then of the servers that changed and those that went; and, apart (``remote``
    set, whole each time), the other control planes' totals whenever they moved
    (``control_plane/fleet/``)."""

    def __init__(self, source: TotalsSource) -> None:
        self._source = source
        self._specs_sent = ""
        self._sent: int | None = None
        # Each server's ready replicas and their revisions as last sent (the view's own
        # tuples, not copies).
        self._ready_sent: dict[str, Ready] = {}
        self._remote_sent = 0

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
            return self._remote(updates)
        changed = source.changes_since(self._sent) if self._sent is not None else None
        self._sent = version
        if changed is None:
            totals = totals_message(source.totals(), ready_sent=self._ready_sent)
        elif changed:
            mine = source.totals(changed)
            present = {server.server for server in mine.servers}
            gone = changed - present
            for name in gone:
                self._ready_sent.pop(name, None)
            totals = totals_message(
                mine, changes_only=True, removed=gone, ready_sent=self._ready_sent
            )
        else:
            return self._remote(updates)
        updates.append(admin_pb2.LoadTotalsUpdate(totals=totals))
        return self._remote(updates)

    def _remote(self, updates: list[Any]) -> list[Any]:
        """``updates`` and, after them, the remote totals if they moved."""
        source = self._source
        if source.remote_version != self._remote_sent:
            self._remote_sent = source.remote_version
            remote, partial = source.remote_totals()
            message = totals_message(remote)
            message.remote = True
            message.partial = partial
            updates.append(admin_pb2.LoadTotalsUpdate(totals=message))
        return updates


def totals_message(
    totals: LoadTotals,
    *,
    changes_only: bool = False,
    removed: Iterable[str] = (),
    ready_sent: dict[str, Ready] | None = None,
) -> Any:
    """``totals`` as a ``LoadTotals`` message; ``changes_only``: only the servers that changed
    (``totals``) and those that went (``removed``). ``ready_sent`` (a stream's: each server's
    ready replicas and their revisions as last sent on it, updated here): a server's equal to
    those are named in ``ready_as_sent`` instead of listed. A ready replica's entry carries its
    revision (``ServerTotals.revisions``)."""
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
        if server.withheld:
            item.candidates_withheld = True
        for region in server.regions:
            item.regions.add(
                region=region.region,
                in_flight=region.in_flight,
                requests=region.requests,
                errors=region.errors,
                dropped=region.dropped,
                ready=region.ready,
            )
        add = item.replicas.add
        for replica in server.replicas:
            if replica.utilization_weight:
                add(
                    replica=replica.replica,
                    in_flight=replica.in_flight,
                    requests=replica.requests,
                    errors=replica.errors,
                    revision=replica.revision,
                    utilization_value=replica.utilization_value,
                    utilization_weight=replica.utilization_weight,
                    region=replica.region,
                )
            elif replica.errors or replica.revision:
                add(
                    replica=replica.replica,
                    in_flight=replica.in_flight,
                    requests=replica.requests,
                    errors=replica.errors,
                    revision=replica.revision,
                )
            else:  # the usual case: fewer fields to set (1,000 replicas a server)
                add(replica=replica.replica, in_flight=replica.in_flight, requests=replica.requests)
        ready, revisions = server.ready_replicas, server.revisions
        if ready_sent is not None:
            before = ready_sent.get(server.server)
            if (
                before is not None
                and (before[0] is ready or before[0] == ready)
                and (before[1] is revisions or before[1] == revisions)
            ):
                message.ready_as_sent.append(server.server)
                continue
            ready_sent[server.server] = (ready, revisions)
        if not revisions:
            for replica_id, region_name in ready:
                add(replica=replica_id, ready=True, region=region_name)
            continue
        revision_of = dict(revisions)
        for replica_id, region_name in ready:
            add(
                replica=replica_id,
                ready=True,
                region=region_name,
                revision=revision_of.get(replica_id, ""),
            )
    return message


def totals_from(message: Any, ready_before: Mapping[str, ServerTotals] | None = None) -> LoadTotals:
    """A ``LoadTotals`` message -> the value (its servers sorted; a server, region or replica
    named twice, merged; a replica entry with no load and not ready, left out). A server named
    in ``ready_as_sent`` keeps the ready replicas (and their revisions) it has in
    ``ready_before`` (the stream's servers as last taken; none: no ready replicas)."""
    as_sent = set(message.ready_as_sent)
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
        replicas: dict[str, ReplicaTotals] = {}
        ready: set[tuple[str, str]] = set()
        revised = False  # a ready entry carries a revision: every ready one's is read after
        for entry in item.replicas:
            if entry.ready:
                ready.add((entry.replica, entry.region))
                revised = revised or bool(entry.revision)
            in_flight, requests, errors = entry.in_flight, entry.requests, entry.errors
            weight = entry.utilization_weight
            if in_flight or requests or errors or weight:
                name = entry.replica
                load = ReplicaTotals(
                    replica=name,
                    in_flight=in_flight,
                    requests=requests,
                    errors=errors,
                    revision=entry.revision,
                    # A value above its weight (a mean above 1) is read as the weight.
                    utilization_value=min(entry.utilization_value, weight),
                    utilization_weight=weight,
                    region=entry.region if weight else "",
                )
                have_replica = replicas.get(name)
                replicas[name] = load if have_replica is None else have_replica.merge(load)
        woken_at = item.woken_at if item.HasField("woken_at") else NEVER
        if item.server in as_sent:
            found = ready_before.get(item.server) if ready_before is not None else None
            ready_pairs = found.ready_replicas if found is not None else ()
            revision_pairs = found.revisions if found is not None else ()
        else:
            ready_pairs = tuple(sorted(ready))
            # Listed where any ready replica carries a revision (as ``ServerTotals`` says).
            revision_pairs = (
                tuple(sorted({(e.replica, e.revision) for e in item.replicas if e.ready}))
                if revised
                else ()
            )
        server = ServerTotals(
            server=item.server,
            regions=tuple(regions[name] for name in sorted(regions)),
            replicas=tuple(replicas[name] for name in sorted(replicas)),
            ready_replicas=ready_pairs,
            cold_starts=item.cold_starts,
            woken_at=woken_at if not math.isnan(woken_at) else NEVER,
            revisions=revision_pairs,
            withheld=item.candidates_withheld,
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
        target_utilization=rule.target_utilization,
        metric=rule.metric,
    )


def rule_from(message: Any) -> Autoscaling:
    return Autoscaling(
        target_concurrency=message.target_concurrency,
        min_replicas=message.min_replicas,
        max_replicas=message.max_replicas,
        buffer_replicas=message.buffer_replicas,
        scale_up_window=message.scale_up_window_seconds,
        scale_down_window=message.scale_down_window_seconds,
        target_utilization=message.target_utilization,
        metric=message.metric,
    )

"""The tick touches only active servers; its rows must equal a from-scratch recomputation of
every server at every tick (the slow path it replaced), whatever the sequence of load, cold
starts, table changes and time."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import replace

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import load_report_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane import metrics
from control_plane.load.autoscale import Recommender
from control_plane.load.reports import Load, LoadBook
from control_plane.load.server import LoadService
from control_plane.load.totals import MILLION, LoadRow, ReplicaTotals, RevisionRow, millionths
from control_plane.registry.spec import parse_spec
from control_plane.routing.model import RoutedServer, RoutingTable
from control_plane.translate import names
from harness.models import endpoint, server, table

REGIONS = ("us-west", "us-east")
_NO_LOAD = Load(
    in_flight=0.0, requests_per_second=0.0, errors_per_second=0.0, dropped_per_second=0.0
)


class FromScratch:
    """Every server, every key, every tick: the tick as it was before the active set."""

    def __init__(self) -> None:
        self.recommender = Recommender()
        self.cold_seen: dict[str, int] = {}

    def rows(self, table_: RoutingTable, book: LoadBook, now: float) -> list[LoadRow]:
        totals, replica_loads = book.loads()
        rows: list[LoadRow] = []
        keep: set[object] = set()
        for srv in table_.servers:
            ready_by_region: dict[str, int] = {}
            for e in srv.endpoints:
                if not e.draining:
                    ready_by_region[e.region] = ready_by_region.get(e.region, 0) + 1
            regions = sorted(
                set(srv.spec.regions)
                | set(ready_by_region)
                | {r for (n, r) in totals if n == srv.name and r != "*"}
            )
            scaling = srv.spec.autoscaling
            cold = book.cold_starts.get(srv.name, 0)
            woken = cold - self.cold_seen.get(srv.name, 0) > 0 and not ready_by_region
            self.cold_seen[srv.name] = cold
            for region in ["*", *regions]:
                load = totals.get((srv.name, region)) or _NO_LOAD
                ready = (
                    sum(ready_by_region.values())
                    if region == "*"
                    else ready_by_region.get(region, 0)
                )
                desired = None
                wanted = region == "*" or bool(srv.spec.regions)
                if scaling is not None and scaling.target_concurrency > 0 and wanted:
                    keep.add((srv.name, region))
                    desired = self.recommender.update(
                        (srv.name, region),
                        in_flight=load.in_flight,
                        ready=ready,
                        spec=scaling,
                        now=now,
                        wake=woken and region == "*",
                    )
                rows.append(
                    LoadRow(
                        server=srv.name,
                        region=region,
                        ready_replicas=ready,
                        in_flight=load.in_flight,
                        requests_per_second=load.requests_per_second,
                        errors_per_second=load.errors_per_second,
                        dropped_per_second=load.dropped_per_second,
                        desired_replicas=desired,
                        cold_starts=cold if region == "*" else 0,
                        cold_start_mode=srv.spec.cold_start.mode if region == "*" else "",
                        autoscaling=scaling if desired is not None else None,
                        scale_down_candidates=self.candidates(
                            srv, region, ready - desired, replica_loads
                        )
                        if desired is not None and desired < ready
                        else (),
                        replicas=self.replicas(srv, replica_loads) if region == "*" else (),
                        revisions=self.revisions(srv, replica_loads) if region == "*" else (),
                    )
                )
        self.recommender.forget(keep)
        return rows

    @staticmethod
    def candidates(
        srv: RoutedServer, region: str, count: int, loads: dict[tuple[str, str], Load]
    ) -> tuple[str, ...]:
        def idleness(replica: str) -> tuple[int, int, str]:
            load = loads.get((srv.name, replica), _NO_LOAD)
            return (
                millionths(load.in_flight),
                millionths(load.requests_per_second),
                replica,
            )

        ready = {
            e.replica_id
            for e in srv.endpoints
            if not e.draining and (region == "*" or e.region == region)
        }
        return tuple(sorted(ready, key=idleness)[:count])

    @staticmethod
    def replicas(
        srv: RoutedServer, loads: dict[tuple[str, str], Load]
    ) -> tuple[ReplicaTotals, ...]:
        found = []
        revision_of = {e.replica_id: e.revision for e in srv.endpoints}
        for replica in sorted({e.replica_id for e in srv.endpoints}):
            load = loads.get((srv.name, replica))
            if load is not None and (
                load.in_flight or load.requests_per_second or load.errors_per_second
            ):
                found.append(
                    ReplicaTotals(
                        replica=replica,
                        in_flight=millionths(load.in_flight),
                        requests=millionths(load.requests_per_second),
                        errors=millionths(load.errors_per_second),
                        revision=revision_of[replica],
                    )
                )
        return tuple(found)

    @classmethod
    def revisions(
        cls, srv: RoutedServer, loads: dict[tuple[str, str], Load]
    ) -> tuple[RevisionRow, ...]:
        """Issue 26: per revision with a ready replica or load, where any replica carries
        one; none otherwise."""
        ready = {e.replica_id: e.revision for e in srv.endpoints if not e.draining}
        replicas = cls.replicas(srv, loads)
        if not any(ready.values()) and not any(r.revision for r in replicas):
            return ()
        rows = []
        for name in sorted(set(ready.values()) | {r.revision for r in replicas}):
            mine = [r for r in replicas if r.revision == name]
            rows.append(
                RevisionRow(
                    revision=name,
                    ready_replicas=sum(1 for revision in ready.values() if revision == name),
                    in_flight=sum(r.in_flight for r in mine) / MILLION,
                    requests_per_second=sum(r.requests for r in mine) / MILLION,
                    errors_per_second=sum(r.errors for r in mine) / MILLION,
                )
            )
        return tuple(rows)


def random_server(rng: random.Random, name: str) -> RoutedServer:
    spec: dict[str, object] = {}
    if rng.random() < 0.7:
        spec["autoscaling"] = {
            "target_concurrency": rng.choice([1, 2, 4]),
            "min_replicas": rng.choice([0, 1]),
            "max_replicas": rng.choice([3, 10]),
            "buffer_replicas": rng.choice([0, 0, 1]),
            "scale_up_window": rng.choice(["0s", "1s", "3s"]),
            "scale_down_window": rng.choice(["0s", "2s", "5s"]),
        }
    if rng.random() < 0.4:
        spec["regions"] = list(REGIONS)
    if rng.random() < 0.3:
        spec["cold_start"] = {"mode": "hold"}
    # Issue 26: about half the servers' replicas carry revisions ("" among them: rows from
    # older writers).
    revisions = ["", "v1", "v2"] if rng.random() < 0.5 else [""]
    endpoints = [
        replace(
            endpoint(f"{name}-r{i}", 9000 + i, region=rng.choice(REGIONS)),
            revision=rng.choice(revisions),
        )
        for i in range(rng.choice([0, 1, 1, 2]))
    ]
    return replace(server(name, *endpoints), spec=parse_spec(spec))


def report(rng: random.Random, servers: list[RoutedServer]) -> list[object]:
    stats = []
    for srv in rng.sample(servers, k=min(len(servers), rng.choice([1, 2, 3]))):
        cluster = load_report_pb2.ClusterStats(
            cluster_name=names.cluster(workspace=srv.workspace, server=srv.name)
        )
        for region in REGIONS:
            locality = cluster.upstream_locality_stats.add(
                locality=base_pb2.Locality(region=region),
                total_requests_in_progress=rng.choice([0, 0, 1, 3, 9]),
                total_issued_requests=rng.choice([0, 5]),
            )
            # Per endpoint (its replica's load), and now and then one no replica has.
            for e in srv.endpoints:
                if e.region == region:
                    point = locality.upstream_endpoint_stats.add(
                        total_requests_in_progress=rng.choice([0, 0, 1, 2]),
                        total_issued_requests=rng.choice([0, 3]),
                        total_error_requests=rng.choice([0, 0, 1]),
                    )
                    point.address.socket_address.address = e.host
                    point.address.socket_address.port_value = e.port
            if rng.random() < 0.1:
                point = locality.upstream_endpoint_stats.add(total_requests_in_progress=1)
                point.address.socket_address.address = "127.0.0.1"
                point.address.socket_address.port_value = 1
        stats.append(cluster)
    return stats


def ticks(seed: int) -> Iterator[tuple[LoadService, list[LoadRow], list[LoadRow], str]]:
    """A random sequence of load, cold starts, table changes and time; after each tick: the
    service, its rows, the from-scratch rows, and where in the sequence."""
    rng = random.Random(seed)
    servers = [random_server(rng, f"s{i}") for i in range(8)]
    current = [table(*servers)]
    clock = [1000.0]
    # Every endpoint entry read, and no candidates withheld while a server's replica load is
    # first asked for (issue 29: ``test_lrs_known_answer.py``, ``test_scale_down_reading.py``):
    # the rows of the slow path this test compares with.
    service = LoadService(
        table=lambda: current[0], clock=lambda: clock[0], interval=1.0, warm_intervals=0.0
    )
    scratch = FromScratch()
    streams: dict[int, int] = {}
    numbers = itertools.count(1)
    for step in range(150):
        clock[0] += rng.choice([0.25, 0.5, 0.5, 2.0])
        roll = rng.random()
        if roll < 0.25:
            # Three proxies, each on a stream that lasts until forgotten (a stream's new
            # report replaces its own); a forgotten proxy comes back on a new stream.
            proxy = rng.randrange(3)
            service.book.record(
                f"proxy-{proxy}",
                report(rng, servers),
                stream=streams.setdefault(proxy, next(numbers)),
                now=clock[0],
                asked_interval=1.0,
                catalog=replace(service.catalog(), per_replica=None),
            )
        elif roll < 0.32:
            gone = streams.pop(rng.randrange(3), None)
            if gone is not None:
                service.book.forget(gone)
        elif roll < 0.40:
            service.book.note_cold_start(rng.choice(servers).name, now=clock[0])
        elif roll < 0.48:
            index = rng.randrange(len(servers))
            if rng.random() < 0.2 and len(servers) > 2:
                servers.pop(index)  # a server goes
            else:
                servers[index] = random_server(rng, servers[index].name)
            if rng.random() < 0.2:
                servers.append(random_server(rng, f"n{step}"))
            current[0] = table(*servers, revision=step)
        elif roll < 0.5:
            current[0] = table(*servers, revision=step)  # a new table, the same servers
        rows = service.tick()
        yield service, rows, scratch.rows(current[0], service.book, clock[0]), f"{seed}/{step}"


@pytest.mark.parametrize("seed", range(40))
def test_incremental_rows_equal_a_recomputation_of_every_server(seed: int) -> None:
    for _, rows, expected, where in ticks(seed):
        assert rows == expected, where


class EveryRow(Collector):  # type: ignore[misc]
    """The load families as prometheus_client renders them from every row (the collector the
    cached exposition replaced)."""

    def __init__(self, rows: list[LoadRow]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = [
            GaugeMetricFamily(
                name, text, labels=["server", "revision" if "_revision_" in name else "region"]
            )
            for name, text in metrics._LOAD_FAMILIES
        ]
        for row in self._rows:
            key = [row.server, row.region]
            families[0].add_metric(key, row.in_flight)
            families[1].add_metric(key, row.requests_per_second)
            if row.desired_replicas is not None:
                families[2].add_metric(key, row.desired_replicas)
            for revision in row.revisions:
                families[3].add_metric(
                    [row.server, revision.revision], revision.requests_per_second
                )
                families[4].add_metric([row.server, revision.revision], revision.errors_per_second)
        yield from families


@pytest.mark.parametrize("seed", range(10))
def test_the_cached_exposition_equals_a_rendering_of_every_row(seed: int) -> None:
    exposition: metrics.LoadExposition | None = None
    for service, rows, _, where in ticks(seed):
        exposition = exposition or metrics.LoadExposition(service)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(EveryRow(rows))
        assert exposition.render().decode() == generate_latest(registry).decode(), where
        assert exposition.render() is exposition.render()  # the same version: from memory

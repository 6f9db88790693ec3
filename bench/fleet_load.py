"""Fleet-wide load through the registry (``control_plane/fleet/``): what publishing costs, what
it adds to the registry's reads, and how soon a load step on replica B shows on replica A.

On a real registry (a SQLite file; the Spanner emulator with ``--registry
spanner``), with the real ``FleetLoad`` and ``LoadService``; each replica has its own registry
connection, as separate processes would. A replica's own totals are set directly (what its
proxies' reports would make), so the figures are the fleet path alone:

- publishing, at N servers with traffic (every server with load in two regions): bytes per
  write, the thread CPU of one publish (encode + the store's write), writes per second per
  process (counted over a window: one per report interval while there is load);
- the reads it adds: per process, one read of every record each ``READ_EVERY``; the bytes and
  the thread CPU of one read and sum (``read_load`` + ``records.remote``) with the other
  publisher's record of N servers (decoded once per write, not per read: the first read after
  a write and the others are shown apart);
- a load step on B -> A's rows show it: A and B are processes of their own; B's own totals
  change at a random moment, and the clock (the machine's one monotonic clock) stops when A's
  ``watch()`` yields rows with the new figure. Goal: within one report interval
  + 100 ms (B writes at its next interval; A reads every 50 ms and ticks at once).

Run: ``python -m bench.fleet_load --servers 10 1000 --tries 20 --interval 0.5``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.stats import summarize
from control_plane import logs
from control_plane.fleet import records
from control_plane.fleet.publish import READ_EVERY, FleetLoad
from control_plane.load.server import LoadService
from control_plane.load.totals import MILLION, LoadTotals, RegionTotals, ServerTotals
from control_plane.registry import Registry, open_registry
from control_plane.registry.spec import Autoscaling
from harness import models
from harness.spanner_emulator import Emulator


def busy(servers: int, in_flight: int, *, interval: float) -> LoadTotals:
    """``servers`` servers, each with load in two regions (and the "*" total)."""
    out = []
    for index in range(servers):
        regions = tuple(
            RegionTotals(
                region=region,
                in_flight=share * in_flight * MILLION,
                requests=share * 123_456_789,
                errors=share * 1_234_567,
                ready=share,
            )
            for region, share in (("*", 2), ("us-east", 1), ("us-west", 1))
        )
        out.append(ServerTotals(server=f"s{index:05d}", regions=regions, cold_starts=index % 3))
    return LoadTotals(servers=tuple(out), proxies=10, interval=interval, at=time.monotonic())


class Own:
    """What a replica's proxies say, set by the benchmark."""

    def __init__(self, totals: LoadTotals) -> None:
        self.value = totals

    def __call__(self, servers: Any = None) -> LoadTotals:
        return self.value


def view(servers: int, interval: float, own: Own) -> LoadService:
    # A target no step here reaches: every recommendation stays at the one ready replica,
    # settled, so a tick touches only what moved (the load view's own cost is bench/idle_load).
    rule = Autoscaling(target_concurrency=10_000, max_replicas=10**6)
    routed = []
    for index in range(servers):
        made = models.server(f"s{index:05d}", models.endpoint(f"r{index}", 10_000 + index % 50_000))
        routed.append(replace(made, spec=replace(made.spec, autoscaling=rule)))
    current = models.table(*routed)
    load = LoadService(table=lambda: current, interval=interval)
    load.totals = own  # type: ignore[method-assign]
    return load


def publish_cost(
    registry: Registry, servers: int, *, interval: float, tries: int
) -> dict[str, Any]:
    """Bytes per write and the thread CPU of one publish (encode + write), over ``tries``."""
    own = Own(busy(servers, 1, interval=interval))
    fleet = FleetLoad(
        registry=registry, load=view(servers, interval, own), publisher="cost", group="cost"
    )
    cpu, sizes, reads, read_bytes, first_read = [], [], [], [], []
    reader = FleetLoad(
        registry=registry, load=view(1, interval, Own(LoadTotals())), publisher="r", group="r"
    )
    for _ in range(tries):
        started = time.thread_time()
        record = fleet.record(records.publishable(own.value))
        registry.publish_load(record, forget_before=record.written_at - 600)
        cpu.append((time.thread_time() - started) * 1000)
        sizes.append(record.size)
        # The reader's side: the first read after a write decodes it; the others find it read.
        for kind in ("first", "again"):
            started = time.thread_time()
            found = registry.read_load(
                max_records=records.MAX_RECORDS, max_bytes=records.MAX_RECORD_BYTES
            )
            wall = time.time()
            records.remote(
                found,
                publisher="r",
                group="r",
                now=wall,
                wall_offset=wall - time.monotonic(),
                decoded=reader._decoded,
            )
            (first_read if kind == "first" else reads).append((time.thread_time() - started) * 1000)
        read_bytes.append(sum(r.size for r in found))
    return {
        "servers": servers,
        "bytes_per_write": max(sizes),
        "publish_cpu_ms": summarize(cpu, digits=3),
        "read_bytes": max(read_bytes),
        "read_cpu_ms_after_a_write": summarize(first_read, digits=3),
        "read_cpu_ms_unchanged": summarize(reads, digits=3),
        "reads_per_second_per_process": round(1 / READ_EVERY, 1),
    }


async def writes_per_second(
    registry: Registry, servers: int, *, interval: float, seconds: float
) -> float:
    """One ``FleetLoad`` with load on every server, run for ``seconds``: its writes per second
    (counted in the store's calls)."""
    counted = [0]
    publish = registry.publish_load

    def counting(record: Any, *, forget_before: float) -> None:
        counted[0] += 1
        publish(record, forget_before=forget_before)

    registry.publish_load = counting  # type: ignore[method-assign]
    load = view(servers, interval, Own(busy(servers, 1, interval=interval)))
    fleet = FleetLoad(registry=registry, load=load, publisher="rate", group="rate")
    tasks = [asyncio.create_task(load.run()), asyncio.create_task(fleet.run())]
    await asyncio.sleep(seconds)  # the window counted
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    registry.publish_load = publish  # type: ignore[method-assign]
    return round((counted[0] - 1) / seconds, 2)  # the last: the empty record on the way out


def _replica(role: str, url: str, servers: int, interval: float, conn: Any) -> None:
    """One replica in its own process (as ``serve`` would be): its load view and FleetLoad on
    its own registry connection. B takes steps from ``conn`` (its own "*" in flight for the
    first server) and answers with the monotonic time it took each; A sends the first
    server's "*" in flight, with the monotonic time, whenever its rows move."""
    logs.configure(level="warning", json=True)

    async def main() -> None:
        store = open_registry(url)
        own = Own(busy(servers, 1, interval=interval))
        load = view(servers, interval, own)
        fleet = FleetLoad(registry=store, load=load, publisher=role, group=role)
        tasks = [asyncio.create_task(load.run()), asyncio.create_task(fleet.run())]
        loop = asyncio.get_running_loop()
        try:
            if role == "b":
                head = own.value.servers[0]  # the step multiplies its first figure
                while (step := await loop.run_in_executor(None, conn.recv)) is not None:
                    stepped = ServerTotals(
                        server=head.server,
                        regions=tuple(
                            replace(r, in_flight=r.in_flight * step) if r.region == "*" else r
                            for r in head.regions
                        ),
                    )
                    own.value = replace(own.value, servers=(stepped, *own.value.servers[1:]))
                    conn.send(time.monotonic())
            else:
                first = "s00000"
                async for _ in load.watch():
                    for row in load.rows_of(first):
                        if row.region == "*":
                            conn.send((row.in_flight, time.monotonic()))
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            store.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def load_step(url: str, *, servers: int, interval: float, tries: int) -> dict[str, Any]:
    """B's own in flight steps (2 x 2, 2 x 3, ...) on the first server; the time from B taking
    the step to A's rows showing it (same machine: one monotonic clock). A and B are processes
    of their own, as two ``serve`` replicas are."""
    context = multiprocessing.get_context("spawn")
    to_a, a_end = context.Pipe()
    to_b, b_end = context.Pipe()
    a = context.Process(target=_replica, args=("a", url, servers, interval, a_end), daemon=True)
    b = context.Process(target=_replica, args=("b", url, servers, interval, b_end), daemon=True)
    a.start()
    b.start()
    latencies = []
    try:
        # Both running: A shows B's first figure (2 in flight).
        while to_a.recv()[0] != 2:
            pass
        for step in range(2, tries + 2):
            time.sleep(random.uniform(0, interval))  # a random phase against B's writes
            to_b.send(step)
            taken = to_b.recv()
            deadline = time.monotonic() + 10 * interval + 10
            while True:
                if not to_a.poll(max(deadline - time.monotonic(), 0)):
                    raise TimeoutError(f"step {step} never showed on A")
                shown, at = to_a.recv()
                if shown == 2 * step:
                    latencies.append((at - taken) * 1000)
                    break
    finally:
        to_b.send(None)
        for process in (a, b):
            process.terminate()  # our own children, by handle
            process.join(timeout=10)
    return {
        "servers": servers,
        "interval_ms": interval * 1000,
        "goal_ms": interval * 1000 + 100,
        "step_visible_ms": summarize(latencies),
    }


async def run_all(
    *, registry: str, servers: list[int], tries: int, interval: float, window: float, workdir: Path
) -> dict[str, Any]:
    emulator = None
    if registry == "spanner":
        emulator = Emulator.create(workdir)
        emulator.start()
        os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
        url = "spanner://projects/bench/instances/rp/databases/fleet"
    else:
        url = f"sqlite://{workdir / 'fleet.db'}"
    try:
        store = open_registry(url)
        store.init()
        out: dict[str, Any] = {"registry": registry, "publishing": [], "writes_per_second": {}}
        for count in servers:
            out["publishing"].append(publish_cost(store, count, interval=interval, tries=tries))
            out["writes_per_second"][str(count)] = await writes_per_second(
                store, count, interval=interval, seconds=window
            )
        store.close()
        out["load_step"] = [
            await asyncio.to_thread(load_step, url, servers=count, interval=interval, tries=tries)
            for count in servers
        ]
        return out
    finally:
        if emulator is not None:
            emulator.stop()
            os.environ.pop("SPANNER_EMULATOR_HOST", None)


def run(
    *,
    registries: tuple[str, ...] = ("sqlite",),
    servers: tuple[int, ...] = (10, 1000),
    tries: int = 100,
    interval: float = 1.0,
    window: float = 5.0,
    workdir: Path | None = None,
) -> list[dict[str, Any]]:
    """Every registry's figures (``bench/run.py``)."""
    results = []
    for kind in registries:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(
                asyncio.run(
                    run_all(
                        registry=kind,
                        servers=list(servers),
                        tries=tries,
                        interval=interval,
                        window=window,
                        workdir=workdir or Path(tmp),
                    )
                )
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registry", nargs="+", default=["sqlite"], choices=["sqlite", "spanner"])
    parser.add_argument("--servers", nargs="+", type=int, default=[10, 1000])
    parser.add_argument("--tries", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=5.0)
    args = parser.parse_args()
    logs.configure(level="warning", json=True)
    result = run(
        registries=tuple(args.registry),
        servers=tuple(args.servers),
        tries=args.tries,
        interval=args.interval,
        window=args.window,
    )
    print(json.dumps(result, indent=2))
    print("\n".join(table(result)))


def table(results: list[dict[str, Any]]) -> list[str]:
    """The BENCHMARKS.md table (``bench/tables.py``)."""
    if not results:
        return []
    lines = [
        "",
        "Fleet-wide load through the registry (bench/fleet_load.py; publishing and reading "
        "in one process, the load step across two processes on one registry): per process, "
        "bytes and thread CPU of one publish (encode + write) at N servers with traffic, "
        "writes/s over a window, the bytes and CPU of one read of the other's record (after a "
        "write: decoded; unchanged: from the cache), reads/s; a load step on B -> A's rows "
        "show it, ms p50 / p99 (or max) against the goal (one report interval + 100 ms)",
        "| registry | servers | bytes / write | publish CPU ms | writes/s | read bytes | "
        "read CPU ms (after a write / unchanged) | reads/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    steps = []
    for result in results:
        for row in result["publishing"]:
            pub = row["publish_cpu_ms"]
            first, again = row["read_cpu_ms_after_a_write"], row["read_cpu_ms_unchanged"]
            lines.append(
                f"| {result['registry']} | {row['servers']} | {row['bytes_per_write']} | "
                f"{pub['p50']} | {result['writes_per_second'][str(row['servers'])]} | "
                f"{row['read_bytes']} | {first['p50']} / {again['p50']} | "
                f"{row['reads_per_second_per_process']} |"
            )
        for step in result["load_step"]:
            visible = step["step_visible_ms"]
            worst = visible["p99"] if visible["p99"] is not None else f"max {visible['max']}"
            steps.append(
                f"| {result['registry']} | {step['servers']} | {step['interval_ms']:g} | "
                f"{visible['n']} | {visible['p50']} / {worst} | {step['goal_ms']:g} |"
            )
    lines += [
        "",
        "| registry | servers | report interval ms | tries | B's step on A, ms | goal ms |",
        "| --- | --- | --- | --- | --- | --- |",
        *steps,
    ]
    return lines


if __name__ == "__main__":
    main()

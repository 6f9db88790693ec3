"""The registry at scale on the Spanner EMULATOR (issue 29, docs/registry-capacity.md): N replica
rows with leases, lease renewals (heartbeats) at the rate the emulator sustains, and the watch's
latency and correctness under that churn, against the same watch with no heartbeats in the same
run.

Every figure here is an emulator figure: the emulator runs one read-write transaction at a time
on one process, so it says nothing of Spanner's throughput (Google's published figures are in
the doc). What it does show: the schema holds N rows, heartbeats cause no routing work (the watch
yields no state for a renewal), and a replica change reaches the watch as fast under heartbeat
churn as without it.

Heartbeats are batched, ``batch`` renewals per commit (a blind write of ``LeaseExpiresAt``), a
shape a real fleet's agents would not have (each renews its own lease in its own commit): the
emulator sustains a few hundred commits a second at most. Rows are loaded the same way. The
writers take turns (``Turns``): the emulator runs one read-write transaction at a time anyway,
and when two overlap it makes them wait on each other for a long time (measured: heartbeats
fell from ~1,000/s to 2/s and the probe from 56 to 8 changes a second).

The watch is ``SpannerRegistry.watch`` itself, in its own thread and event loop. A probe sets one
replica's state (READY <-> DRAINING) through ``set_replica_state`` and times write returned ->
the watch yielded a state holding the new value. Run:
``python -m bench.heartbeats --replicas 100000 --seconds 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.stats import summarize, tail, tail_name
from control_plane.registry import open_registry
from control_plane.registry.model import RegistryState
from control_plane.registry.spanner import SpannerRegistry
from control_plane.registry.spanner.follow import Follower
from control_plane.registry.spanner.reads import SHARDED, read_layout, ts
from harness.spanner_emulator import Emulator

REPLICAS_PER_SERVER = 100
LOAD_BATCH = 50  # rows per commit: the emulator's commit time grows faster than its size
PROBE_TIMEOUT = 10.0


def load(registry: SpannerRegistry, *, replicas: int) -> list[tuple[str, str]]:
    """``replicas`` rows, 100 a server, each with a lease an hour ahead; their keys."""
    from google.cloud import spanner

    servers = [f"s{i:05d}" for i in range(max(1, replicas // REPLICAS_PER_SERVER))]
    db = registry.database
    for start in range(0, len(servers), 500):
        with db.batch() as batch:
            batch.insert(
                "Servers",
                columns=("ServerName", "Workspace", "Hostnames", "Protocol", "Spec", "UpdatedAt"),
                values=[
                    (n, "default", [f"{n}.bench.local"], "http", "{}", spanner.COMMIT_TIMESTAMP)
                    for n in servers[start : start + 500]
                ],
            )
    keys = [(servers[i % len(servers)], f"r-hb{i:07d}") for i in range(replicas)]
    lease = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    columns = (
        "ServerName",
        "Id",
        "Host",
        "Port",
        "Region",
        "Zone",
        "Weight",
        "State",
        "LeaseExpiresAt",
        "UpdatedAt",
    )
    for start in range(0, replicas, LOAD_BATCH):
        with db.batch() as batch:
            batch.insert(
                "Replicas",
                columns=columns,
                values=[
                    (
                        server,
                        rid,
                        "127.0.0.1",
                        10_000 + i % 50_000,
                        ("us-west", "us-east")[i % 2],
                        "",
                        100,
                        "READY",
                        lease,
                        spanner.COMMIT_TIMESTAMP,
                    )
                    for i, (server, rid) in enumerate(keys[start : start + LOAD_BATCH], start)
                ],
            )
    return keys


class Watched:
    """``SpannerRegistry.watch`` in a thread of its own (its own event loop), keeping the last
    state and counting the states it yields."""

    def __init__(self, registry: SpannerRegistry) -> None:
        self.registry = registry
        self.latest: RegistryState | None = None
        self.states = 0
        self.failures = 0
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async for state in self.registry.watch(poll_interval=0.01):
                    with self.changed:
                        self.latest = state
                        self.states += 1
                        self.changed.notify_all()
                    if self._stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - counted and reported; the watch starts again
                self.failures += 1
                await asyncio.sleep(0.1)

    def wait_for(self, server: str, rid: str, replica_state: str) -> float | None:
        """When the watch first held ``rid`` (of ``server``) in ``replica_state``
        (``time.perf_counter()``), or None after ``PROBE_TIMEOUT``."""
        deadline = time.perf_counter() + PROBE_TIMEOUT
        with self.changed:
            while True:
                state = self.latest
                if state is not None and any(
                    r.id == rid and r.state == replica_state
                    for r in state.replicas_by_server.get(server, ())
                ):
                    return time.perf_counter()
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                self.changed.wait(left)


class Turns:
    """The writers' turns at the emulator: one commit at a time, the probe first whenever it
    waits (the heartbeats would otherwise take every turn)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.probe_idle = threading.Event()
        self.probe_idle.set()

    @contextlib.contextmanager
    def probe(self) -> Iterator[None]:
        self.probe_idle.clear()
        try:
            with self.lock:
                yield
        finally:
            self.probe_idle.set()

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        self.probe_idle.wait()
        with self.lock:
            yield


class Heartbeats:
    """Lease renewals, ``batch`` rows a commit, round the fleet, in a thread until stopped."""

    def __init__(
        self, registry: SpannerRegistry, keys: list[tuple[str, str]], batch: int, turns: Turns
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.batch = batch
        self.turns = turns
        self.renewed = 0
        self.commits = 0
        self.failed = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        started = time.perf_counter()
        at = 0
        db = self.registry.database
        while not self._stop.is_set():
            rows = [self.keys[(at + i) % len(self.keys)] for i in range(self.batch)]
            at = (at + self.batch) % len(self.keys)
            lease = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            try:
                with self.turns.heartbeat(), db.batch() as batch:
                    batch.update(
                        "Replicas",
                        columns=("ServerName", "Id", "LeaseExpiresAt"),
                        values=[(server, rid, lease) for server, rid in rows],
                    )
            except Exception:  # noqa: BLE001 - an aborted commit (the probe's) is counted
                self.failed += 1
                continue
            self.renewed += len(rows)
            self.commits += 1
        self.seconds = time.perf_counter() - started


def probe(
    registry: SpannerRegistry,
    watched: Watched,
    keys: list[tuple[str, str]],
    seconds: float,
    turns: Turns,
) -> tuple[list[float], int, int]:
    """Replica state changes, one after the other, for ``seconds``: each one's write returned ->
    the watch held it (ms), how many the watch never showed within ``PROBE_TIMEOUT``, and how
    many states the watch yielded beyond one a change (work a heartbeat must not cause)."""
    rng = random.Random(29)
    latencies: list[float] = []
    missed = 0
    states_before = watched.states
    changes = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        server, rid = keys[rng.randrange(len(keys))]
        current = next((r.state for r in registry_rows(watched, server) if r.id == rid), "READY")
        new = "DRAINING" if current == "READY" else "READY"
        with turns.probe():
            registry.set_replica_state(rid, new)
        returned = time.perf_counter()
        changes += 1
        seen = watched.wait_for(server, rid, new)
        if seen is None:
            missed += 1
        else:
            latencies.append(max(0.0, seen - returned) * 1000)
    extra = max(0, watched.states - states_before - changes)
    return latencies, missed, extra


def registry_rows(watched: Watched, server: str) -> tuple[Any, ...]:
    state = watched.latest
    return () if state is None else state.replicas_by_server.get(server, ())


def _without_leases(state: RegistryState) -> tuple[Any, ...]:
    """Servers and replicas as the watch must hold them. Lease renewals do not touch
    ``UpdatedAt`` by design (no routing work for a heartbeat), so the watch keeps the lease it
    last read; everything else must be equal."""
    return (
        state.servers,
        tuple(
            (r.id, r.server, r.host, r.port, r.region, r.zone, r.weight, r.state, r.revision)
            for r in sorted(state.replicas, key=lambda r: r.id)
        ),
    )


def timed(func: Any, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        func()
        out.append((time.perf_counter() - started) * 1000)
    return out


def run(*, replicas: int, seconds: float, batch: int, workdir: Path) -> dict[str, Any]:
    emulator = Emulator.create(workdir)
    emulator.start()
    previous = os.environ.get("SPANNER_EMULATOR_HOST")
    os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
    url = "spanner://projects/bench/instances/rp/databases/heartbeats"
    registries: list[SpannerRegistry] = []

    def spanner_registry() -> SpannerRegistry:
        registry = open_registry(url)
        assert isinstance(registry, SpannerRegistry)
        registries.append(registry)
        return registry

    try:
        writer = spanner_registry()
        writer.init()
        started = time.perf_counter()
        keys = load(writer, replicas=replicas)
        load_s = time.perf_counter() - started
        layout = read_layout(writer._reader)
        assert layout == SHARDED

        # Empty polls: a follower resumed at a read timestamp of now, as after a full read (not
        # done here: at 100,000 rows it takes seconds, and the watch below does one).
        follower = Follower(writer._reader, writer._next_revision)
        follower.layout = layout
        follower.since, _ = writer._reader.read([layout.tombstones_until(ts(0.0))])
        follower.full_at = time.monotonic()
        empty_poll_ms = timed(follower.tick, 200)
        sweep_ms = timed(lambda: writer.remove_expired(now=time.time()), 20)

        # The watch's first state is its full read (the layout, then every row in pages).
        watched = Watched(spanner_registry())
        started = time.perf_counter()
        watched.start()
        deadline = started + 120
        while watched.latest is None and time.perf_counter() < deadline:
            time.sleep(0.01)
        if watched.latest is None:
            raise RuntimeError("the watch yielded no first state in 120 s")
        full_read_ms = [(time.perf_counter() - started) * 1000]

        turns = Turns()
        quiet, quiet_missed, quiet_extra = probe(writer, watched, keys, seconds, turns)

        heartbeats = Heartbeats(spanner_registry(), keys, batch, turns)
        heartbeats.start()
        churn, churn_missed, churn_extra = probe(writer, watched, keys, seconds, turns)
        heartbeats.stop()

        # Correctness: once the writes stop, the watch holds what a full read holds.
        truth = writer.read_state()
        converged = False
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            state = watched.latest
            if state is not None and _without_leases(state) == _without_leases(truth):
                converged = True
                break
            time.sleep(0.05)
        watched.stop()
        return {
            "emulator": True,
            "replicas": replicas,
            "servers": len({server for server, _ in keys}),
            "load_s": round(load_s, 1),
            "full_read_ms": summarize(full_read_ms, digits=1),
            "empty_poll_ms": summarize(empty_poll_ms),
            "lease_sweep_ms": summarize(sweep_ms),
            "quiet": {
                "seen_ms": summarize(quiet) if quiet else None,
                "missed": quiet_missed,
                "extra_states": quiet_extra,
            },
            "churn": {
                "seen_ms": summarize(churn) if churn else None,
                "missed": churn_missed,
                "extra_states": churn_extra,
                "heartbeats_per_s": round(heartbeats.renewed / max(heartbeats.seconds, 1e-9)),
                "commits_per_s": round(heartbeats.commits / max(heartbeats.seconds, 1e-9), 1),
                "batch": batch,
                "failed_commits": heartbeats.failed,
            },
            "watch_failures": watched.failures,
            "converged": converged,
        }
    finally:
        for registry in registries:
            registry.close()
        emulator.stop()
        if previous is None:
            os.environ.pop("SPANNER_EMULATOR_HOST", None)
        else:
            os.environ["SPANNER_EMULATOR_HOST"] = previous


def table(result: dict[str, Any]) -> list[str]:
    """The heartbeat simulation's table: the watch with no heartbeats (the baseline) and under
    heartbeat churn, in the same run, on the same emulator."""
    quiet, churn = result["quiet"], result["churn"]

    def seen(phase: dict[str, Any]) -> str:
        row = phase["seen_ms"]
        if row is None:
            return "- (no change seen)"
        return f"{row['p50']} / {tail(row)} ({tail_name(row['n'])}, N = {row['n']})"

    poll, sweep, full = result["empty_poll_ms"], result["lease_sweep_ms"], result["full_read_ms"]
    return [
        "",
        f"The registry at scale, Spanner EMULATOR figures (not Spanner's; Google's published "
        f"limits are in docs/registry-capacity.md): {result['replicas']} replica rows in "
        f"{result['servers']} servers (loaded in {result['load_s']} s), the hash-sharded indexes "
        "of migration 6. A replica state change, write returned -> the watch "
        "(`SpannerRegistry.watch`, 10 ms polls) holds it, ms (p50 / tail), with no heartbeats "
        "(the baseline) and under lease renewals at the rate the emulator sustains, "
        f"{churn['batch']} renewals a commit (the emulator runs one read-write transaction at "
        "a time). Extra states: states the watch yielded beyond one per change (a heartbeat "
        "must cause none). Converged: after the writes, the watch holds what a full read holds "
        "(leases aside: renewals leave `UpdatedAt` alone by design)",
        "| phase | heartbeats/s | change seen by the watch | missed | extra states |",
        "| --- | --- | --- | --- | --- |",
        f"| no heartbeats (baseline) | 0 | {seen(quiet)} | {quiet['missed']} | "
        f"{quiet['extra_states']} |",
        f"| heartbeats | {churn['heartbeats_per_s']} ({churn['commits_per_s']} commits/s) | "
        f"{seen(churn)} | {churn['missed']} | {churn['extra_states']} |",
        "",
        f"At {result['replicas']} rows: an empty watch poll {poll['p50']} ms p50 / {tail(poll)} "
        f"({tail_name(poll['n'])}); a lease sweep that finds nothing {sweep['p50']} ms p50; a "
        f"watch's first full read {full['p50']} ms (as the reconcile every 5 minutes); watch "
        f"failures {result['watch_failures']}; converged: "
        f"{'yes' if result['converged'] else 'NO'}; failed heartbeat commits "
        f"{churn['failed_commits']}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="routeplane-heartbeats-") as tmp:
        result = run(
            replicas=args.replicas, seconds=args.seconds, batch=args.batch, workdir=Path(tmp)
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

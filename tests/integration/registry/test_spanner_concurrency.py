"""The Spanner registry under the concurrency of a running mesh, on the real emulator: the watch
and the lease sweep reading from different threads, many replicas renewing leases and
deregistering at once (the emulator runs one read-write transaction at a time and aborts the
others), and the "run `routeplane registry init`" hint only when the schema is missing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from control_plane.agent import ReplicaAgent
from control_plane.registry import RegistryError, open_registry
from control_plane.registry.spanner import SpannerRegistry
from control_plane.registry.spanner.reads import Reader, TableRead
from harness.waiting import wait_until

# Renewed every second: two seconds of slack for a busy machine, less than the client's own
# backoff after two aborts (2 + 4 s), which this test exists to catch.
LEASE = 3.0


def _in_threads(work: Callable[[], None], count: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted by the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_reads_from_several_threads_keep_their_own_transaction(spanner_url: str) -> None:
    """The watch and the lease sweep share the registry's Reader (one session). A read of two
    queries begins a read-only transaction with the first and uses it in the second; another
    thread's read beginning in between used to end it: "Transaction not found"."""
    registry = open_registry(spanner_url)
    assert isinstance(registry, SpannerRegistry)
    reader = Reader(lambda: registry.database)
    queries = [
        TableRead("Replicas", ("ServerName", "Id"), "ReplicasByShardLease"),
        TableRead("Tombstones", ("Kind", "Key"), "TombstonesByShardDeletedAt"),
        TableRead("Servers", ("ServerName",)),
    ]

    def reads() -> None:
        for _ in range(40):
            reader.read(queries)

    try:
        assert _in_threads(reads, 3) == []
    finally:
        registry.close()


def test_leases_renewed_and_dropped_by_many_replicas_at_once_never_run_out(
    spanner_url: str,
) -> None:
    """Seven replicas (each with its own client, as separate processes) renew a short lease
    while the sweep runs; a renewal the emulator aborts is retried at once, not after the
    client's 2^n-second backoff that let leases run out. Then all deregister at once."""
    writer = open_registry(spanner_url)
    writer.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    agents = [
        ReplicaAgent(
            registry_url=spanner_url,
            server="echo",
            address=f"127.0.0.1:{9000 + i}",
            region="us-west",
            lease_seconds=LEASE,
        )
        for i in range(7)
    ]
    removed: list[str] = []
    try:
        for agent in agents:
            agent.register()
        ids = {agent.replica_id for agent in agents}
        ends = time.monotonic() + 4 * LEASE  # four lease lengths of renewals and sweeps
        while time.monotonic() < ends:
            removed += writer.remove_expired(now=time.time())
            time.sleep(0.1)  # pacing: a sweep every 100 ms for the window, not a wait
        assert removed == []
        assert {r.id for r in writer.list_replicas("echo")} == ids
        assert _in_threads(lambda: agents.pop().deregister(), len(agents)) == []
        wait_until(lambda: writer.list_replicas("echo") == [], what="every replica gone")
    finally:
        for agent in agents:
            agent.stop_heartbeat()
        writer.close()


def test_a_missing_database_is_reported_with_the_registry_init_hint(spanner_url: str) -> None:
    missing = spanner_url.rsplit("/", 1)[0] + "/absent"
    registry = open_registry(missing)
    try:
        with pytest.raises(RegistryError, match=r"Database not found.*routeplane registry init"):
            registry.list_servers()
    finally:
        registry.close()

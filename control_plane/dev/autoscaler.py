"""A sample autoscaler (dev tooling, not the product): follows ``WatchLoad`` and starts or stops
sample replicas so a server has the replicas routeplane recommends.

``routeplane samples autoscaler --server echo --region us-west --ports 8150-8159 --registry URL
[--admin 127.0.0.1:18001] [--drain-timeout 30] [--revision V] [--host 127.0.0.1]
[--advertise-host ADDRESS]``. It manages only the replicas it started (sample HTTP replicas on
ports from ``--ports``, listening on ``--host``, registered at ``--advertise-host``: in a
container, ``--host 0.0.0.0`` and the container's address): with ``desired``
recommended and ``others`` READY replicas it did not start, it keeps ``max(0, desired -
others)`` of its own.
This is what a platform's scheduler does with the recommendation; routeplane itself never
starts processes. With ``--revision`` its replicas register with that revision (checked when the
autoscaler is made, before any replica starts) and answer ``NAME@REVISION``.

Scaling down drains before it stops, so no request fails: of its own replicas it takes those
the recommendation names first (``scale_down_candidates``, the idlest first), then its idlest
others; it sets each DRAINING in the registry (Envoy sends it no new request), waits until the
load rows show it with no request in flight, in rows that cover reports made after the drain
(``DRAIN_INTERVALS`` report intervals), or until ``--drain-timeout``, and only then stops it
(SIGTERM: it deregisters itself). A draining replica is made READY again when the
recommendation rises before it stops. A registry it cannot reach for a moment delays what it
does to the next update; it never stops a replica it could not drain.

A port is used again only once the process it had has exited (a stopped replica deregisters
first and closes its listener after: a new one started in between could not bind), and a
replica of its own that exits by itself is replaced at the next look, not at the next update
(which may not come while the recommendation holds still).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from control_plane.registry import open_registry, validate
from control_plane.registry.errors import NotFoundError, RegistryError
from control_plane.registry.model import Registry, ReplicaState

# Rows cover a report made after the drain once this many report intervals have passed: Envoy
# has the drain within milliseconds, reports every interval, and the view ticks every half.
DRAIN_INTERVALS = 2.5
CHECK_EVERY = 0.1  # seconds between looks at draining replicas when no update comes


@dataclass
class _Draining:
    replica: str  # its id
    since: float


@dataclass
class Autoscaler:
    server: str
    region: str
    ports: list[int]
    registry: str
    admin: str
    lease_seconds: float = 5.0
    drain_timeout: float = 30.0
    announce: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    revision: str = ""  # the revision its replicas register with ("": none)
    host: str = "127.0.0.1"  # where its replicas listen
    advertise_host: str = ""  # where they register ("": host)
    _own: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _draining: dict[int, _Draining] = field(default_factory=dict)
    # Stopped, not exited yet: their ports are not free.
    _stopping: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _short: bool = False  # a start waited for a port: scale again at the next look
    _row: Any = None  # the server's latest "*" row
    _interval: float = 1.0  # the report interval the rows follow
    _store: Registry | None = None

    def __post_init__(self) -> None:
        self.revision = validate.revision("--revision", self.revision)

    def follow(self, updates: Iterator[Any]) -> None:
        """Act on every ``LoadResponse`` of ``updates`` until it ends, and look at draining
        replicas every ``CHECK_EVERY`` seconds between them (a drained replica's rows may not
        move again)."""
        inbox: queue.Queue[Any] = queue.Queue()
        end = object()

        def read() -> None:
            try:
                for response in updates:
                    inbox.put(response)
            except Exception as exc:  # noqa: BLE001 -- handed to the main thread, raised there
                inbox.put(exc)
            finally:
                inbox.put(end)

        threading.Thread(target=read, name="watch-load", daemon=True).start()
        try:
            while True:
                try:
                    item = inbox.get(timeout=CHECK_EVERY)
                except queue.Empty:
                    self.settle()
                    self._replace_exited()
                    continue
                if item is end:
                    return
                if isinstance(item, Exception):
                    raise item
                self.apply(item)
        finally:
            self.stop_all()

    def apply(self, response: Any) -> None:
        rows = [r for r in response.servers if r.server == self.server and r.region == "*"]
        if not rows:
            return
        self._row = rows[0]
        if response.report_interval_seconds > 0:
            self._interval = response.report_interval_seconds
        if self._row.desired_replicas >= 0:
            try:
                self._scale(self._row)
            except RegistryError as exc:  # unreachable for a moment: act at the next update
                self.announce(f"autoscaler: registry: {exc}; trying again at the next update")
        self.settle()

    def _replace_exited(self) -> None:
        """Scale again when a replica of mine exited by itself (it would otherwise wait for
        the next update, which a recommendation holding still never sends)."""
        if self._row is None or self._row.desired_replicas < 0:
            return
        if self._short or any(process.poll() is not None for process in self._own.values()):
            try:
                self._scale(self._row)
            except RegistryError as exc:
                self.announce(f"autoscaler: registry: {exc}; trying again at the next look")

    def _scale(self, row: Any) -> None:
        self._reap()
        active = [port for port in self._own if port not in self._draining]
        # The row's READY count may still include replicas I have just drained (the load view
        # catches up with the registry a moment later): counting them as others' READY ones made
        # an update in that moment drain my last replica too (503s until it was made ready
        # again, CI run 5). So my draining ones never count as others' (at worst one more kept).
        others = max(0, row.ready_replicas - len(active) - len(self._draining))
        want = min(len(self.ports), max(0, row.desired_replicas - others))
        self._short = False
        while len(active) < want and self._draining:
            port = min(self._draining)  # back to READY rather than a new one
            with contextlib.suppress(NotFoundError):
                self._registry().set_replica_state(self._draining[port].replica, ReplicaState.READY)
            del self._draining[port]
            active.append(port)
            self.announce(f"autoscaler: {self._name(port)} ready again ({len(active)} of mine)")
        while len(active) < want and len(self._own) < len(self.ports):
            started = self._start()
            if started is None:  # every free port's last process is still exiting
                self._short = True
                break
            active.append(started)
        if len(active) > want:
            for port in self._choose(row, active, len(active) - want):
                self._drain(port)

    def _choose(self, row: Any, active: list[int], count: int) -> list[int]:
        """``count`` of my active replicas to remove: those the recommendation names first,
        in its order, then the idlest of the others; one not registered yet last."""
        ids = self._ids()
        by_id = {ids[port]: port for port in active if port in ids}
        named = [by_id[r] for r in row.scale_down_candidates if r in by_id]
        load = {r.replica: (r.in_flight, r.requests_per_second) for r in row.replicas}
        rest = sorted(
            (port for port in active if port not in named),
            key=lambda port: (port not in ids, load.get(ids.get(port, ""), (0.0, 0.0)), port),
        )
        return (named + rest)[:count]

    def _drain(self, port: int) -> None:
        replica = self._ids().get(port)
        if replica is None:  # not registered: no traffic can reach it
            self._stop(port, why="not registered yet")
            return
        try:
            self._registry().set_replica_state(replica, ReplicaState.DRAINING)
        except NotFoundError:
            self._stop(port, why="gone from the registry")
            return
        self._draining[port] = _Draining(replica=replica, since=self.clock())
        self.announce(f"autoscaler: draining {self._name(port)} ({replica})")

    def settle(self) -> None:
        """Stop every draining replica whose requests have finished (or whose drain timed
        out)."""
        if not self._draining:
            return
        now = self.clock()
        in_flight = (
            {r.replica: r.in_flight for r in self._row.replicas} if self._row is not None else {}
        )
        for port, drain in list(self._draining.items()):
            waited = now - drain.since
            busy = in_flight.get(drain.replica, 0.0)
            if waited >= DRAIN_INTERVALS * self._interval and not busy:
                del self._draining[port]
                self._stop(port, why="drained")
            elif waited >= self.drain_timeout:
                del self._draining[port]
                self._stop(port, why=f"drain timed out with {busy:g} in flight")

    def _start(self) -> int | None:
        port = next((p for p in self.ports if p not in self._own and p not in self._stopping), None)
        if port is None:
            return None
        name = self._name(port)
        argv = [
            sys.executable,
            "-c",
            "from control_plane.cli import main; main()",
            "samples",
            "replica",
            "--kind",
            "http",
            "--name",
            name,
            "--listen",
            f"{self.host}:{port}",
            *(["--advertise", f"{self.advertise_host}:{port}"] if self.advertise_host else []),
            "--server",
            self.server,
            "--region",
            self.region,
            "--registry",
            self.registry,
            "--lease-seconds",
            str(self.lease_seconds),
            *(["--revision", self.revision] if self.revision else []),
        ]
        self._own[port] = subprocess.Popen(argv, start_new_session=True)
        self.announce(f"autoscaler: started {name} ({len(self._own)} of mine)")
        return port

    def _stop(self, port: int, *, why: str) -> None:
        process = self._own.pop(port)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        self._stopping[port] = process
        self.announce(f"autoscaler: stopped {self._name(port)}, {why} ({len(self._own)} of mine)")

    def _name(self, port: int) -> str:
        return f"{self.server}-auto-{port}"

    def _registry(self) -> Registry:
        if self._store is None:
            self._store = open_registry(self.registry)
        return self._store

    def _ids(self) -> dict[int, str]:
        """My replicas' ids in the registry, by port (those registered)."""
        return {
            replica.port: replica.id
            for replica in self._registry().list_replicas(self.server)
            if replica.host == "127.0.0.1" and replica.port in self._own
        }

    def _reap(self) -> None:
        for port, process in list(self._own.items()):
            if process.poll() is not None:
                del self._own[port]
                self._draining.pop(port, None)
                self.announce(
                    f"autoscaler: {self._name(port)} exited by itself ({process.returncode})"
                )
        for port, process in list(self._stopping.items()):
            if process.poll() is not None:
                del self._stopping[port]

    def stop_all(self) -> None:
        self._own.update(self._stopping)  # wait for those too
        self._stopping.clear()
        for process in self._own.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self._own.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        self._own.clear()
        self._draining.clear()
        if self._store is not None:
            self._store.close()
            self._store = None


def parse_ports(text: str) -> list[int]:
    """``8150-8159`` or ``8150,8152`` -> ports."""
    ports: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        start = int(low)
        ports.extend(range(start, int(high or start) + 1))
    if not ports or not all(0 < p < 65536 for p in ports):
        raise ValueError(f"invalid --ports {text!r}: expected e.g. 8150-8159")
    return ports

"""The rollout driver: the loop every ``serve`` runs (it acts only while a rollout runs).

Every ``TICK`` seconds it reads the rollout rows (bounded: ``MAX_ROWS`` rows, each body at most
``rules.MAX_BODY_BYTES``), and for each running one takes or renews its lease (a conditional
write: free, run out, or already this process's; ``LEASE`` seconds). Only the holder acts: it
reads the server and its replicas, asks ``rules.decide`` and writes what that says, a running
record before its split and an ended record after it. A holder that dies stops renewing;
another process takes the lease once it has run out and resumes at the recorded step (the split
to write is a function of the record: nothing already written is written again).

A row that is not a record is skipped and kept in ``problems`` (naming the field); the others
go on. Writes and reads go through the registry's blocking methods in a thread. Nothing here
drains or removes a replica.

Imports the rules, the registry's values and ``Registry`` boundary, and ``metrics``; never a
store, the xDS engine, routing or translate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import structlog

from control_plane import metrics
from control_plane.registry.errors import RegistryError, ValidationError
from control_plane.registry.model import Registry, Server
from control_plane.registry.revisions import is_alive, of_replicas
from control_plane.registry.spec import TrafficTarget, decode, parse_spec
from control_plane.rollout import rules

log = structlog.get_logger("routeplane.rollout")

PROBLEM_KIND = "rollout"  # in ``routeplane problems``: a rollout row that is not a record
TICK = 0.5
LEASE = 3.0
MAX_ROWS = 1000

# server -> {revision: (requests/s, errors/s)} from this process's load view (the fleet's sums)
Rates = Callable[[str], Mapping[str, tuple[float, float]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    server: str
    field: str
    value: str
    message: str


def spec_with(server: Server, split: tuple[TrafficTarget, ...]) -> dict[str, object]:
    """``server``'s spec with its traffic block replaced by ``split``."""
    spec = dict(decode(server.spec))
    spec["traffic"] = [
        {"revision": t.revision, "percent": t.percent, **({"tag": t.tag} if t.tag else {})}
        for t in split
    ]
    return spec


def write_split(registry: Registry, server: Server, split: tuple[TrafficTarget, ...]) -> None:
    registry.put_server(
        name=server.name,
        hostnames=server.hostnames,
        protocol=server.protocol,
        workspace=server.workspace,
        spec=spec_with(server, split),
    )


class RolloutDriver:
    """Drives the running rollouts this process holds the lease of (see the module)."""

    def __init__(
        self,
        *,
        registry: Registry,
        holder: str,
        rates: Rates,
        tick: float = TICK,
        lease: float = LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self.holder = holder
        self._rates = rates
        self._tick = tick
        self._lease = lease
        self._clock = clock
        self.problems: tuple[Problem, ...] = ()
        # The records read at the last look (what the admin API's GetRollouts answers).
        self.rollouts: tuple[rules.Rollout, ...] = ()
        self._steps: dict[str, int] = {}  # server -> the percent exported (0: none running)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except RegistryError as exc:
                log.warning("rollout_tick_failed", error=str(exc))
            await asyncio.sleep(self._tick)

    async def tick(self) -> None:
        """One look at every rollout row; acts on those this process holds."""
        rows = await asyncio.to_thread(
            self._registry.read_rollouts, max_rows=MAX_ROWS, max_bytes=rules.MAX_BODY_BYTES
        )
        problems: list[Problem] = []
        read: list[rules.Rollout] = []
        steps: dict[str, int] = {}
        servers: dict[str, Server] | None = None
        for row in rows:
            try:
                rollout = rules.parse(row)
            except rules.RecordProblem as exc:
                problems.append(
                    Problem(server=row.server, field=exc.field, value=exc.value, message=str(exc))
                )
                continue
            steps[rollout.server] = 0
            if rollout.state != rules.RUNNING:
                read.append(rollout)
                continue
            steps[rollout.server] = rollout.percent
            held = await asyncio.to_thread(
                self._registry.hold_rollout,
                server=rollout.server,
                holder=self.holder,
                now=self._clock(),
                lease_seconds=self._lease,
            )
            if not held:
                read.append(rollout)
                continue
            if servers is None:  # read once a look, and only when this process holds one
                servers = {s.name: s for s in await asyncio.to_thread(self._registry.list_servers)}
            try:
                after = await self._act(rollout, servers.get(rollout.server))
            except RegistryError as exc:  # this rollout's write failed: the others go on
                log.warning("rollout_write_failed", server=rollout.server, error=str(exc))
                read.append(rollout)
                continue
            read.append(replace(after, holder=self.holder))
            steps[rollout.server] = after.percent if after.state == rules.RUNNING else 0
        self.problems = tuple(problems)
        self.rollouts = tuple(read)
        for gone in self._steps.keys() - steps.keys():
            metrics.ROLLOUT_STEP.remove(gone)
        for server, percent in steps.items():
            metrics.ROLLOUT_STEP.labels(server=server).set(percent)
        self._steps = steps

    async def _act(self, rollout: rules.Rollout, server: Server | None) -> rules.Rollout:
        registry = self._registry
        now = self._clock()
        replicas = await asyncio.to_thread(registry.list_replicas, rollout.server)
        revisions = of_replicas([r for r in replicas if is_alive(r, now=now)], now=now)
        ready = frozenset(r.name for r in revisions.revisions if r.ready)
        traffic: tuple[TrafficTarget, ...] | None = None
        if server is not None:
            try:
                traffic = parse_spec(decode(server.spec), protocol=server.protocol).traffic
            except ValidationError as exc:
                ended = rules.Decision(
                    rollout=replace(
                        rollout,
                        state=rules.STOPPED,
                        verdict=f"stopped: the server's spec cannot be read: {exc}"[
                            : rules.MAX_VERDICT
                        ],
                    )
                )
                return await self._apply(ended, server, now=now)
        rates = {
            revision: (r, e)
            for revision, (r, e) in self._rates(rollout.server).items()
            if math.isfinite(r) and math.isfinite(e)
        }
        decision = rules.decide(rollout, now=now, traffic=traffic, ready=ready, rates=rates)
        return await self._apply(decision, server, now=now)

    async def _apply(
        self, decision: rules.Decision, server: Server | None, *, now: float
    ) -> rules.Rollout:
        registry = self._registry
        rollout = decision.rollout
        split = decision.write

        async def record(rollout: rules.Rollout) -> bool:
            written: bool = await asyncio.to_thread(
                registry.write_rollout,
                server=rollout.server,
                holder=self.holder,
                state=rollout.state,
                body=rules.encode(rollout),
                now=now,
                lease_seconds=self._lease,
            )
            return written

        async def write(split: tuple[TrafficTarget, ...]) -> str:
            """Write ``split`` to the server; "" or why it could not be (a spec another
            writer left that the registry refuses: the rollout stops, naming it)."""
            if server is None:
                return "the server is gone"
            try:
                await asyncio.to_thread(write_split, registry, server, split)
            except ValidationError as exc:
                return f"the split cannot be written: {exc}"
            return ""

        if not decision.ended:
            if not await record(rollout):  # the lease was lost, or the rollout ended meanwhile
                return rollout
            if split is None:
                return rollout
            failed = await write(split)
            if not failed:
                log.info(
                    "rollout_split_written",
                    server=rollout.server,
                    step=rollout.step,
                    percent=rollout.percent,
                    target=rollout.target,
                )
                return rollout
            rollout = replace(
                rollout, state=rules.STOPPED, verdict=f"stopped: {failed}"[: rules.MAX_VERDICT]
            )
        elif split is not None:
            failed = await write(split)
            if failed:
                verdict = f"{rollout.verdict}; {failed}"[: rules.MAX_VERDICT]
                rollout = replace(rollout, verdict=verdict)
        if await record(rollout):
            metrics.ROLLOUT_VERDICTS.labels(result=rollout.state).inc()
            log.info(
                "rollout_ended", server=rollout.server, state=rollout.state, verdict=rollout.verdict
            )
        return rollout


def rates_of_rows(rows: object) -> dict[str, tuple[float, float]]:
    """{revision: (requests/s, errors/s)} from a server's load rows: the "*" row's
    ``revisions`` (the load view by revision)."""
    out: dict[str, tuple[float, float]] = {}
    for row in rows if isinstance(rows, tuple | list) else ():
        if getattr(row, "region", None) != "*":
            continue
        for revision in getattr(row, "revisions", ()):
            out[str(revision.revision)] = (
                float(revision.requests_per_second),
                float(revision.errors_per_second),
            )
    return out

"""A server's revisions, as its replicas say (issue 26): which revisions exist, how many
replicas each has and how many are READY, newest first, and which one is ``latest``.

A revision is any value of ``Replica.revision`` among a server's replicas ("" for replicas that
carry none). A revision's age is the earliest ``registered_at`` of its replicas: the revision
that appeared last is the newest (ties: the name that sorts last), and ``latest`` is the newest
revision with a READY replica (READY and its lease, if any, not run out at ``now``). A replica
row whose revision is not valid (``validate.revision``: another writer's row) belongs to no
revision; it is returned apart, and routing reports it as a problem.

Pure: imports ``registry.model`` and ``registry.validate`` only; no I/O, no clock (``now`` is an
argument).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from control_plane.registry import validate
from control_plane.registry.errors import ValidationError
from control_plane.registry.model import Replica, ReplicaState


@dataclass(frozen=True, slots=True, kw_only=True)
class Revision:
    """One revision of a server: ``replicas`` rows carry it, ``ready`` of them take traffic."""

    name: str  # "" = the replicas that carry no revision
    replicas: int
    ready: int
    registered_at: float  # the earliest registered_at of its replicas; 0 = unknown (old rows)
    latest: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Revisions:
    """A server's revisions, newest first; ``invalid`` the replicas whose revision is not one."""

    revisions: tuple[Revision, ...] = ()
    invalid: tuple[Replica, ...] = ()

    @property
    def latest(self) -> Revision | None:
        return next((r for r in self.revisions if r.latest), None)

    def names(self) -> frozenset[str]:
        return frozenset(r.name for r in self.revisions)


def is_ready(replica: Replica, *, now: float) -> bool:
    """READY, and its lease (if it has one) not run out at ``now``."""
    lease = replica.lease_expires_at
    return replica.state == ReplicaState.READY and (lease is None or lease > now)


def is_alive(replica: Replica, *, now: float) -> bool:
    """Still registered at ``now``: no lease, or a lease not run out (an expired replica stays
    in its table until a control plane removes it)."""
    lease = replica.lease_expires_at
    return lease is None or lease > now


def of_replicas(replicas: Iterable[Replica], *, now: float) -> Revisions:
    """The revisions of ``replicas`` (one server's, alive or not: see :func:`is_alive`, which
    callers apply when they want to), newest first, ``latest`` marked."""
    counts: dict[str, list[int]] = {}
    first: dict[str, float] = {}
    invalid: list[Replica] = []
    for replica in replicas:
        try:
            name = validate.revision("revision", replica.revision)
        except ValidationError:
            invalid.append(replica)
            continue
        count = counts.setdefault(name, [0, 0])
        count[0] += 1
        count[1] += is_ready(replica, now=now)
        since = replica.registered_at
        first[name] = min(first.get(name, since), since)
    order = sorted(counts, key=lambda name: (first[name], name), reverse=True)
    latest = next((name for name in order if counts[name][1]), None)
    return Revisions(
        revisions=tuple(
            Revision(
                name=name,
                replicas=counts[name][0],
                ready=counts[name][1],
                registered_at=first[name],
                latest=name == latest,
            )
            for name in order
        ),
        invalid=tuple(invalid),
    )

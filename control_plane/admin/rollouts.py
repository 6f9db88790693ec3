"""``GetRollouts`` (admin.proto): the rollout records a driver last read, as the wire form.

Shared by one process's admin API (``service.py``) and a ``serve --workers`` supervisor's
(``group/admin.py``), each answering from its own driver (``control_plane/rollout/``). Imports
the rollout record and the admin protos only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from control_plane.admin.pb import admin_pb2
from control_plane.registry.spec import TrafficTarget
from control_plane.rollout.rules import Rollout


def _splits(field: Any, split: tuple[TrafficTarget, ...]) -> None:
    for target in split:
        field.add(revision=target.revision, percent=target.percent, tag=target.tag)


def answer(rollouts: Iterable[Rollout], request: Any) -> Any:
    """The response to ``request`` (``RolloutsRequest``: one server, or every one)."""
    response = admin_pb2.RolloutsResponse()
    for rollout in rollouts:
        if request.server and rollout.server != request.server:
            continue
        c = rollout.counts
        found = response.rollouts.add(
            server=rollout.server,
            target=rollout.target,
            state=rollout.state,
            verdict=rollout.verdict,
            step=rollout.step + 1,
            steps=list(rollout.steps),
            percent=rollout.percent,
            interval_seconds=rollout.interval,
            max_error_rate=rollout.max_error_rate,
            min_requests=rollout.min_requests,
            started_at=rollout.started_at,
            step_started_at=rollout.step_started_at,
            target_requests=c.target_requests,
            target_errors=c.target_errors,
            stable_requests=c.stable_requests,
            stable_errors=c.stable_errors,
            holder=rollout.holder,
        )
        _splits(found.before, rollout.before)
        _splits(found.base, rollout.base)
        _splits(found.written, rollout.written)
    return response

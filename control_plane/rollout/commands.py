"""What ``servers rollout`` and ``servers rollback`` do, against the ``Registry`` boundary
(blocking, like it): start a rollout (every check first, naming the field; one conditional
write), read one back, roll one back.

Imports the rules and the registry's values and boundary; never a store.
"""

from __future__ import annotations

import math
from dataclasses import replace

from control_plane.registry import validate
from control_plane.registry.errors import NotFoundError, ValidationError
from control_plane.registry.model import Registry, Server
from control_plane.registry.revisions import is_alive, of_replicas
from control_plane.registry.rows import excerpt
from control_plane.registry.spec import TrafficTarget, decode, duration, parse_spec
from control_plane.rollout import rules
from control_plane.rollout.driver import write_split

MAX_OPTION = 200  # characters of an option's text: longer is refused, in an excerpt


def _bounded(field: str, value: object) -> None:
    if isinstance(value, str) and len(value) > MAX_OPTION:
        raise ValidationError(field, excerpt(value), f"longer than {MAX_OPTION} characters")


def _server(registry: Registry, name: str) -> Server:
    _bounded("server", name)
    found = [s for s in registry.list_servers() if s.name == name]
    if not found:
        raise NotFoundError(f"unknown server {name!r}")
    return found[0]


def _traffic(server: Server) -> tuple[TrafficTarget, ...]:
    return parse_spec(decode(server.spec), protocol=server.protocol).traffic


def start(
    registry: Registry,
    *,
    server: str,
    target: str,
    steps: object,
    interval: object,
    max_error_rate: str,
    min_requests: int,
    now: float,
) -> rules.Rollout:
    """Check everything, then write the record (the driver of some ``serve`` writes the
    splits). ValidationError naming the field, NotFoundError for an unknown server,
    ConflictError when the server's rollout is running."""
    for field, value in (
        ("server", server),
        ("to", target),
        ("interval", interval),
        ("max-error-rate", max_error_rate),
    ):
        _bounded(field, value)
    checked_steps = rules.check_steps(steps)
    seconds = duration("interval", interval, positive=True)
    if seconds < rules.MIN_INTERVAL:
        raise ValidationError("interval", interval, f"must be at least {rules.MIN_INTERVAL}s")
    rate = rules.parse_rate(max_error_rate)
    if isinstance(min_requests, bool) or not 0 <= min_requests <= rules.MAX_MIN_REQUESTS:
        raise ValidationError(
            "min-requests", min_requests, f"expected 0 to {rules.MAX_MIN_REQUESTS}"
        )
    revision = validate.revision("to", target)
    if not revision:
        raise ValidationError("to", target, "required: the revision to roll out")
    found = _server(registry, server)
    traffic = _traffic(found)
    revisions = of_replicas(
        (r for r in registry.list_replicas(server) if is_alive(r, now=now)), now=now
    )
    ready = [r for r in revisions.revisions if r.ready]
    if not any(r.name == revision for r in ready):
        raise ValidationError("to", revision, f"no READY replica of {server} carries it")
    latest_other = next((r.name for r in ready if r.name not in ("", revision)), None)
    base = rules.resolve_base(traffic, target=revision, latest_other=latest_other)
    rollout = rules.Rollout(
        server=server,
        target=revision,
        base=base,
        steps=checked_steps,
        interval=seconds,
        max_error_rate=rate,
        min_requests=min_requests,
        started_at=now,
        step_started_at=now,
        ticked_at=now,
        before=traffic,
    )
    registry.start_rollout(server=server, body=rules.encode(rollout), now=now)
    return rollout


def read(registry: Registry, server: str) -> rules.Rollout:
    """``server``'s rollout record; NotFoundError when it has none, RecordProblem when its row
    is not one."""
    _bounded("server", server)
    rows = registry.read_rollouts(server=server, max_rows=1, max_bytes=rules.MAX_BODY_BYTES)
    if not rows:
        raise NotFoundError(f"server {server!r} has no rollout")
    try:
        return rules.parse(rows[0])
    except rules.RecordProblem as exc:
        raise ValidationError(f"rollout.{exc.field}", exc.value, exc.reason) from None


def rollback(registry: Registry, server: str, *, now: float) -> tuple[rules.Rollout, bool]:
    """Write the split before ``server``'s rollout (its ``base``) back at once, and mark the
    rollout stopped if it runs. Returns the record as it now stands and whether the server's
    traffic was changed (False: it already had that split)."""
    rollout = read(registry, server)
    if rollout.state == rules.RUNNING:
        ended = replace(
            rollout,
            state=rules.STOPPED,
            verdict=f"rolled back by command at step {rollout.step + 1} of"
            f" {len(rollout.steps)} ({rollout.percent}%)",
            ticked_at=now,
        )
        # The record first: the driver writes a step's record before its split, so once this
        # is written no driver writes another step.
        if registry.end_rollout(
            server=server, state=rules.STOPPED, body=rules.encode(ended), now=now
        ):
            rollout = ended
        else:  # it ended meanwhile: read what it says
            rollout = read(registry, server)
    current = _server(registry, server)
    if rules.same_split(_traffic(current), rollout.base):
        return rollout, False
    write_split(registry, current, rollout.base)
    return rollout, True


def as_json(rollout: rules.Rollout, *, now: float) -> dict[str, object]:
    """The record for ``--status --json`` (and the admin API)."""

    def split(targets: tuple[TrafficTarget, ...]) -> list[dict[str, object]]:
        return [{"revision": t.revision, "percent": t.percent, "tag": t.tag} for t in targets]

    c = rollout.counts
    judged = rules.judge(
        c, min_requests=rollout.min_requests, max_error_rate=rollout.max_error_rate
    )
    lease_left = rollout.lease_expires_at - now
    return {
        "server": rollout.server,
        "target": rollout.target,
        "state": rollout.state,
        "verdict": rollout.verdict,
        "step": rollout.step + 1,
        "steps": list(rollout.steps),
        "percent": rollout.percent,
        "interval_seconds": rollout.interval,
        "max_error_rate": rollout.max_error_rate,
        "min_requests": rollout.min_requests,
        "started_at": rollout.started_at,
        "step_started_at": rollout.step_started_at,
        "seconds_in_step": max(
            0.0,
            (now if rollout.state == rules.RUNNING else rollout.ticked_at)
            - rollout.step_started_at,
        ),
        "before": split(rollout.before),
        "base": split(rollout.base),
        "written": split(rollout.written),
        "target_requests": round(c.target_requests),
        "target_errors": round(c.target_errors),
        "target_error_rate": judged.target_rate,
        "stable_requests": round(c.stable_requests),
        "stable_errors": round(c.stable_errors),
        "stable_error_rate": judged.stable_rate,
        "holder": rollout.holder or None,
        "lease_seconds_left": round(lease_left, 3)
        if rollout.holder and math.isfinite(lease_left) and lease_left > 0
        else None,
    }

"""The rollout record and its rules, pure: no I/O, no clock (``now`` is an argument).

A record (:class:`Rollout`) is stored as canonical JSON (:func:`encode`) in the rollout row's
body; :func:`parse` reads a row back and raises :class:`RecordProblem` naming the field for
anything another writer could have put there (a malformed row is skipped, never fatal).

The split at a step (:func:`split_at`): the target gets the step's percent, the other revisions
of the base split share the rest in their base proportions (largest remainder: whole percents
adding up to 100), tags kept. The judgement (:func:`judge`): with at least ``min_requests`` on
the target in the step, the target fails when its error rate exceeds the stable revisions'
error rate by more than ``max_error_rate`` (absolute: 0.01 is one percentage point).
:func:`decide` turns the record, the server's traffic as read, the revisions with a READY
replica and the load into the next record and the split to write, if any.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from control_plane.registry.errors import ValidationError
from control_plane.registry.model import RolloutRow
from control_plane.registry.spec import LATEST, TrafficTarget, parse_spec

RUNNING = "running"
SUCCEEDED = "succeeded"
ROLLED_BACK = "rolled_back"
STOPPED = "stopped"
STATES = (RUNNING, SUCCEEDED, ROLLED_BACK, STOPPED)
ENDED = (SUCCEEDED, ROLLED_BACK, STOPPED)

MAX_BODY_BYTES = 16 * 1024  # a record's JSON; a longer body is not read
MAX_STEPS = 20
MAX_VERDICT = 1000  # characters
MAX_INTERVAL = 86_400.0
MIN_INTERVAL = 0.1
MAX_MIN_REQUESTS = 1_000_000_000
MAX_COUNT = 1e15  # requests or errors accumulated in a step
# A step without ``min_requests`` on the target waits for them up to this many intervals, then
# stops (nothing to judge it by).
MAX_WAIT_INTERVALS = 10
# Load is accumulated as rate x time since the last tick; a longer gap (a paused driver, a
# takeover) counts as this much, never as the whole gap at today's rate.
MAX_TICK_GAP = 2.0


class RecordProblem(ValueError):
    """A rollout row that is not a record: names the field, the value (excerpt) and why."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = _excerpt(value)
        self.reason = reason
        super().__init__(f"invalid {field} {self.value}: {reason}")


def _excerpt(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    """What the step has seen so far: requests and errors on the target and on the stable
    revisions (the base split's others), accumulated from the load view's rates."""

    target_requests: float = 0.0
    target_errors: float = 0.0
    stable_requests: float = 0.0
    stable_errors: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    """One server's rollout. ``base`` is the split before it (``latest`` resolved when it
    started: the last split that completed), ``written`` the split the driver last wrote (()
    before the first), ``step`` an index into ``steps`` (percents), times unix seconds.
    ``holder`` and ``lease_expires_at`` are the row's columns, for showing only."""

    server: str
    target: str
    base: tuple[TrafficTarget, ...]
    steps: tuple[int, ...]
    interval: float
    max_error_rate: float  # a fraction: 0.01 = 1%
    min_requests: int
    started_at: float
    step: int = 0
    step_started_at: float = 0.0
    ticked_at: float = 0.0
    state: str = RUNNING
    verdict: str = ""
    written: tuple[TrafficTarget, ...] = ()
    counts: Counts = Counts()
    holder: str = ""
    lease_expires_at: float = 0.0
    # The server's traffic block as it was when the rollout started (() for the default split;
    # ``latest`` unresolved): until the first split is written, the server must still have it.
    before: tuple[TrafficTarget, ...] = ()

    def at_start(self, traffic: Sequence[TrafficTarget]) -> bool:
        """Whether ``traffic`` is the split the rollout started from (as read then, or with
        ``latest`` resolved)."""
        return same_split(traffic, self.before) or same_split(traffic, self.base)

    @property
    def percent(self) -> int:
        return self.steps[self.step]

    @property
    def stable(self) -> frozenset[str]:
        """The revisions the target is compared with: the base split's others."""
        return frozenset(t.revision for t in self.base if t.revision != self.target)


# -- checking what a user asks for ------------------------------------------------------------


def check_steps(value: Any, *, field: str = "steps") -> tuple[int, ...]:
    """Whole percents, strictly increasing, each 1..100, ending at 100, at most MAX_STEPS."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_STEPS:
        raise ValidationError(field, value, f"expected 1 to {MAX_STEPS} percents ending at 100")
    steps: list[int] = []
    for i, step in enumerate(value):
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 100:
            raise ValidationError(f"{field}[{i}]", step, "expected a whole percent 1 to 100")
        if steps and step <= steps[-1]:
            raise ValidationError(field, list(value), "expected strictly increasing percents")
        steps.append(step)
    if steps[-1] != 100:
        raise ValidationError(field, list(value), "the last step must be 100")
    return tuple(steps)


def resolve_base(
    traffic: Sequence[TrafficTarget], *, target: str, latest_other: str | None
) -> tuple[TrafficTarget, ...]:
    """The split a rollout starts from: the server's traffic (none: 100% to latest) with
    ``latest`` replaced by ``latest_other`` (the newest revision with a READY replica other than
    the target: a rollback must never write back a ``latest`` that now means the target).
    ValidationError naming the field when there is nothing to roll out from."""
    entries = list(traffic) or [TrafficTarget(revision=LATEST, percent=100)]
    out: list[TrafficTarget] = []
    for entry in entries:
        if entry.revision == LATEST:
            if latest_other is None:
                if entry.percent == 0:
                    continue
                raise ValidationError(
                    "traffic", LATEST, "no revision other than the target has a READY replica"
                )
            entry = replace(entry, revision=latest_other)
        if any(o.revision == entry.revision for o in out):  # latest named a listed revision
            out = [
                replace(o, percent=o.percent + entry.percent, tag=o.tag or entry.tag)
                if o.revision == entry.revision
                else o
                for o in out
            ]
            continue
        out.append(entry)
    if sum(t.percent for t in out if t.revision != target) == 0:
        raise ValidationError(
            "to", target, "the server already sends all its traffic to this revision"
        )
    return tuple(out)


# -- the split and the judgement ----------------------------------------------------------------


def split_at(
    base: Sequence[TrafficTarget], *, target: str, percent: int
) -> tuple[TrafficTarget, ...]:
    """``base`` with ``target`` at ``percent`` and the others sharing ``100 - percent`` in
    their base proportions (whole percents by largest remainder, ties to the earlier entry),
    tags kept; the target keeps its place in ``base`` or comes last."""
    others = [t for t in base if t.revision != target]
    total = sum(t.percent for t in others)
    rest = 100 - percent
    if total == 0:
        shares = [0] * len(others)
        if rest and others:
            shares[0] = rest
    else:
        exact = [t.percent * rest / total for t in others]
        shares = [math.floor(x) for x in exact]
        left = rest - sum(shares)
        order = sorted(range(len(others)), key=lambda i: (-(exact[i] - shares[i]), i))
        for i in order[:left]:
            shares[i] += 1
    mine = next((t for t in base if t.revision == target), None)
    moved = TrafficTarget(revision=target, percent=percent, tag=mine.tag if mine else "")
    out: list[TrafficTarget] = []
    shared = iter(shares)
    for entry in base:
        if entry.revision == target:
            out.append(moved)
        else:
            out.append(replace(entry, percent=next(shared)))
    if mine is None:
        out.append(moved)
    return tuple(out)


def same_split(a: Sequence[TrafficTarget], b: Sequence[TrafficTarget]) -> bool:
    """Whether two splits send the same percents to the same revisions with the same tags (in
    any order)."""
    return sorted(a, key=lambda t: t.revision) == sorted(b, key=lambda t: t.revision)


@dataclass(frozen=True, slots=True, kw_only=True)
class Judgement:
    enough: bool  # at least min_requests on the target
    failed: bool
    target_rate: float
    stable_rate: float


def judge(counts: Counts, *, min_requests: int, max_error_rate: float) -> Judgement:
    """The rule: with ``target_requests >= min_requests``, the target fails when
    ``target_errors / target_requests - stable_errors / stable_requests > max_error_rate``
    (a stable rate of 0 when the stable revisions saw no request)."""
    target_rate = counts.target_errors / counts.target_requests if counts.target_requests else 0.0
    stable_rate = counts.stable_errors / counts.stable_requests if counts.stable_requests else 0.0
    enough = counts.target_requests >= min_requests and counts.target_requests > 0
    return Judgement(
        enough=enough,
        failed=enough and target_rate - stable_rate > max_error_rate,
        target_rate=target_rate,
        stable_rate=stable_rate,
    )


def accumulate(
    counts: Counts,
    rates: Mapping[str, tuple[float, float]],
    *,
    target: str,
    stable: frozenset[str],
    seconds: float,
) -> Counts:
    """``counts`` plus ``seconds`` of ``rates`` (revision -> requests/s, errors/s)."""

    def add(value: float, more: float) -> float:
        more = more if math.isfinite(more) and more > 0 else 0.0
        return min(MAX_COUNT, value + more * seconds)

    requests, errors = rates.get(target, (0.0, 0.0))
    stable_requests = sum(rates.get(r, (0.0, 0.0))[0] for r in stable)
    stable_errors = sum(rates.get(r, (0.0, 0.0))[1] for r in stable)
    return Counts(
        target_requests=add(counts.target_requests, requests),
        target_errors=add(counts.target_errors, errors),
        stable_requests=add(counts.stable_requests, stable_requests),
        stable_errors=add(counts.stable_errors, stable_errors),
    )


# -- one decision ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The record to write, and the split to write to the server (None: leave it). A running
    record is written before its split (a takeover finds the split not yet there and writes
    it); an ended record after (a takeover never finds an ended record whose split is
    missing)."""

    rollout: Rollout
    write: tuple[TrafficTarget, ...] | None = None

    @property
    def ended(self) -> bool:
        return self.rollout.state in ENDED


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f}%"


def _end(rollout: Rollout, state: str, verdict: str, *, now: float) -> Rollout:
    return replace(rollout, state=state, verdict=verdict[:MAX_VERDICT], ticked_at=now)


def decide(
    rollout: Rollout,
    *,
    now: float,
    traffic: Sequence[TrafficTarget] | None,
    ready: frozenset[str],
    rates: Mapping[str, tuple[float, float]],
) -> Decision:
    """One tick of a running rollout. ``traffic`` is the server's split as read (None: the
    server is gone; () is the default split), ``ready`` the revisions with a READY replica,
    ``rates`` the load view's requests/s and errors/s per revision."""
    step = f"step {rollout.step + 1} of {len(rollout.steps)} ({rollout.percent}%)"
    if traffic is None:
        return Decision(
            rollout=_end(rollout, STOPPED, f"server {rollout.server} is gone at {step}", now=now)
        )
    wanted = split_at(rollout.base, target=rollout.target, percent=rollout.percent)
    if not rollout.written:  # nothing written yet: the server must still have the base split
        if not rollout.at_start(traffic):
            return Decision(rollout=_end(rollout, STOPPED, _changed(step), now=now))
        first = replace(
            rollout, written=wanted, step_started_at=now, ticked_at=now, counts=Counts()
        )
        return Decision(rollout=first, write=wanted)
    if not same_split(traffic, rollout.written):
        if rollout.step == 0:
            unwritten = rollout.at_start(traffic)
        else:
            previous = rollout.steps[rollout.step - 1]
            unwritten = same_split(
                traffic, split_at(rollout.base, target=rollout.target, percent=previous)
            )
        if unwritten and same_split(rollout.written, wanted):
            # Our record was written, our split not yet (a holder died between the two).
            return Decision(rollout=replace(rollout, ticked_at=now), write=wanted)
        return Decision(rollout=_end(rollout, STOPPED, _changed(step), now=now))
    if rollout.target not in ready:
        verdict = (
            f"revision {rollout.target} has no READY replica at {step}: stopped, split left as is"
        )
        return Decision(rollout=_end(rollout, STOPPED, verdict, now=now))
    gap = min(max(now - rollout.ticked_at, 0.0), MAX_TICK_GAP)
    counts = accumulate(
        rollout.counts, rates, target=rollout.target, stable=rollout.stable, seconds=gap
    )
    rollout = replace(rollout, counts=counts, ticked_at=now)
    judged = judge(counts, min_requests=rollout.min_requests, max_error_rate=rollout.max_error_rate)
    figures = (
        f"{rollout.target} error rate {_pct(judged.target_rate)} over"
        f" {counts.target_requests:.0f} requests, stable"
        f" {_pct(judged.stable_rate)} over {counts.stable_requests:.0f} requests"
    )
    if judged.failed:
        verdict = (
            f"rolled back at {step}: {figures}; the difference is over the"
            f" {_pct(rollout.max_error_rate)} allowed"
        )
        return Decision(rollout=_end(rollout, ROLLED_BACK, verdict, now=now), write=rollout.base)
    in_step = now - rollout.step_started_at
    if in_step < rollout.interval:
        return Decision(rollout=rollout)
    if not judged.enough:
        if in_step < rollout.interval * MAX_WAIT_INTERVALS:
            return Decision(rollout=rollout)
        verdict = (
            f"stopped at {step}: {counts.target_requests:.0f} requests on {rollout.target} in"
            f" {in_step:.0f} s, fewer than the {rollout.min_requests} needed to judge"
        )
        return Decision(rollout=_end(rollout, STOPPED, verdict, now=now))
    if rollout.step + 1 == len(rollout.steps):
        verdict = f"succeeded: every step passed; the last, {step}: {figures}"
        return Decision(rollout=_end(rollout, SUCCEEDED, verdict, now=now))
    following = replace(
        rollout,
        step=rollout.step + 1,
        step_started_at=now,
        counts=Counts(),
        written=split_at(
            rollout.base, target=rollout.target, percent=rollout.steps[rollout.step + 1]
        ),
    )
    return Decision(rollout=following, write=following.written)


def _changed(step: str) -> str:
    return (
        f"stopped at {step}: the server's traffic was changed by another write (servers apply?);"
        " the later write wins, the rollout wrote nothing more"
    )


# -- the record as JSON ---------------------------------------------------------------------------


def _targets(split: Sequence[TrafficTarget]) -> list[dict[str, Any]]:
    return [
        {"revision": t.revision, "percent": t.percent, **({"tag": t.tag} if t.tag else {})}
        for t in split
    ]


def encode(rollout: Rollout) -> str:
    """The row's body: canonical JSON of every field but the row's own columns."""
    c = rollout.counts
    body = {
        "target": rollout.target,
        "base": _targets(rollout.base),
        "before": _targets(rollout.before),
        "steps": list(rollout.steps),
        "interval": rollout.interval,
        "max_error_rate": rollout.max_error_rate,
        "min_requests": rollout.min_requests,
        "started_at": rollout.started_at,
        "step": rollout.step,
        "step_started_at": rollout.step_started_at,
        "ticked_at": rollout.ticked_at,
        "state": rollout.state,
        "verdict": rollout.verdict[:MAX_VERDICT],
        "written": _targets(rollout.written),
        "counts": [c.target_requests, c.target_errors, c.stable_requests, c.stable_errors],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _number(body: Mapping[str, Any], field: str, *, low: float, high: float) -> float:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordProblem(field, value, "expected a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise RecordProblem(field, value, f"expected {low:g} to {high:g}")
    return float(value)


def _split(body: Mapping[str, Any], field: str, *, empty: bool) -> tuple[TrafficTarget, ...]:
    value = body.get(field)
    if empty and value == []:
        return ()
    try:
        return parse_spec({"traffic": value}).traffic if value is not None else ()
    except ValidationError as exc:
        raise RecordProblem(
            field + exc.field.removeprefix("spec.traffic"), exc.value, exc.reason
        ) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise RecordProblem(field, value, str(exc)[:100]) from None


def parse(row: RolloutRow) -> Rollout:
    """A stored row -> its record; RecordProblem naming the field for anything else."""
    from control_plane.registry import validate

    try:
        validate.name("server", row.server)
    except ValidationError as exc:
        raise RecordProblem("server", row.server, exc.reason) from None
    if row.state not in STATES:
        raise RecordProblem("state", row.state, f"expected one of {', '.join(STATES)}")
    if row.body is None:
        raise RecordProblem(
            "body", f"{row.size} bytes", f"expected JSON text of at most {MAX_BODY_BYTES} bytes"
        )
    if len(row.body) > MAX_BODY_BYTES:
        raise RecordProblem(
            "body", f"{len(row.body)} characters", f"expected at most {MAX_BODY_BYTES}"
        )
    try:
        body = json.loads(row.body)
    except (ValueError, RecursionError):
        raise RecordProblem("body", row.body, "expected a JSON object") from None
    if not isinstance(body, dict):
        raise RecordProblem("body", row.body, "expected a JSON object")
    target = body.get("target")
    try:
        target = validate.revision("target", target)
    except ValidationError as exc:
        raise RecordProblem("target", target, exc.reason) from None
    if not target:
        raise RecordProblem("target", target, "required")
    try:
        steps = check_steps(body.get("steps"))
    except ValidationError as exc:
        raise RecordProblem(exc.field, exc.value, exc.reason) from None
    base = _split(body, "base", empty=False)
    if not base:
        raise RecordProblem("base", body.get("base"), "required")
    written = _split(body, "written", empty=True)
    before = _split(body, "before", empty=True)
    step = body.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(steps):
        raise RecordProblem("step", step, f"expected 0 to {len(steps) - 1}")
    min_requests = body.get("min_requests")
    if (
        isinstance(min_requests, bool)
        or not isinstance(min_requests, int)
        or not 0 <= min_requests <= MAX_MIN_REQUESTS
    ):
        raise RecordProblem("min_requests", min_requests, f"expected 0 to {MAX_MIN_REQUESTS}")
    verdict = body.get("verdict", "")
    if not isinstance(verdict, str):
        raise RecordProblem("verdict", verdict, "expected text")
    counts = body.get("counts")
    if (
        not isinstance(counts, list)
        or len(counts) != 4
        or not all(
            isinstance(c, int | float)
            and not isinstance(c, bool)
            and math.isfinite(c)
            and 0 <= c <= MAX_COUNT
            for c in counts
        )
    ):
        raise RecordProblem("counts", counts, "expected 4 counts, each 0 or more")
    return Rollout(
        server=row.server,
        target=target,
        base=base,
        steps=steps,
        interval=_number(body, "interval", low=MIN_INTERVAL, high=MAX_INTERVAL),
        max_error_rate=_number(body, "max_error_rate", low=0.0, high=1.0),
        min_requests=min_requests,
        started_at=_number(body, "started_at", low=0.0, high=1e11),
        step=step,
        step_started_at=_number(body, "step_started_at", low=0.0, high=1e11),
        ticked_at=_number(body, "ticked_at", low=0.0, high=1e11),
        state=row.state,
        verdict=verdict[:MAX_VERDICT],
        written=written,
        before=before,
        counts=Counts(
            target_requests=float(counts[0]),
            target_errors=float(counts[1]),
            stable_requests=float(counts[2]),
            stable_errors=float(counts[3]),
        ),
        holder=row.holder,
        lease_expires_at=row.lease_expires_at if math.isfinite(row.lease_expires_at) else 0.0,
    )


def parse_rate(text: str, *, field: str = "max-error-rate") -> float:
    """``1%``, ``0.5%`` or a fraction ``0.01`` -> 0.01; ValidationError naming ``field``."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValidationError(field, text, "expected a percent such as 1% or 0.5%") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValidationError(field, text, "expected 0% to 100%")
    return value

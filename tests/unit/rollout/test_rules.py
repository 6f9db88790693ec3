"""The rollout's pure rules: the split at a step, the judgement, one decision, and the record
read back from rows another writer may have written."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from control_plane.registry.errors import ValidationError
from control_plane.registry.model import RolloutRow
from control_plane.registry.spec import LATEST, TrafficTarget
from control_plane.rollout import rules
from control_plane.rollout.rules import Counts, Rollout


def t(revision: str, percent: int, tag: str = "") -> TrafficTarget:
    return TrafficTarget(revision=revision, percent=percent, tag=tag)


@pytest.mark.parametrize(
    ("base", "percent", "expected"),
    [
        pytest.param([t("v1", 100)], 5, [t("v1", 95), t("v2", 5)], id="one-stable"),
        pytest.param([t("v1", 100)], 100, [t("v1", 0), t("v2", 100)], id="at-100-others-kept-at-0"),
        pytest.param(
            [t("v1", 50), t("v0", 50)],
            25,
            [t("v1", 38), t("v0", 37), t("v2", 25)],
            id="tie-to-first",
        ),
        pytest.param(
            [t("v1", 70), t("v0", 20), t("x", 10)],
            50,
            [t("v1", 35), t("v0", 10), t("x", 5), t("v2", 50)],
            id="proportions",
        ),
        pytest.param(
            [t("v1", 90), t("v2", 10, "canary")],
            25,
            [t("v1", 75), t("v2", 25, "canary")],
            id="target-in-base-keeps-place-and-tag",
        ),
        pytest.param(
            [t("v1", 100), t("nx", 0, "next")],
            50,
            [t("v1", 50), t("nx", 0, "next"), t("v2", 50)],
            id="zero-entries-stay-zero",
        ),
        pytest.param(
            [t("a", 33), t("b", 33), t("c", 34)],
            1,
            [t("a", 33), t("b", 33), t("c", 33), t("v2", 1)],
            id="largest-remainder",
        ),
    ],
)
def test_split_at_a_step(
    base: list[TrafficTarget], percent: int, expected: list[TrafficTarget]
) -> None:
    split = rules.split_at(base, target="v2", percent=percent)
    assert list(split) == expected
    assert sum(x.percent for x in split) == 100


@pytest.mark.parametrize("percent", range(1, 101))
def test_split_always_adds_up_to_100(percent: int) -> None:
    base = [t("a", 13), t("b", 29), t("c", 58)]
    split = rules.split_at(base, target="v9", percent=percent)
    assert sum(x.percent for x in split) == 100
    assert split[-1] == t("v9", percent)


@pytest.mark.parametrize(
    ("counts", "min_requests", "max_rate", "enough", "failed"),
    [
        pytest.param(
            Counts(target_requests=99, target_errors=99), 100, 0.01, False, False, id="too-few"
        ),
        pytest.param(
            Counts(target_requests=100, target_errors=1),
            100,
            0.01,
            True,
            False,
            id="at-limit-passes",
        ),
        pytest.param(
            Counts(target_requests=100, target_errors=2),
            100,
            0.01,
            True,
            True,
            id="over-limit-fails",
        ),
        pytest.param(
            Counts(target_requests=100, target_errors=20, stable_requests=1000, stable_errors=150),
            100,
            0.1,
            True,
            False,
            id="relative-to-stable",
        ),
        pytest.param(
            Counts(target_requests=1000, target_errors=200, stable_requests=1000, stable_errors=0),
            100,
            0.01,
            True,
            True,
            id="twenty-percent",
        ),
        pytest.param(Counts(), 0, 0.0, False, False, id="nothing-seen"),
    ],
)
def test_judge(
    counts: Counts, min_requests: int, max_rate: float, enough: bool, failed: bool
) -> None:
    judged = rules.judge(counts, min_requests=min_requests, max_error_rate=max_rate)
    assert (judged.enough, judged.failed) == (enough, failed)


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ([5, 25, 50], "steps"),
        ([5, 5, 100], "steps"),
        ([50, 25, 100], "steps"),
        ([0, 100], "steps[0]"),
        ([5, 101], "steps[1]"),
        ([5.5, 100], "steps[0]"),
        ([True, 100], "steps[0]"),
        ([], "steps"),
        (list(range(1, 101)), "steps"),
    ],
)
def test_bad_steps_name_the_field(steps: list[object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        rules.check_steps(steps)
    assert caught.value.field == field


def test_resolve_base() -> None:
    assert rules.resolve_base((), target="v2", latest_other="v1") == (t("v1", 100),)
    assert rules.resolve_base(
        (t("v1", 80), t(LATEST, 20, "next")), target="v2", latest_other="v1"
    ) == (t("v1", 100, "next"),)
    with pytest.raises(ValidationError, match="no revision other than the target"):
        rules.resolve_base((), target="v2", latest_other=None)
    with pytest.raises(ValidationError, match="already sends all its traffic") as caught:
        rules.resolve_base((t("v2", 100), t("v1", 0)), target="v2", latest_other="v1")
    assert caught.value.field == "to"


def rollout(**changes: object) -> Rollout:
    base = Rollout(
        server="echo",
        target="v2",
        base=(t("v1", 100),),
        steps=(10, 50, 100),
        interval=2.0,
        max_error_rate=0.01,
        min_requests=100,
        started_at=1000.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


READY = frozenset({"v1", "v2"})


def test_a_rollout_writes_each_step_then_succeeds() -> None:
    r = rollout()
    first = rules.decide(r, now=1000.0, traffic=(t("v1", 100),), ready=READY, rates={})
    assert first.write == (t("v1", 90), t("v2", 10))
    r = first.rollout
    rates = {"v2": (100.0, 0.0), "v1": (900.0, 1.0)}
    now = 1000.0
    for expected_step in (0, 0, 0, 1):
        now += 0.5
        d = rules.decide(r, now=now, traffic=r.written, ready=READY, rates=rates)
        r = d.rollout
        assert r.step == expected_step
    assert d.write == (t("v1", 50), t("v2", 50))
    assert r.counts == Counts()
    # the next step's split, not yet on the server (a holder died between record and split)
    again = rules.decide(
        r, now=now + 0.5, traffic=(t("v1", 90), t("v2", 10)), ready=READY, rates=rates
    )
    assert again.write == (t("v1", 50), t("v2", 50))
    assert not again.ended
    r = replace(r, step=2, written=rules.split_at(r.base, target="v2", percent=100))
    r = replace(r, step_started_at=now)
    for _ in range(4):
        now += 0.5
        d = rules.decide(r, now=now, traffic=r.written, ready=READY, rates=rates)
        r = d.rollout
    assert d.ended
    assert r.state == rules.SUCCEEDED
    assert d.write is None
    assert "succeeded" in r.verdict


def test_a_failing_target_is_rolled_back_with_the_numbers() -> None:
    r = rollout(written=(t("v1", 90), t("v2", 10)), step_started_at=1000.0, ticked_at=1000.0)
    rates = {"v2": (200.0, 40.0), "v1": (1800.0, 0.0)}
    d = rules.decide(r, now=1000.5, traffic=r.written, ready=READY, rates=rates)
    assert d.ended
    assert d.rollout.state == rules.ROLLED_BACK
    assert d.write == (t("v1", 100),)
    verdict = d.rollout.verdict
    assert "v2 error rate 20.00% over 100 requests" in verdict
    assert "stable 0.00% over 900 requests" in verdict
    assert "step 1 of 3 (10%)" in verdict


def test_a_manual_apply_stops_it_and_writes_nothing() -> None:
    r = rollout(written=(t("v1", 90), t("v2", 10)), step_started_at=1000.0, ticked_at=1000.0)
    d = rules.decide(r, now=1000.5, traffic=(t("v1", 70), t("v2", 30)), ready=READY, rates={})
    assert d.ended
    assert d.rollout.state == rules.STOPPED
    assert d.write is None
    assert "changed by another write" in d.rollout.verdict
    # before the first write, too: the server no longer has the base split
    d = rules.decide(
        rollout(), now=1000.0, traffic=(t("v1", 50), t("v2", 50)), ready=READY, rates={}
    )
    assert d.rollout.state == rules.STOPPED
    assert d.write is None


def test_a_target_without_ready_replicas_stops_it() -> None:
    r = rollout(written=(t("v1", 90), t("v2", 10)), step_started_at=1000.0, ticked_at=1000.0)
    d = rules.decide(r, now=1000.5, traffic=r.written, ready=frozenset({"v1"}), rates={})
    assert d.rollout.state == rules.STOPPED
    assert d.write is None
    assert "no READY replica" in d.rollout.verdict
    gone = rules.decide(r, now=1000.5, traffic=None, ready=READY, rates={})
    assert gone.rollout.state == rules.STOPPED
    assert "gone" in gone.rollout.verdict


def test_a_step_without_enough_requests_waits_then_stops() -> None:
    r = rollout(written=(t("v1", 90), t("v2", 10)), step_started_at=1000.0, ticked_at=1000.0)
    d = rules.decide(r, now=1003.0, traffic=r.written, ready=READY, rates={"v2": (1.0, 0.0)})
    assert d.rollout.state == rules.RUNNING
    assert d.rollout.step == 0
    d = rules.decide(
        r, now=1000.0 + 2.0 * rules.MAX_WAIT_INTERVALS, traffic=r.written, ready=READY, rates={}
    )
    assert d.rollout.state == rules.STOPPED
    assert "fewer than the 100 needed" in d.rollout.verdict


def test_a_long_gap_counts_as_max_tick_gap() -> None:
    r = rollout(written=(t("v1", 90), t("v2", 10)), step_started_at=1000.0, ticked_at=1000.0)
    d = rules.decide(r, now=1100.0, traffic=r.written, ready=READY, rates={"v2": (10.0, 0.0)})
    assert d.rollout.counts.target_requests == 10.0 * rules.MAX_TICK_GAP


def test_encode_then_parse_is_the_same_record() -> None:
    r = rollout(
        written=(t("v1", 90), t("v2", 10, "canary")),
        counts=Counts(target_requests=5.5, target_errors=1, stable_requests=9, stable_errors=0),
        verdict="",
        holder="cp-1",
        lease_expires_at=1234.0,
    )
    row = RolloutRow(
        server="echo",
        state="running",
        holder="cp-1",
        lease_expires_at=1234.0,
        written_at=0.0,
        body=rules.encode(r),
        size=0,
    )
    assert rules.parse(row) == r


def good_body() -> dict[str, object]:
    return json.loads(rules.encode(rollout()))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"target": "V2!"}, "target", id="target-not-a-revision"),
        pytest.param({"target": 7}, "target", id="target-int"),
        pytest.param({"target": ""}, "target", id="target-empty"),
        pytest.param({"steps": [50, 10]}, "steps", id="steps-decreasing"),
        pytest.param({"steps": "5,100"}, "steps", id="steps-text"),
        pytest.param({"base": [{"revision": "v1", "percent": 90}]}, "base", id="base-not-100"),
        pytest.param(
            {"base": [{"revision": "v1", "percent": "x"}]},
            "base[0].percent",
            id="base-percent-text",
        ),
        pytest.param({"base": []}, "base", id="base-empty"),
        pytest.param({"written": 5}, "written", id="written-int"),
        pytest.param({"step": 3}, "step", id="step-out-of-range"),
        pytest.param({"step": -1}, "step", id="step-negative"),
        pytest.param({"interval": float("inf")}, "interval", id="interval-inf"),
        pytest.param({"interval": 0}, "interval", id="interval-zero"),
        pytest.param({"max_error_rate": 2}, "max_error_rate", id="rate-over-1"),
        pytest.param({"min_requests": -5}, "min_requests", id="min-negative"),
        pytest.param({"min_requests": 10**30}, "min_requests", id="min-huge"),
        pytest.param({"counts": [1, 2, 3]}, "counts", id="counts-short"),
        pytest.param({"counts": [1, 2, 3, -1]}, "counts", id="counts-negative"),
        pytest.param({"verdict": ["x"]}, "verdict", id="verdict-list"),
        pytest.param({"started_at": None}, "started_at", id="started-null"),
    ],
)
def test_hostile_bodies_are_problems_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    body = {**good_body(), **change}
    row = RolloutRow(
        server="echo",
        state="running",
        holder="",
        lease_expires_at=0.0,
        written_at=0.0,
        body=json.dumps(body),
        size=0,
    )
    with pytest.raises(rules.RecordProblem) as caught:
        rules.parse(row)
    assert caught.value.field == field
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(
    ("body", "state", "field"),
    [
        pytest.param(None, "running", "body", id="too-big-or-blob"),
        pytest.param("[" * 5000, "running", "body", id="deep"),
        pytest.param("not json", "running", "body", id="not-json"),
        pytest.param("[1]", "running", "body", id="not-object"),
        pytest.param("{}", "paused", "state", id="unknown-state"),
        pytest.param("{}", "running", "server", id="server-not-a-name"),
        pytest.param("x" * (rules.MAX_BODY_BYTES + 1), "running", "body", id="long"),
    ],
)
def test_hostile_rows_are_problems(body: str | None, state: str, field: str) -> None:
    row = RolloutRow(
        server="Echo\n" + "x" * 500 if field == "server" else "echo",
        state=state,
        holder="",
        lease_expires_at=0.0,
        written_at=0.0,
        body=body,
        size=10**9,
    )
    with pytest.raises(rules.RecordProblem) as caught:
        rules.parse(row)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("text", "value"), [("1%", 0.01), ("0.5%", 0.005), ("0.02", 0.02), ("0%", 0.0), ("100%", 1.0)]
)
def test_parse_rate(text: str, value: float) -> None:
    assert rules.parse_rate(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "x%", "101%", "-1%", "nan", "inf%"])
def test_bad_rates_name_the_field(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        rules.parse_rate(text)
    assert caught.value.field == "max-error-rate"


def test_a_rollout_from_the_default_split_writes_its_first_step() -> None:
    """The server had no traffic block (100% latest): ``before`` is (), the base has latest
    resolved; the first look finds the server as it was and writes the first step."""
    r = rollout(before=())
    d = rules.decide(r, now=1000.0, traffic=(), ready=READY, rates={})
    assert d.write == (t("v1", 90), t("v2", 10))
    assert d.rollout.state == rules.RUNNING
    # the record was written, the split not: the next holder writes it
    d = rules.decide(d.rollout, now=1000.5, traffic=(), ready=READY, rates={})
    assert d.write == (t("v1", 90), t("v2", 10))
    assert d.rollout.state == rules.RUNNING
    # with latest written out too
    r = rollout(before=(t(LATEST, 100),))
    d = rules.decide(r, now=1000.0, traffic=(t(LATEST, 100),), ready=READY, rates={})
    assert d.write == (t("v1", 90), t("v2", 10))

"""``spec.load_balancing``: least_request, round_robin, consistent_hash and utilization (ORCA),
each parsed to its values; bad knobs refused naming the field and the value."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.registry.errors import ValidationError
from control_plane.registry.spec import DEFAULT, HashOn, Utilization, parse_spec


def test_least_request_is_the_default() -> None:
    assert DEFAULT.balancing == "least_request"
    assert DEFAULT.utilization is None
    assert parse_spec({"load_balancing": "least_request"}).balancing == "least_request"


@pytest.mark.parametrize(
    ("value", "balancing", "hash_on", "utilization"),
    [
        pytest.param("round_robin", "round_robin", None, None, id="round-robin"),
        pytest.param(
            {"consistent_hash": {"header": "X-Session"}},
            "consistent_hash",
            HashOn(header="x-session"),
            None,
            id="consistent-hash",
        ),
        pytest.param({"utilization": {}}, "utilization", None, Utilization(), id="empty"),
        pytest.param({"utilization": None}, "utilization", None, Utilization(), id="null"),
        pytest.param(
            {
                "utilization": {
                    "metric": "named_metrics.kv_cache",
                    "blackout_period": "2s",
                    "weight_expiration_period": "3m",
                    "weight_update_period": "250ms",
                    "error_utilization_penalty": 0,
                    "out_of_band": {"period": "1s"},
                }
            },
            "utilization",
            None,
            Utilization(
                metric="named_metrics.kv_cache",
                blackout_period=2.0,
                weight_expiration_period=180.0,
                weight_update_period=0.25,
                error_utilization_penalty=0.0,
                out_of_band_period=1.0,
            ),
            id="every-knob",
        ),
        pytest.param(
            {"utilization": {"out_of_band": {}, "blackout_period": 0}},
            "utilization",
            None,
            Utilization(blackout_period=0.0, out_of_band_period=10.0),
            id="out-of-band-default-period-no-blackout",
        ),
        *(
            pytest.param(
                {"utilization": {"metric": metric}},
                "utilization",
                None,
                Utilization(metric=metric),
                id=f"metric-{metric}",
            )
            for metric in (
                "application_utilization",
                "cpu_utilization",
                "mem_utilization",
                "utilization.gpu",
                "request_cost.tokens",
                "named_metrics.*",
                "named_metrics.queue/depth-1.2",
            )
        ),
    ],
)
def test_load_balancing_parses_to_its_values(
    value: Any, balancing: str, hash_on: HashOn | None, utilization: Utilization | None
) -> None:
    spec = parse_spec({"load_balancing": value})
    assert (spec.balancing, spec.hash_on, spec.utilization) == (balancing, hash_on, utilization)


def test_the_utilization_defaults_are_envoys_and_grpcs() -> None:
    assert Utilization() == Utilization(
        metric="",
        blackout_period=10.0,
        weight_expiration_period=180.0,
        weight_update_period=1.0,
        error_utilization_penalty=1.0,
        out_of_band_period=None,
    )


U = "spec.load_balancing.utilization"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        pytest.param("random", "spec.load_balancing", id="unknown-policy"),
        pytest.param(["round_robin"], "spec.load_balancing", id="a-list"),
        pytest.param({}, "spec.load_balancing", id="empty-mapping"),
        pytest.param(
            {"consistent_hash": {"header": "x"}, "utilization": {}},
            "spec.load_balancing",
            id="affinity-and-utilization",
        ),
        pytest.param({"least_request": {}}, "spec.load_balancing.least_request", id="unknown"),
        pytest.param({"utilization": "on"}, U, id="not-a-mapping"),
        pytest.param({"utilization": {"metrics": "x"}}, f"{U}.metrics", id="unknown-knob"),
        *(
            pytest.param({"utilization": {"metric": metric}}, f"{U}.metric", id=f"metric-{i}")
            for i, metric in enumerate(
                (
                    "kv_cache",
                    "named_metrics.",
                    "named_metrics.a,b",
                    "named_metrics.a=b",
                    "named_metrics.a b",
                    "named_metrics." + "x" * 101,
                    "eps",
                    "rps_fractional",
                    "CPU_UTILIZATION",
                    5,
                    ["named_metrics.a"],
                    None,
                )
            )
        ),
        pytest.param({"utilization": {"blackout_period": "-1s"}}, f"{U}.blackout_period", id="neg"),
        pytest.param(
            {"utilization": {"weight_expiration_period": "0s"}},
            f"{U}.weight_expiration_period",
            id="zero-expiration",
        ),
        pytest.param(
            {"utilization": {"weight_update_period": "50ms"}},
            f"{U}.weight_update_period",
            id="update-below-100ms",
        ),
        pytest.param(
            {"utilization": {"weight_update_period": "soon"}},
            f"{U}.weight_update_period",
            id="update-not-a-duration",
        ),
        *(
            pytest.param(
                {"utilization": {"error_utilization_penalty": penalty}},
                f"{U}.error_utilization_penalty",
                id=f"penalty-{str(penalty)[:12]}",
            )
            for penalty in (-0.5, float("nan"), float("inf"), 1e7, 10**400, True, "1")
        ),
        pytest.param({"utilization": {"out_of_band": "1s"}}, f"{U}.out_of_band", id="oob-str"),
        pytest.param(
            {"utilization": {"out_of_band": {"period": "0s"}}},
            f"{U}.out_of_band.period",
            id="oob-zero-period",
        ),
        pytest.param(
            {"utilization": {"out_of_band": {"every": "1s"}}},
            f"{U}.out_of_band.every",
            id="oob-unknown",
        ),
    ],
)
def test_bad_load_balancing_is_refused_naming_the_field(value: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec({"load_balancing": value})
    assert info.value.field == field


def test_affinity_and_utilization_together_say_to_give_one() -> None:
    with pytest.raises(ValidationError, match="give one of consistent_hash, utilization"):
        parse_spec({"load_balancing": {"consistent_hash": {"header": "x"}, "utilization": {}}})


def test_a_huge_load_balancing_value_is_excerpted_in_the_error() -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec({"load_balancing": "x" * 100_000})
    assert len(str(info.value)) < 1_000


JUNK: list[Any] = [
    None,
    True,
    [],
    [1],
    {},
    {"a": 1},
    "",
    "x",
    "9" * 1000,
    -1,
    0,
    1e308,
    float("nan"),
    float("-inf"),
    10**400,
    5e-324,
]
KNOBS = [
    "metric",
    "blackout_period",
    "weight_expiration_period",
    "weight_update_period",
    "error_utilization_penalty",
    "out_of_band",
]


@pytest.mark.parametrize("knob", KNOBS)
@pytest.mark.parametrize("junk", JUNK, ids=lambda v: repr(v)[:12])
def test_junk_in_any_knob_is_a_value_or_a_validation_error_never_a_crash(
    knob: str, junk: Any
) -> None:
    for raw in ({knob: junk}, {"out_of_band": {"period": junk}}):
        field = ""
        try:
            parse_spec({"load_balancing": {"utilization": raw}})
        except ValidationError as exc:
            field = exc.field
        assert field == "" or field.startswith("spec.load_balancing.utilization"), field

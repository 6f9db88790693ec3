"""Server specs: defaults, every option, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.registry.errors import ValidationError
from control_plane.registry.spec import (
    DEFAULT,
    Autoscaling,
    ColdStart,
    HashOn,
    HealthCheck,
    OutlierDetection,
    duration,
    parse_spec,
)


def test_empty_spec_is_the_default() -> None:
    assert parse_spec({}) is DEFAULT
    assert DEFAULT.request_timeout == 60.0
    assert DEFAULT.idle_timeout == 300.0
    assert DEFAULT.retries == 2
    assert DEFAULT.hash_on is None
    assert DEFAULT.outlier_detection == OutlierDetection()
    assert DEFAULT.health_check is None
    assert DEFAULT.cross_region


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("250ms", 0.25), ("5m", 300.0), ("1h", 3600.0), (2, 2.0), ("1.5s", 1.5)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert duration("f", text) == seconds


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            {"load_balancing": {"consistent_hash": {"header": "X-Session"}}},
            {"hash_on": HashOn(header="x-session")},
            id="hash-header",
        ),
        pytest.param(
            {"load_balancing": {"consistent_hash": {"cookie": "sid", "ttl": "1h"}}},
            {"hash_on": HashOn(cookie="sid", cookie_ttl=3600.0)},
            id="hash-cookie",
        ),
        pytest.param({"failover": "local_only"}, {"cross_region": False}, id="local-only"),
        pytest.param({"regions": ["us-west"]}, {"regions": ("us-west",)}, id="regions"),
        pytest.param({"outlier_detection": "off"}, {"outlier_detection": None}, id="no-outlier"),
        pytest.param(
            {"health_check": {"http": "/healthz"}},
            {"health_check": HealthCheck(kind="http", target="/healthz")},
            id="hc-http",
        ),
        pytest.param({"timeouts": {"request": "0s"}}, {"request_timeout": 0.0}, id="no-timeout"),
        pytest.param({"path_prefix": "/v1"}, {"path_prefix": "/v1"}, id="prefix"),
        pytest.param({}, {"cold_start": ColdStart(mode="reject", timeout=30.0)}, id="cold-default"),
        pytest.param(
            {"cold_start": {"mode": "hold", "timeout": "45s"}},
            {"cold_start": ColdStart(mode="hold", timeout=45.0)},
            id="cold-hold",
        ),
        pytest.param(
            {
                "autoscaling": {
                    "target_concurrency": 4,
                    "min_replicas": 0,
                    "max_replicas": 20,
                    "buffer_replicas": 1,
                    "scale_up_window": "0s",
                    "scale_down_window": "60s",
                }
            },
            {
                "autoscaling": Autoscaling(
                    target_concurrency=4.0,
                    max_replicas=20,
                    buffer_replicas=1,
                    scale_down_window=60.0,
                )
            },
            id="autoscaling",
        ),
    ],
)
def test_options(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    parsed = parse_spec(spec)
    for key, value in expected.items():
        assert getattr(parsed, key) == value


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({"colour": "blue"}, "spec.colour", id="unknown-field"),
        pytest.param({"cold_start": {"mode": "wait"}}, "spec.cold_start.mode", id="cold-mode"),
        pytest.param({"cold_start": {"mode": ["hold"]}}, "spec.cold_start.mode", id="cold-list"),
        pytest.param({"cold_start": {"timeout": "0s"}}, "spec.cold_start.timeout", id="cold-0s"),
        pytest.param({"cold_start": {"timeout": "2h"}}, "spec.cold_start.timeout", id="cold-2h"),
        pytest.param({"cold_start": "hold"}, "spec.cold_start", id="cold-not-a-mapping"),
        pytest.param({"cold_start": {"after": 1}}, "spec.cold_start.after", id="cold-unknown"),
        pytest.param(
            {"autoscaling": {"target_concurrency": -1}},
            "spec.autoscaling.target_concurrency",
            id="negative-target",
        ),
        pytest.param(
            {"autoscaling": {"min_replicas": 5, "max_replicas": 2}},
            "spec.autoscaling.max_replicas",
            id="max-below-min",
        ),
        pytest.param(
            {"autoscaling": {"scale_down_window": "soon"}},
            "spec.autoscaling.scale_down_window",
            id="bad-window",
        ),
        pytest.param({"autoscaling": {"speed": 1}}, "spec.autoscaling.speed", id="unknown"),
        pytest.param({"timeouts": {"idle": "soon"}}, "spec.timeouts.idle", id="bad-duration"),
        pytest.param({"timeouts": {"connect": "0s"}}, "spec.timeouts.connect", id="zero-connect"),
        pytest.param({"retries": 11}, "spec.retries", id="too-many-retries"),
        pytest.param({"failover": "sometimes"}, "spec.failover", id="bad-failover"),
        pytest.param({"regions": ["US West"]}, "spec.regions", id="bad-region"),
        pytest.param({"path_prefix": "v1"}, "spec.path_prefix", id="relative-prefix"),
        pytest.param({"load_balancing": "random"}, "spec.load_balancing", id="bad-lb"),
        pytest.param(
            {"load_balancing": {"consistent_hash": {}}},
            "spec.load_balancing.consistent_hash",
            id="hash-on-nothing",
        ),
        pytest.param(
            {"max_requests_per_replica": -1}, "spec.max_requests_per_replica", id="negative-limit"
        ),
        pytest.param(
            {"health_check": {"grpc": ""}}, "spec.health_check.grpc", id="grpc-check-on-http"
        ),
        pytest.param(
            {"outlier_detection": {"consecutive_5xx": 0}},
            "spec.outlier_detection.consecutive_5xx",
            id="zero-5xx",
        ),
    ],
)
def test_errors_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec(spec, protocol="http")
    assert info.value.field == field


def test_a_traffic_split_parses_to_its_targets_in_order() -> None:
    from control_plane.registry.spec import TrafficTarget

    spec = parse_spec(
        {
            "traffic": [
                {"revision": "v1", "percent": 90},
                {"revision": "v2", "percent": 10, "tag": "canary"},
                {"revision": "latest", "percent": 0, "tag": "next"},
            ]
        }
    )
    assert spec.traffic == (
        TrafficTarget(revision="v1", percent=90),
        TrafficTarget(revision="v2", percent=10, tag="canary"),
        TrafficTarget(revision="latest", percent=0, tag="next"),
    )
    assert DEFAULT.traffic == ()


@pytest.mark.parametrize(
    ("traffic", "field", "words"),
    [
        pytest.param([{"revision": "v1", "percent": 90}], "spec.traffic", "add up to 90", id="sum"),
        pytest.param(
            [{"revision": "v1", "percent": 50}, {"revision": "v1", "percent": 50}],
            "spec.traffic[1].revision",
            "repeats spec.traffic[0]",
            id="repeated-revision",
        ),
        pytest.param(
            [
                {"revision": "a", "percent": 50, "tag": "t"},
                {"revision": "b", "percent": 50, "tag": "t"},
            ],
            "spec.traffic[1].tag",
            "repeats spec.traffic[0]",
            id="repeated-tag",
        ),
        pytest.param(
            [{"revision": "V1", "percent": 100}],
            "spec.traffic[0].revision",
            "lowercase",
            id="bad-name",
        ),
        pytest.param(
            [{"revision": "", "percent": 100}],
            "spec.traffic[0].revision",
            "required",
            id="empty-name",
        ),
        pytest.param([{"percent": 100}], "spec.traffic[0].revision", "required", id="no-revision"),
        pytest.param([{"revision": "a"}], "spec.traffic[0].percent", "required", id="no-percent"),
        pytest.param(
            [{"revision": "a", "percent": 100.0}], "spec.traffic[0].percent", "whole", id="float"
        ),
        pytest.param(
            [{"revision": "a", "percent": True}], "spec.traffic[0].percent", "whole", id="bool"
        ),
        pytest.param(
            [{"revision": "a", "percent": 101}, {"revision": "b", "percent": -1}],
            "spec.traffic[0].percent",
            "from 0 to 100",
            id="out-of-range",
        ),
        pytest.param(
            [{"revision": "a", "percent": 100, "tag": 5}],
            "spec.traffic[0].tag",
            "name",
            id="tag-type",
        ),
        pytest.param(
            [{"revision": "a", "percent": 100, "x": 1}], "spec.traffic[0].x", "unknown", id="extra"
        ),
        pytest.param([], "spec.traffic", "1 to 16", id="empty"),
        pytest.param("v1", "spec.traffic", "1 to 16", id="not-a-list"),
        pytest.param(
            [{"revision": f"r{i}", "percent": 0} for i in range(17)],
            "spec.traffic",
            "1 to 16",
            id="too-many",
        ),
        pytest.param(["v1"], "spec.traffic[0]", "mapping", id="entry-not-a-mapping"),
    ],
)
def test_a_bad_traffic_split_is_refused_naming_the_field(
    traffic: Any, field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_spec({"traffic": traffic})
    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_replica_revision_is_a_short_name_and_latest_is_reserved() -> None:
    from control_plane.registry import validate

    assert validate.revision("revision", "") == ""
    assert validate.revision("revision", None) == ""
    assert validate.revision("revision", "v2-blue") == "v2-blue"
    for bad in ("latest", "V2", "-v2", "a" * 64, "v_2", 7):
        with pytest.raises(ValidationError) as caught:
            validate.revision("revision", bad)
        assert caught.value.field == "revision"

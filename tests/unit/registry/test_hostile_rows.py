"""Rows another writer left hostile (JSON 1,000 levels deep, megabytes long, floats no spec
should hold): decoding never raises, routing reports the row, naming it, the field and a
short excerpt of the value, and routes every other server."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from control_plane.registry import rows, validate
from control_plane.registry.errors import ValidationError
from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.registry.servers import route_keys
from control_plane.registry.spec import decode, parse_spec
from control_plane.routing.build import to_routing_table

DEEP = "[" * 1000 + "]" * 1000  # 2 KB: RecursionError in json.loads
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000
HOSTILE_JSON = [
    pytest.param(DEEP, "nested deeper than 32 levels", id="deep-list"),
    pytest.param(DEEP_OBJECT, "nested deeper than 32 levels", id="deep-object"),
    pytest.param("[" * 1000, "nested deeper than 32 levels", id="deep-unclosed"),
    pytest.param('["' + "x" * 100_000 + '"]', "longer than 65,536 characters", id="long"),
    pytest.param('["a.example.com",', "not valid JSON", id="truncated"),
    pytest.param("[1e999999]", "", id="overflowing-number"),
    pytest.param("[" + "9" * 5000 + "]", "not valid JSON", id="5000-digit-int"),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE_JSON)
def test_json_list_never_raises(raw: str, reason: str) -> None:
    decoded = rows.json_list(raw)
    if reason:
        assert len(decoded) == 1
        assert isinstance(decoded[0], rows.Malformed)
        assert decoded[0].reason == reason


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(["[" * 500 + "{" * 500, 'a "quoted" [ \\ ]'], id="brackets"),
        pytest.param(['one " then ' + "[" * 100], id="escaped-quote-first"),
        pytest.param(["ends in \\", "[" * 100, '\\"' + "[" * 100], id="escaped-backslashes"),
    ],
)
def test_brackets_inside_strings_are_not_nesting(values: list[str]) -> None:
    raw = json.dumps(values)
    assert not rows.too_deep(raw)
    assert rows.json_list(raw) == tuple(values)


def test_32_levels_decode_and_33_do_not() -> None:
    assert rows.json_document("[" * 32 + "]" * 32) == json.loads("[" * 32 + "]" * 32)
    assert isinstance(rows.json_document("[" * 33 + "]" * 33), rows.Malformed)


@pytest.mark.parametrize(("raw", "reason"), HOSTILE_JSON)
def test_spec_decode_raises_only_a_validation_error_with_an_excerpt(raw: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        decode(raw)
    assert caught.value.field == "spec"
    assert len(str(caught.value.value)) < 120
    assert len(str(caught.value)) < 250


def _state(*servers: Server) -> RegistryState:
    healthy = Server(name="good", hostnames=("good.example.com",), protocol="http")
    replica = Replica(id="r-good", server="good", host="10.0.0.1", port=80, region="us-west")
    return RegistryState.of(
        servers=[healthy, *servers], replicas=[replica], revision=1, committed_at=0.0
    )


@pytest.mark.parametrize(
    ("column", "value", "field", "reason"),
    [
        pytest.param(
            "hostnames", DEEP, "hostnames", "nested deeper than 32 levels", id="hostnames"
        ),
        pytest.param("spec", DEEP, "spec", "nested deeper than 32 levels", id="spec-deep"),
        pytest.param("spec", DEEP_OBJECT, "spec", "nested deeper than 32 levels", id="spec-obj"),
        pytest.param(
            "spec",
            '{"autoscaling":{"target_concurrency":5e-324}}',
            "spec.autoscaling.target_concurrency",
            "expected 0 (off) or a number from 0.01 to 1e+06",
            id="spec-tiny-target",
        ),
        pytest.param(
            "spec",
            '{"autoscaling":{"target_concurrency":NaN}}',
            "spec.autoscaling.target_concurrency",
            "expected 0 (off) or a number from 0.01 to 1e+06",
            id="spec-nan-target",
        ),
        pytest.param(
            "spec",
            '{"timeouts":{"request":' + "9" * 400 + "}}",
            "spec.timeouts.request",
            "must be between 0s and 24h",
            id="spec-huge-int-duration",
        ),
        pytest.param(  # math.isfinite raised OverflowError out of routing (found in issue 27)
            "spec",
            '{"autoscaling":{"target_concurrency":' + "9" * 400 + "}}",
            "spec.autoscaling.target_concurrency",
            "expected 0 (off) or a number from 0.01 to 1e+06",
            id="spec-huge-int-target",
        ),
        pytest.param(
            "spec",
            '{"autoscaling":{"target_utilization":' + "9" * 400 + "}}",
            "spec.autoscaling.target_utilization",
            "expected 0 (off) or a fraction from 0.01 to 1",
            id="spec-huge-int-utilization",
        ),
    ],
)
def test_a_hostile_row_is_a_problem_and_everyone_else_routes(
    column: str, value: str, field: str, reason: str
) -> None:
    row = rows.server(
        "bad",
        "default",
        value if column == "hostnames" else '["bad.example.com"]',
        "http",
        value if column == "spec" else "{}",
        0,
        0,
    )
    table = to_routing_table(_state(row))
    assert [s.name for s in table.servers] == ["good"]
    assert [s.endpoints[0].replica_id for s in table.servers] == ["r-good"]
    (problem,) = table.problems
    assert (problem.kind, problem.name, problem.field, problem.message) == (
        "server",
        "bad",
        field,
        reason,
    )
    assert len(problem.value) < 120
    assert len(str(problem)) < 250
    # A conflict check against this row (``servers apply`` of another server) reads it too.
    assert route_keys(row) >= set()


HOSTILE_FLOATS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    5e-324,
    1e308,
    -1.0,
    0.001,
    1e7,
    10**400,
    -(10**400),
]


@pytest.mark.parametrize("value", HOSTILE_FLOATS, ids=repr)
def test_target_concurrency_refuses_what_is_not_finite_or_in_range(value: float) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_spec({"autoscaling": {"target_concurrency": value}})
    assert caught.value.field == "spec.autoscaling.target_concurrency"


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0.0), (-0.0, 0.0), (0.01, 0.01), (4, 4.0), (1_000_000, 1e6)]
)
def test_target_concurrency_accepts_zero_and_its_range(value: float, expected: float) -> None:
    autoscaling = parse_spec({"autoscaling": {"target_concurrency": value}}).autoscaling
    assert autoscaling is not None
    assert autoscaling.target_concurrency == expected
    assert math.copysign(1, autoscaling.target_concurrency) == 1


FLOAT_FIELDS = [
    ("timeouts", "request"),
    ("timeouts", "idle"),
    ("timeouts", "connect"),
    ("timeouts", "max_stream"),
    ("autoscaling", "scale_up_window"),
    ("autoscaling", "scale_down_window"),
    ("cold_start", "timeout"),
    ("outlier_detection", "interval"),
    ("outlier_detection", "base_ejection_time"),
]


@pytest.mark.parametrize(("block", "name"), FLOAT_FIELDS, ids="-".join)
@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, 5e-324, 1e308, -1.0, 10**400], ids=repr
)
def test_every_duration_refuses_floats_out_of_range(block: str, name: str, value: Any) -> None:
    spec: dict[str, Any] = {block: {name: value}}
    if block == "autoscaling":
        spec[block]["target_concurrency"] = 1
    with pytest.raises(ValidationError) as caught:
        parse_spec(spec)
    assert caught.value.field == f"spec.{block}.{name}"


POSITIVE = {("timeouts", "connect"), ("cold_start", "timeout")} | {
    ("outlier_detection", n) for n in ("interval", "base_ejection_time")
}


@pytest.mark.parametrize(("block", "name"), FLOAT_FIELDS, ids="-".join)
def test_negative_zero_durations_are_zero_or_refused(block: str, name: str) -> None:
    spec: dict[str, Any] = {block: {name: -0.0}}
    if block == "autoscaling":
        spec[block]["target_concurrency"] = 1
    if (block, name) in POSITIVE:
        with pytest.raises(ValidationError, match=f"spec.{block}.{name}"):
            parse_spec(spec)
    else:
        assert "-0.0" not in repr(parse_spec(spec))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("²", id="superscript-two"),
        pytest.param("٣", id="arabic-indic-three"),
        pytest.param("9" * 5000, id="5000-digits"),
        pytest.param("-" + "1" * 21, id="21-digits"),
    ],
)
def test_an_integer_column_of_any_digits_never_raises(raw: str) -> None:
    """'²'.isdigit() is true and int('²') raises, as int() does past 4,300 digits: such a
    column stays as read, for validation to report naming it."""
    assert rows.whole_number(raw) == raw


def test_integer_columns_in_ascii_digits_still_read() -> None:
    assert rows.whole_number(" +8080 ") == 8080
    assert rows.whole_number("-3") == -3
    assert rows.whole_number("1" * 20) == int("1" * 20)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param("10.0.0.7:²", "address", id="superscript-port"),
        pytest.param("10.0.0.7:" + "9" * 5000, "port", id="5000-digit-port"),
    ],
)
def test_an_address_of_any_digits_is_a_validation_error(raw: str, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        validate.address(raw)
    assert refused.value.field == field


def test_a_zero_padded_port_still_reads() -> None:
    assert validate.address("10.0.0.7:000008080") == ("10.0.0.7", 8080)


# -- a replica's revision (issue 26): another writer's row may hold any type or shape --------


def _replica_row(*, revision: Any = None, registered_at: Any = None) -> Replica:
    return rows.replica(
        "r-bad",
        "good",
        "10.0.0.2",
        80,
        "us-west",
        "",
        100,
        "READY",
        None,
        0,
        revision,
        registered_at,
    )


@pytest.mark.parametrize(
    ("revision", "value", "reason"),
    [
        pytest.param(-5, "-5", "use 1-63", id="negative-int"),
        pytest.param(1.5, "1.5", "use 1-63", id="float"),
        pytest.param(b"\x00v2", "b'\\x00v2'", "use 1-63", id="blob"),
        pytest.param("x" * 10_000, "x" * 80 + "... (10,000 characters)", "use 1-63", id="10kb"),
        pytest.param("latest", "latest", "'latest' is reserved", id="latest"),
        pytest.param("V2", "V2", "use 1-63", id="upper-case"),
        pytest.param("v2\n", "v2\n", "use 1-63", id="trailing-newline"),
        pytest.param("a" * 64, "a" * 64, "use 1-63", id="64-chars"),
        pytest.param("v2\x1b[31m", "v2\x1b[31m", "use 1-63", id="escape-sequence"),
    ],
)
def test_a_hostile_revision_is_a_problem_and_everyone_else_routes(
    revision: Any, value: str, reason: str
) -> None:
    bad = _replica_row(revision=revision)
    state = _state()
    state = RegistryState.of(
        servers=state.servers, replicas=[*state.replicas, bad], revision=1, committed_at=0.0
    )
    table = to_routing_table(state)
    [good] = table.servers
    assert [e.replica_id for e in good.endpoints] == ["r-good"]
    (problem,) = table.problems
    assert (problem.kind, problem.name, problem.field, problem.value) == (
        "replica",
        "r-bad",
        "revision",
        value,
    )
    assert problem.message.startswith(reason)
    assert len(str(problem)) < 250


def test_an_integer_revision_reads_as_its_digits_and_routes() -> None:
    replica = _replica_row(revision=2)
    assert replica.revision == "2"
    state = RegistryState.of(
        servers=_state().servers, replicas=[replica], revision=1, committed_at=0.0
    )
    table = to_routing_table(state)
    assert table.problems == ()
    assert [e.replica_id for e in table.servers[0].endpoints] == ["r-bad"]


@pytest.mark.parametrize(
    "registered_at",
    ["abc", b"\x00", math.nan, math.inf, -math.inf, "1e999", "9" * 5000, True, [1]],
    ids=repr,
)
def test_a_registration_time_of_any_type_reads_as_unknown(registered_at: Any) -> None:
    replica = _replica_row(revision="v1", registered_at=registered_at)
    assert replica.registered_at == 0.0
    assert replica.revision == "v1"


@pytest.mark.parametrize(
    ("check", "value"),
    [
        pytest.param(lambda v: validate.name("name", v), "echo\n", id="name"),
        pytest.param(lambda v: validate.region("region", v), "us-west\n", id="region"),
        pytest.param(lambda v: validate.revision("revision", v), "v2\n", id="revision"),
        pytest.param(lambda v: validate.host_or_name(v), "xds.local\n", id="host-or-name"),
    ],
)
def test_a_trailing_newline_is_not_part_of_a_valid_name(check: Any, value: str) -> None:
    """``$`` matches before a final newline: ``echo\\n`` passed as a name (a server, a region, a
    revision in a cluster name), and every proxy of its group NACKed the snapshot."""
    with pytest.raises(ValidationError):
        check(value)
    check(value.rstrip("\n"))

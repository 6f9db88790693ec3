"""LoadReport: validation, the TEXT form Envoy 1.40 parses, and the hand-made binary encoding
proven equal to protobuf's own (xds-protos' OrcaLoadReport): the same message when parsed, the
same bytes wherever map order cannot differ."""

from __future__ import annotations

import base64
import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xds.data.orca.v3 import orca_load_report_pb2

from control_plane.orca import (
    BINARY_HEADER,
    HEADER,
    LoadReport,
    Reporter,
    parse_assignments,
)


def proto_of(report: LoadReport) -> orca_load_report_pb2.OrcaLoadReport:
    message = orca_load_report_pb2.OrcaLoadReport()
    for name in ("cpu_utilization", "mem_utilization", "application_utilization", "rps_fractional"):
        if getattr(report, name) is not None:
            setattr(message, name, getattr(report, name))
    if report.eps is not None:
        message.eps = report.eps
    for name in ("named_metrics", "utilization", "request_cost"):
        getattr(message, name).update(getattr(report, name))
    return message


ODD_FLOATS = [0.0, -0.0, 5e-324, sys.float_info.min, 1e-300, 0.1, 1 / 3, 1.0, 1e16, 1e300]
ODD_FLOATS += [sys.float_info.max]


@pytest.mark.parametrize("value", ODD_FLOATS, ids=repr)
def test_binary_equals_protobuf_for_odd_floats(value: float) -> None:
    report = LoadReport(
        cpu_utilization=value,
        rps_fractional=value,
        eps=value,
        named_metrics={"a": value, "z": value},
        request_cost={"c": value},
    )
    expected = proto_of(report).SerializeToString(deterministic=True)
    assert report.to_bytes() == expected
    parsed = orca_load_report_pb2.OrcaLoadReport.FromString(report.to_bytes())
    assert parsed.cpu_utilization == value
    assert dict(parsed.named_metrics) == {"a": value, "z": value}


names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=",:="),
    min_size=1,
    max_size=20,
)
values = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
fractions = st.floats(min_value=0, max_value=1, allow_nan=False)


@given(
    scalars=st.fixed_dictionaries(
        {},
        optional={
            "cpu_utilization": values,
            "mem_utilization": fractions,
            "application_utilization": values,
            "rps_fractional": values,
            "eps": values,
        },
    ),
    named=st.dictionaries(names, values, max_size=20),
    utilization=st.dictionaries(names, fractions, max_size=20),
    cost=st.dictionaries(names, values, max_size=20),
)
def test_binary_equals_protobuf(
    scalars: dict[str, float],
    named: dict[str, float],
    utilization: dict[str, float],
    cost: dict[str, float],
) -> None:
    report = LoadReport(
        **scalars,  # type: ignore[arg-type]
        named_metrics=named,
        utilization=utilization,
        request_cost=cost,
    )
    # Byte for byte where map order cannot differ (upb orders map keys its own way).
    mine = orca_load_report_pb2.OrcaLoadReport.FromString(report.to_bytes())
    assert mine == proto_of(report)
    if max(len(named), len(utilization), len(cost)) <= 1:
        assert report.to_bytes() == proto_of(report).SerializeToString(deterministic=True)
    assert LoadReport.from_mapping(report.to_mapping()) == report


def test_text_form() -> None:
    report = LoadReport(
        application_utilization=0.9,
        rps_fractional=1,
        named_metrics={"kv_cache": 0.5},
        utilization={"gpu": 0.25},
    )
    assert report.to_text() == (
        "TEXT application_utilization=0.9, rps_fractional=1, named_metrics.kv_cache=0.5, "
        "utilization.gpu=0.25"
    )
    assert report.to_header_value() == report.to_text()
    assert base64.b64decode(report.to_header_value(binary=True)) == report.to_bytes()
    assert (HEADER, BINARY_HEADER) == ("endpoint-load-metrics", "endpoint-load-metrics-bin")


def test_text_numbers_round_trip() -> None:
    for value in ODD_FLOATS:
        text = LoadReport(eps=value).to_text()
        assert float(text.removeprefix("TEXT eps=")) == value


def test_text_refuses_request_cost() -> None:
    with pytest.raises(ValueError, match="request_cost"):
        LoadReport(request_cost={"tokens": 10}).to_text()


def test_parse_assignments() -> None:
    report = parse_assignments(["application_utilization=0.9", " named_metrics.kv_cache = 0.5"])
    assert report == LoadReport(application_utilization=0.9, named_metrics={"kv_cache": 0.5})
    assert LoadReport.from_mapping({"named_metrics.a.b": 1}).named_metrics == {"a.b": 1.0}


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["cpu_utilization"], "expected METRIC=VALUE"),
        (["=1"], "expected METRIC=VALUE"),
        (["cpu_utilization=x"], "'x' is not a number"),
        (["cpu=0.5"], "unknown metric 'cpu'"),
        (["named_metrics=0.5"], "unknown metric 'named_metrics'"),
        (["eps=1", "eps=2"], "eps is given twice"),
        (["cpu_utilization=nan"], "cpu_utilization: nan"),
        (["cpu_utilization=inf"], "cpu_utilization: inf"),
        (["eps=-1"], "eps: -1.0 is not a finite number >= 0"),
        (["mem_utilization=1.5"], "mem_utilization: 1.5 is not a fraction"),
        (["utilization.gpu=2"], "utilization.gpu: 2.0 is not a fraction"),
        (["named_metrics.=1"], "named_metrics: name '' is 0 bytes"),
        (["named_metrics.a b=1"], "holds ' '"),
        (["named_metrics.vllm:kv=1"], "holds ':'"),
        (["named_metrics.a,b=1"], "holds ','"),
        (["named_metrics.é=1"], "holds 'é'"),
    ],
    ids=lambda value: str(value)[:30],
)
def test_bad_assignments_name_field_and_value(assignments: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_assignments(assignments)


def test_bounds() -> None:
    LoadReport(named_metrics={f"m{i}": 1 for i in range(64)})
    with pytest.raises(ValueError, match="more than 64 named entries"):
        LoadReport(
            named_metrics={f"m{i}": 1 for i in range(40)},
            utilization={f"u{i}": 1 for i in range(25)},
        )
    LoadReport(named_metrics={"n" * 128: 1})
    with pytest.raises(ValueError, match="is 129 bytes"):
        LoadReport(named_metrics={"n" * 129: 1})
    with pytest.raises(ValueError, match="cpu_utilization: True is not a number"):
        LoadReport(cpu_utilization=True)
    with pytest.raises(ValueError, match="named_metrics: name 1 is not a string"):
        LoadReport(named_metrics={1: 1})  # type: ignore[dict-item]
    worst = LoadReport(
        cpu_utilization=sys.float_info.max,
        named_metrics={f"{i:02}" + "n" * 126: sys.float_info.max for i in range(64)},
    )
    assert len(worst.to_text()) < 11_000
    assert not math.isnan(worst.cpu_utilization or 0)


def test_values_are_frozen_and_hashable() -> None:
    report = LoadReport(named_metrics={"b": 1, "a": 2})
    assert list(report.named_metrics) == ["a", "b"]
    with pytest.raises(TypeError):
        report.named_metrics["c"] = 3  # type: ignore[index]
    assert hash(report) == hash(LoadReport(named_metrics={"a": 2, "b": 1}))
    assert LoadReport().empty
    assert not report.empty


def test_reporter_never_raises_and_counts_failures() -> None:
    def boom() -> LoadReport:
        raise RuntimeError("sensor down")

    reporter = Reporter(boom)
    assert reporter.header() is None
    assert reporter.failures == 1
    assert "sensor down" in reporter.last_error
    garbage = Reporter(lambda: {"cpu_utilization": 0.5})  # type: ignore[arg-type,return-value]
    assert garbage.header() is None
    assert garbage.failures == 1
    cost = Reporter(LoadReport(request_cost={"t": 1}))
    assert cost.header() is None
    assert cost.failures == 1
    assert Reporter(LoadReport(request_cost={"t": 1}), binary=True).header() is not None
    assert Reporter(lambda: None).header() is None
    assert Reporter(LoadReport()).header() is None
    assert Reporter(LoadReport(eps=2)).header() == (HEADER, "TEXT eps=2")
    with pytest.raises(ValueError, match="report: expected a LoadReport or a callable"):
        Reporter(0.5)  # type: ignore[arg-type]

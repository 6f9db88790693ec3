"""A replica that reports garbage never breaks routing: every request is still answered and
the replica keeps a share, through Envoy and in a proxyless gRPC client.

What the clients do with it (Envoy 1.40 and grpcio 1.85, observed here):
- a report Envoy cannot parse (NaN or inf in the TEXT header, an unknown format, bad base64)
  is dropped, as is one with a utilization <= 0 (negative): the replica keeps the median
  (Envoy) or mean (gRPC) weight of the others, an even share here;
- a utilization above 1 (50, inf) only lowers the replica's weight: Envoy's weight is a whole
  number of at least 1, so it still gets a third against a replica at 0.5;
- a NaN rps_fractional gives a weight Envoy floors to 1;
- an enormous named-metric map costs its parsing and nothing else (the replica's headers,
  trailers and messages stay within the transports' own limits: past them the replica's own
  responses fail, not the others').
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from xds.data.orca.v3 import orca_load_report_pb2

from control_plane.registry import Registry
from harness.processes import Envoy, GrpcClient
from harness.waiting import wait_until
from tests.integration.orca_routing.conftest import (
    answered_by,
    ask_http,
    put_server,
    share,
    wait_for_answers,
)
from tests.integration.orca_routing.raw_reporters import RawGrpcEcho, RawHttpEcho, binary

pytestmark = pytest.mark.envoy

FAST = {"blackout_period": "0s", "weight_update_period": "100ms"}
GOOD = ("endpoint-load-metrics", "TEXT application_utilization=0.5, rps_fractional=1")


def report(
    *, utilization: float = 0.5, rps: float = 1.0, named: int = 0
) -> orca_load_report_pb2.OrcaLoadReport:
    found = orca_load_report_pb2.OrcaLoadReport(
        application_utilization=utilization, rps_fractional=rps
    )
    for i in range(named):
        found.named_metrics[f"metric_{i}"] = float(i)
    return found


def text(value: str) -> tuple[str, str]:
    return ("endpoint-load-metrics", value)


def bin_header(found: orca_load_report_pb2.OrcaLoadReport) -> tuple[str, str]:
    return ("endpoint-load-metrics-bin", binary(found))


HTTP_CASES = {
    "nan-text": text("TEXT application_utilization=NaN, rps_fractional=1"),
    "inf-text": text("TEXT application_utilization=inf, rps_fractional=1"),
    "negative": text("TEXT application_utilization=-1, cpu_utilization=-5, rps_fractional=1"),
    "above-1": text("TEXT application_utilization=50, rps_fractional=1"),
    "unknown-format": text("JUNK application_utilization"),
    "unknown-metric": text("TEXT queue=0.1, rps_fractional=1"),
    "nan-binary": bin_header(report(utilization=math.nan)),
    "inf-binary": bin_header(report(utilization=math.inf)),
    "nan-rps": bin_header(report(rps=math.nan)),
    "bad-base64": ("endpoint-load-metrics-bin", "%%%not base64"),
    "huge-map": bin_header(report(named=1000)),  # ~30 KB of header
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_garbage_reports_through_envoy_leave_every_request_answered(
    registry: Registry, envoy: Envoy, stop_after: Callable[[Any], Any], case: str
) -> None:
    host = put_server(registry, case, protocol="http", utilization=FAST)
    for echo in (
        stop_after(RawHttpEcho(name="bad", headers=(HTTP_CASES[case],))),
        stop_after(RawHttpEcho(name="good", headers=(GOOD,))),
    ):
        registry.register_replica(server=case, address=echo.address, region="us-west")
    wait_for_answers(
        lambda: ask_http(envoy, 20, host=host), {"bad", "good"}, what="both replicas answering"
    )
    for _ in range(3):  # across several weight updates
        answers = ask_http(envoy, 200, host=host)
        assert set(answers) == {"bad", "good"}, answers  # every request answered 200
        assert share(answers, "bad") >= 0.25, answers
    assert envoy.alive()


GRPC_BAD = report(utilization=math.nan, rps=-1, named=200)  # ~6 KB: within gRPC's 8 KB


@pytest.mark.parametrize("out_of_band", [False, True], ids=["trailer", "out-of-band"])
def test_garbage_reports_in_a_proxyless_client_leave_every_call_answered(
    registry: Registry,
    grpc_client: Callable[..., GrpcClient],
    stop_after: Callable[[Any], Any],
    out_of_band: bool,
) -> None:
    name = "hostile-px-oob" if out_of_band else "hostile-px"
    utilization: dict[str, Any] = dict(FAST)
    if out_of_band:
        utilization["out_of_band"] = {"period": "100ms"}
    host = put_server(registry, name, protocol="grpc", utilization=utilization)
    huge = report(utilization=-3, rps=math.inf, named=20_000).SerializeToString()  # ~500 KB
    bad = stop_after(
        RawGrpcEcho(
            name="bad",
            trailers=(("endpoint-load-metrics-bin", GRPC_BAD.SerializeToString()),),
            oob=huge,
        )
    )
    good = stop_after(
        RawGrpcEcho(
            name="good",
            trailers=(("endpoint-load-metrics-bin", report().SerializeToString()),),
            oob=report().SerializeToString(),
        )
    )
    for echo in (bad, good):
        registry.register_replica(server=name, address=echo.address, region="us-west")
    client = grpc_client(f"grpc-{name}", host, interval=0.001)
    wait_until(
        lambda: {"bad", "good"} <= set(answered_by(client)), timeout=30, what="both answering"
    )
    mark = len(answered_by(client))
    calls = wait_until(
        lambda: (lambda c: c if len(c) >= 600 else None)(answered_by(client, mark)),
        timeout=60,
        what="600 more calls",
    )
    assert client.errors() == []
    assert set(calls) == {"bad", "good"}
    assert calls.count("bad") / len(calls) >= 0.25

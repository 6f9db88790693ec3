"""The sample replicas report load: ``report=`` on the in-process echoes, and a real
``routeplane samples replica`` process whose ``--report-file`` is rewritten while it serves
(an empty file makes it stop reporting). Bad flags are click errors naming flag and value."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from xds.data.orca.v3 import orca_load_report_pb2

from control_plane.cli import main
from control_plane.dev.samples.grpc_echo import UNARY, GrpcEchoThread
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.orca import LoadReport
from control_plane.orca.grpc import METHOD
from control_plane.registry import open_registry
from harness.waiting import free_port, wait_until


def orca_header(port: int, path: str = "/") -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return {k.lower(): v for k, v in response.getheaders() if k.lower().startswith("endpoint")}
    finally:
        conn.close()


def test_the_http_echo_reports_with_rps_fractional_100_unless_told() -> None:
    echo = EchoThread(name="a", report=LoadReport(application_utilization=0.9))
    told = EchoThread(name="b", report=lambda: LoadReport(eps=1, rps_fractional=7))
    binary = EchoThread(name="c", report=LoadReport(cpu_utilization=0.5), report_binary=True)
    failing = EchoThread(name="d", error_percent=100, report=LoadReport(eps=3))
    try:
        assert orca_header(echo.port) == {
            "endpoint-load-metrics": "TEXT application_utilization=0.9, rps_fractional=100"
        }
        assert orca_header(echo.port, "/stream?chunks=1") == orca_header(echo.port)
        assert orca_header(told.port) == {"endpoint-load-metrics": "TEXT rps_fractional=7, eps=1"}
        value = orca_header(binary.port)["endpoint-load-metrics-bin"]
        decoded = orca_load_report_pb2.OrcaLoadReport.FromString(base64.b64decode(value))
        assert (decoded.cpu_utilization, decoded.rps_fractional) == (0.5, 100)
        assert orca_header(failing.port)["endpoint-load-metrics"].endswith("eps=3")
    finally:
        for server in (echo, told, binary, failing):
            server.stop()


def test_the_grpc_echo_serves_the_out_of_band_stream() -> None:
    echo = GrpcEchoThread(name="g", report=LoadReport(application_utilization=0.25))
    try:
        with grpc.insecure_channel(echo.address) as channel:
            assert channel.unary_unary(UNARY)(b"x", timeout=5) == b"g:x"
            stream = channel.unary_stream(METHOD)(b"", timeout=5)
            first = orca_load_report_pb2.OrcaLoadReport.FromString(next(stream))
            stream.cancel()
        assert (first.application_utilization, first.rps_fractional) == (0.25, 100)
        assert echo.orca_interceptor is not None
        assert echo.orca_interceptor.failures == 0
    finally:
        echo.stop()


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    open_registry(url).put_server(name="echo", hostnames=["echo.local"], protocol="http")
    port, report = free_port(), tmp_path / "load.txt"
    report.write_text("application_utilization=0.9\n")
    argv = [sys.executable, "-c", "from control_plane.cli import main; main()"]
    argv += ["samples", "replica", "--kind", "http", "--name", "r1", "--server", "echo"]
    argv += ["--listen", f"127.0.0.1:{port}", "--region", "us-west", "--registry", url]
    argv += ["--report-file", str(report)]
    log = (tmp_path / "replica.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield port, report
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def answers(port: int) -> dict[str, str] | None:
    try:
        return orca_header(port)
    except OSError:
        return None


def rewrite(path: Path, text: str) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(text)
    os.replace(partial, path)  # whole files only, as a writer should


def test_a_replica_follows_its_report_file_and_stops_reporting_when_it_empties(
    replica: tuple[int, Path],
) -> None:
    port, report = replica
    first = wait_until(lambda: answers(port), timeout=20, what="the replica answers")
    assert first == {
        "endpoint-load-metrics": "TEXT application_utilization=0.9, rps_fractional=100"
    }
    rewrite(report, "# busy now\nnamed_metrics.kv_cache=0.75\nrps_fractional=2\n")
    wait_until(
        lambda: (
            orca_header(port).get("endpoint-load-metrics")
            == "TEXT rps_fractional=2, named_metrics.kv_cache=0.75"
        ),
        timeout=10,
        what="the new report",
    )
    rewrite(report, "")
    wait_until(lambda: orca_header(port) == {}, timeout=10, what="no report")
    rewrite(report, "eps=1\n")
    wait_until(lambda: orca_header(port) != {}, timeout=10, what="a report again")
    rewrite(report, "eps=oops\n")  # a bad file: nothing is sent, the replica keeps serving
    wait_until(lambda: orca_header(port) == {}, timeout=10, what="no report from a bad file")
    rewrite(report, "eps=2\n")
    wait_until(
        lambda: orca_header(port) == {"endpoint-load-metrics": "TEXT rps_fractional=100, eps=2"},
        timeout=10,
        what="the fixed file's report",
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kind", "http", "--report", "cpu_utilization=-1"], "--report 'cpu_utilization=-1'"),
        (["--kind", "http", "--report", "named_metrics.vllm:kv=1"], "holds ':'"),
        (["--kind", "http", "--report", "eps"], "--report 'eps': 'eps': expected METRIC=VALUE"),
        (["--kind", "ws", "--report", "eps=1"], "--kind ws cannot report load"),
        (["--kind", "http", "--report", "eps=1", "--report-file", "f"], "one or the other"),
    ],
    ids=["negative", "colon", "no-value", "ws", "both"],
)
def test_bad_report_flags_are_click_errors(flags: list[str], message: str) -> None:
    common = ["samples", "replica", "--name", "a", "--listen", "127.0.0.1:1", "--server", "s"]
    common += ["--region", "r", "--registry", "sqlite:///nonexistent/never-opened.db"]
    result = CliRunner().invoke(main, [*common, *flags])
    assert result.exit_code == 2
    assert message in result.output

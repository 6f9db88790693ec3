"""The samples a rollout demo needs: the HTTP echo that fails on demand (``--error-percent``,
evenly spread, on a real socket) and the sample autoscaler whose replicas carry a revision
(real replica processes on a real SQLite registry)."""

from __future__ import annotations

import http.client
import itertools
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from control_plane.cli import main
from control_plane.dev.autoscaler import Autoscaler
from control_plane.dev.samples.http_echo import EchoThread, Failures
from control_plane.registry import open_registry
from control_plane.registry.errors import ValidationError
from harness.processes import http_get
from harness.waiting import wait_until


@pytest.mark.parametrize(
    ("percent", "failing"),
    [
        pytest.param(0, [], id="0-none"),
        pytest.param(20, [5, 10, 15, 20], id="20-every-5th"),
        pytest.param(50, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20], id="50-every-2nd"),
        pytest.param(100, list(range(1, 21)), id="100-all"),
        pytest.param(7, [15], id="7-crossing-14.3"),
    ],
)
def test_failures_are_the_requests_whose_count_crosses_a_multiple_of_100_over_p(
    percent: int, failing: list[int]
) -> None:
    failures = Failures(percent)
    assert [n for n in range(1, 21) if failures.next()] == failing


@pytest.mark.parametrize("percent", [1, 7, 20, 33, 99])
def test_any_100_requests_in_a_row_hold_exactly_p_failures(percent: int) -> None:
    failures = Failures(percent)
    picked = [failures.next() for _ in range(1000)]
    assert {sum(picked[i : i + 100]) for i in range(901)} == {percent}
    # evenly spread: never two failures in a row below 50%
    if percent < 50:
        assert not any(a and b for a, b in itertools.pairwise(picked))


@pytest.mark.parametrize("bad", [-1, 101, 2.5, True, "20"], ids=repr)
def test_an_error_percent_out_of_range_or_not_whole_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="error_percent"):
        Failures(bad)  # type: ignore[arg-type]


def test_the_echo_answers_500_to_every_fifth_request_at_20_percent_across_connections() -> None:
    echo = EchoThread(name="a@v3", error_percent=20)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=5)
        statuses = []
        for _ in range(7):  # one keep-alive connection
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read().decode()
            statuses.append(response.status)
            assert response.getheader("X-Replica") == "a@v3"
            assert body == ("a@v3 error\n" if response.status == 500 else "a@v3\n")
        conn.close()
        # New connections count on: the 8th and 9th, then the 10th (a POST) fails...
        statuses += [http_get(f"http://127.0.0.1:{echo.port}/")[0] for _ in range(2)]
        conn = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=5)
        conn.request("POST", "/", body=b"x" * 1000)
        response = conn.getresponse()
        assert response.read() == b"a@v3 error\n"
        statuses.append(response.status)
        # ...and closes its connection (its body was not read), so nothing is misread after.
        assert response.getheader("Connection") == "close"
        conn.close()
        statuses += [http_get(f"http://127.0.0.1:{echo.port}/slow?ms=1")[0] for _ in range(10)]
    finally:
        echo.stop()
    assert [i + 1 for i, s in enumerate(statuses) if s == 500] == [5, 10, 15, 20]
    assert set(statuses) == {200, 500}


def test_a_failed_request_with_a_body_it_cannot_measure_closes_its_connection() -> None:
    echo = EchoThread(name="a", error_percent=100)
    try:
        for headers in ({"Content-Length": "x1"}, {"Transfer-Encoding": "chunked"}):
            conn = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=5)
            conn.putrequest("POST", "/")
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            response = conn.getresponse()
            assert (response.status, response.read()) == (500, b"a error\n")
            assert response.getheader("Connection") == "close"
            conn.close()
    finally:
        echo.stop()


def test_the_echo_without_error_percent_never_fails() -> None:
    echo = EchoThread(name="a")
    try:
        assert {http_get(f"http://127.0.0.1:{echo.port}/")[0] for _ in range(30)} == {200}
    finally:
        echo.stop()


def test_the_replica_command_refuses_error_percent_where_it_cannot_fail_or_out_of_range() -> None:
    common = ["samples", "replica", "--name", "a", "--listen", "127.0.0.1:1", "--server", "s"]
    common += ["--region", "r", "--registry", "sqlite:///nonexistent/never-opened.db"]
    ws = CliRunner().invoke(main, [*common, "--kind", "ws", "--error-percent", "20"])
    assert ws.exit_code == 1
    assert "--error-percent 20: only --kind http can fail on demand" in ws.output
    over = CliRunner().invoke(main, [*common, "--kind", "http", "--error-percent", "101"])
    assert over.exit_code == 2
    assert "'--error-percent'" in over.output
    assert "101" in over.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_autoscalers_replicas_register_and_answer_with_its_revision(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    registry = open_registry(url)
    registry.put_server(name="echo", hostnames=["echo.local"], protocol="http")
    port = _free_port()
    auto = Autoscaler(
        server="echo", region="us-west", ports=[port], registry=url, admin="", revision="v1"
    )
    try:
        assert auto._start() == port
        wait_until(lambda: registry.list_replicas("echo") != [], timeout=20, what="registered")
        [row] = registry.list_replicas("echo")
        assert (row.port, row.revision) == (port, "v1")
        assert http_get(f"http://127.0.0.1:{port}/") == (200, f"echo-auto-{port}@v1\n")
    finally:
        auto.stop_all()
        registry.close()


@pytest.mark.parametrize("bad", ["V1", "latest", "-v", "v" * 64])
def test_the_autoscaler_refuses_a_bad_revision_before_it_starts_anything(bad: str) -> None:
    with pytest.raises(ValidationError, match="--revision"):
        Autoscaler(server="echo", region="r", ports=[1], registry="", admin="", revision=bad)

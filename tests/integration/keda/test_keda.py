"""KEDA's external scaler on a real ``serve --keda-listen``, followed by a KEDA client built
from KEDA's proto (``harness/keda.py``), with real Envoys carrying the requests.

- a request that meets a zero-replica server (a 503 through Envoy) makes ``StreamIsActive``
  say true, on a lone process and under ``--workers 2`` (where the supervisor serves KEDA
  from the group's sums);
- for known loads (slow requests held through Envoy) ceil(GetMetrics / GetMetricSpec's
  target) is ``routeplane load --json``'s desired count;
- an unknown server or missing metadata is an error naming it;
- SIGTERM cuts KEDA's streams at once; with xDS's TLS options the KEDA port is mTLS.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.dev.certs import dev_certs
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.keda.pb import externalscaler_pb2_grpc
from control_plane.registry import Registry, open_registry
from harness.keda import Keda, ref, routed, wait_for_reports_after_now
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, http_get
from harness.waiting import free_port, wait_until

pytestmark = pytest.mark.envoy
GRACE = 5.0  # serve's shutdown grace for xDS (README, "Shutdown")
SCALE = {"autoscaling": {"target_concurrency": 2, "max_replicas": 10, "scale_down_window": "60s"}}


@dataclass
class Setup:
    cp: ControlPlane
    keda: Keda
    registry: Registry
    tmp_path: Path

    def envoy(self, node_id: str = "edge-1") -> Envoy:
        envoy = Envoy.create(self.tmp_path, node_id=node_id, region="us-west", xds=[self.cp.xds])
        envoy.start()
        envoy.wait_live()
        return envoy


def start(tmp_path: Path, *extra: str) -> Iterator[Setup]:
    keda_address = f"127.0.0.1:{free_port()}"
    cp = ControlPlane.create(
        tmp_path,
        extra=["--load-report-interval", "0.5", "--keda-listen", keda_address, *extra],
    )
    cp.start()
    keda: Keda | None = None
    registry: Registry | None = None
    try:
        cp.wait_ready()
        keda = Keda(keda_address)
        registry = open_registry(cp.registry)
        yield Setup(cp=cp, keda=keda, registry=registry, tmp_path=tmp_path)
    finally:
        if registry is not None:
            registry.close()
        if keda is not None:
            keda.close()
        cp.stop()


@pytest.fixture(params=["lone", "workers-2"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    extra = ("--workers", "2") if request.param == "workers-2" else ("--workers", "1")
    yield from start(tmp_path, *extra)


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[Setup]:
    yield from start(tmp_path, "--workers", "1")


def load_row(admin: str, server: str, region: str = "*") -> dict[str, Any] | None:
    done = subprocess.run(
        [ROUTEPLANE, "load", "--json", "--server", server, "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    for row in json.loads(done.stdout):
        if row["region"] == region:
            return dict(row)
    return None


def test_a_request_meeting_a_zero_replica_server_makes_stream_is_active_true(
    setup: Setup,
) -> None:
    setup.registry.put_server(name="api", hostnames=["api.local"], protocol="http", spec=SCALE)
    wait_until(lambda: load_row(setup.cp.admin, "api") is not None, what="api in the load view")
    envoy = setup.envoy()
    follower = setup.keda.follow("api")
    try:
        assert follower.next()[1] is False  # nothing met it yet
        wait_until(lambda: routed(envoy, "api.local"), what="api routed")
        wait_for_reports_after_now(setup.cp.admin)  # Envoy's reports now cover api's cluster
        assert not follower.answers[1:], "active before any request met the server"
        status, body = envoy.get(host="api.local")
        assert status == 503
        assert "has no ready replica" in body
        # That one 503 is the server's first cold start: it wakes the server. (It was lost
        # for ~14% of report intervals before d85bbf8: a count truncated to 0.)
        assert follower.next()[1] is True
        assert setup.keda.is_active("api") is True  # IsActive answers as the stream does
        row = load_row(setup.cp.admin, "api")
        assert row is not None
        assert row["cold_starts"] >= 1
        assert row["desired_replicas"] >= 1
        assert [r for _, r in follower.answers] == [False, True]
    finally:
        follower.close()
        envoy.stop()


def hold(envoy: Envoy, count: int, ms: int) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=envoy.get, kwargs={"path": f"/slow?ms={ms}", "host": "echo.local", "timeout": 30}
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def test_ceil_of_metric_over_target_is_routeplane_loads_desired_count(
    setup: Setup, echo_factory: Callable[[str], EchoThread]
) -> None:
    setup.registry.put_server(name="echo", hostnames=["echo.local"], protocol="http", spec=SCALE)
    setup.registry.register_replica(
        server="echo", address=echo_factory("a").address, region="us-west"
    )
    envoy = setup.envoy()
    threads: list[threading.Thread] = []
    try:
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, what="echo routed")
        for held, expected in ((3, 2), (7, 4), (13, 7)):  # target_concurrency 2
            threads += hold(envoy, held - sum(t.is_alive() for t in threads), 15_000)

            def both(count: int = held) -> tuple[int, int] | None:
                row = load_row(setup.cp.admin, "echo")
                if row is None or row["in_flight"] != count:
                    return None
                return row["desired_replicas"], setup.keda.hpa_desired("echo")

            def agreed(count: int = held) -> tuple[int, int] | None:
                answer = both(count)
                return answer if answer is not None and answer[0] == answer[1] else None

            routeplane, hpa = wait_until(agreed, timeout=15, what=f"{held} in flight")
            assert routeplane == hpa == expected
            # The region's row has no recommendation (the spec lists no regions): an error.
            with pytest.raises(grpc.RpcError) as caught:
                setup.keda.hpa_desired("echo", "us-west")
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        envoy.stop()  # the held requests end with it
        for thread in threads:
            thread.join(timeout=30)


def test_unknown_server_and_missing_metadata_are_errors_naming_them(lone: Setup) -> None:
    stub = lone.keda.stub
    cases = [
        (ref("nope"), grpc.StatusCode.NOT_FOUND, "scalerMetadata server 'nope'"),
        (ref(""), grpc.StatusCode.INVALID_ARGUMENT, "scalerMetadata server is missing"),
    ]
    for request, code, named in cases:
        for call in (stub.IsActive, stub.GetMetricSpec):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=10)
            assert caught.value.code() == code
            assert named in caught.value.details()
        stream = stub.StreamIsActive(request, timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stream))
        assert caught.value.code() == code
        assert named in caught.value.details()
    # The control plane is unharmed.
    assert http_get(f"http://{lone.cp.admin}/readyz")[0] == 200


def test_serve_refuses_a_bad_keda_address(tmp_path: Path) -> None:
    for value, said in (
        ("nope", "invalid --keda-listen 'nope'"),
        ("127.0.0.1:18000", "--keda-listen 127.0.0.1:18000 is the xDS or the admin address"),
    ):
        done = subprocess.run(
            [
                ROUTEPLANE,
                "serve",
                "--registry",
                f"sqlite://{tmp_path / 'r.db'}",
                "--xds-listen",
                "127.0.0.1:18000",
                "--keda-listen",
                value,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1
        assert said in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_keda_port_is_one_line_naming_it(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [
                ROUTEPLANE,
                "serve",
                "--registry",
                f"sqlite://{tmp_path / 'r.db'}",
                "--xds-listen",
                f"127.0.0.1:{free_port()}",
                "--admin-listen",
                f"127.0.0.1:{free_port()}",
                "--keda-listen",
                address,
                "--workers",
                workers,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"error: cannot listen on --keda-listen {address}: the address is taken or not this "
        "machine's"
    )
    assert "Traceback" not in done.stderr


def test_sigterm_cuts_keda_streams_at_once_and_serve_exits_0(lone: Setup) -> None:
    """KEDA's streams never end on their own: shutdown cuts them at its start rather than
    holding it for a grace (their calls are reads KEDA makes again), and serve exits 0."""
    lone.registry.put_server(name="api", hostnames=["api.local"], protocol="http", spec=SCALE)
    wait_until(lambda: load_row(lone.cp.admin, "api") is not None, what="api in the load view")
    follower = lone.keda.follow("api")
    try:
        assert follower.next()[1] is False
        assert lone.cp.process is not None
        sent = time.monotonic()
        lone.cp.process.terminate()
        with pytest.raises(AssertionError, match="stream ended"):
            follower.next(timeout=15)
        cut = time.monotonic() - sent
        assert lone.cp.process.wait(timeout=15) == 0, lone.cp.log()
    finally:
        follower.close()
    assert cut < GRACE, cut  # not held for the xDS grace (it was, at stop(grace))


def test_with_xdss_tls_options_keda_is_mtls_too(tmp_path: Path) -> None:
    """--tls-cert, --tls-key and --client-ca make the KEDA port mTLS with the xDS port's
    certificate: a client with a certificate the client CA signed is answered; one without
    is refused, and a plaintext one gets nothing."""
    certs = tmp_path / "certs"
    dev_certs(certs, clusters=["keda"])
    keda_address = f"127.0.0.1:{free_port()}"
    tls = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server-key.pem")]
    cp = ControlPlane.create(
        tmp_path,
        extra=[*tls, "--client-ca", str(certs / "ca.pem"), "--keda-listen", keda_address],
    )
    cp.start()
    try:
        cp.wait_ready()
        ca = (certs / "ca.pem").read_bytes()
        with_certificate = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(certs / "client-keda-key.pem").read_bytes(),
            certificate_chain=(certs / "client-keda.pem").read_bytes(),
        )
        for credentials, answered in (
            (with_certificate, True),
            (grpc.ssl_channel_credentials(root_certificates=ca), False),
            (None, False),
        ):
            channel = (
                grpc.secure_channel(keda_address, credentials)
                if credentials is not None
                else grpc.insecure_channel(keda_address)
            )
            with channel:
                stub = externalscaler_pb2_grpc.ExternalScalerStub(channel)
                with pytest.raises(grpc.RpcError) as caught:
                    stub.IsActive(ref("nope"), timeout=5)
                # Answered: the scaler's own NOT_FOUND; refused: the handshake fails.
                code = caught.value.code()
                assert (code == grpc.StatusCode.NOT_FOUND) is answered, caught.value.details()
    finally:
        cp.stop()

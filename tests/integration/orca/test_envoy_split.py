"""The reports cross the wire as Envoy 1.40 reads them: two sample replicas reporting
``application_utilization`` 0.9 and 0.1 behind a static Envoy whose clusters use
``client_side_weighted_round_robin`` get ~10% / ~90% of the requests, over HTTP (TEXT header)
and over gRPC (the ``-bin`` trailer, which no Python client can see). A static bootstrap on
purpose: this checks the reporting library and the samples, not routeplane's configuration
(the utilization tests through the control plane do that)."""

from __future__ import annotations

import collections
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from control_plane.dev.samples.grpc_echo import SERVICE, UNARY, GrpcEchoThread
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.orca import LoadReport
from harness.processes import ENVOY, Envoy
from harness.waiting import free_port, wait_until

pytestmark = pytest.mark.envoy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CSWRR = (
    "type.googleapis.com/envoy.extensions.load_balancing_policies."
    "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin"
)


def cluster(name: str, ports: list[int], *, http2: bool) -> str:
    endpoints = ", ".join(
        f"{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}"
        for p in ports
    )
    protocol = (
        """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"""
        if http2
        else ""
    )
    return f"""
  - name: {name}
    type: STATIC{protocol}
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.client_side_weighted_round_robin
          typed_config:
            "@type": {CSWRR}
            blackout_period: 0s
            weight_update_period: 0.1s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{endpoints}]}}]"""


@pytest.fixture
def envoy_split(tmp_path: Path) -> Iterator[Envoy]:
    busy, idle = LoadReport(application_utilization=0.9), LoadReport(application_utilization=0.1)
    replicas: list[EchoThread | GrpcEchoThread] = []
    envoy: Envoy | None = None
    try:
        replicas += [EchoThread(name="busy", report=busy), EchoThread(name="idle", report=idle)]
        replicas += [GrpcEchoThread(name="busy", report=busy)]
        replicas += [GrpcEchoThread(name="idle", report=idle)]
        http_ports, grpc_ports = [r.port for r in replicas[:2]], [r.port for r in replicas[2:]]
        listen, admin = free_port(), free_port()
        bootstrap = f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: orca
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {{match: {{prefix: "/{SERVICE}/"}}, route: {{cluster: grpc}}}}
              - {{match: {{prefix: "/"}}, route: {{cluster: http}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {ROUTER}}}
  clusters:{cluster("http", http_ports, http2=False)}{cluster("grpc", grpc_ports, http2=True)}
"""
        path = tmp_path / "envoy.yaml"
        path.write_text(bootstrap)
        argv = [ENVOY, "-c", str(path), "--disable-hot-restart", "--concurrency", "1"]
        argv += ["--log-level", "warn"]
        envoy = Envoy(
            argv=argv,
            log_path=tmp_path / "envoy.log",
            listen=f"127.0.0.1:{listen}",
            admin=f"127.0.0.1:{admin}",
            node_id="orca-static",
        )
        envoy.start()
        envoy.wait_live()
        yield envoy
    finally:
        if envoy is not None:
            envoy.stop()
        for replica in replicas:
            replica.stop()


def busy_share(call: Callable[[], str], *, requests: int) -> float:
    """The busy replica's share of ``requests`` calls, once Envoy has weighed both replicas
    (until then round robin alternates them: a batch of 20 holds 10 of each)."""
    wait_until(
        lambda: sum(call() == "busy" for _ in range(20)) <= 4,
        timeout=20,
        what="Envoy weighing the replicas by their reports",
    )
    counts = collections.Counter(call() for _ in range(requests))
    assert set(counts) <= {"busy", "idle"}
    return counts["busy"] / requests


def test_envoy_weighs_http_replicas_by_the_text_header(envoy_split: Envoy) -> None:
    def call() -> str:
        with urllib.request.urlopen(f"http://{envoy_split.listen}/", timeout=5) as response:
            return str(response.read().decode().strip())

    assert 0.07 <= busy_share(call, requests=200) <= 0.13


def test_envoy_weighs_grpc_replicas_by_the_trailer(envoy_split: Envoy) -> None:
    with grpc.insecure_channel(envoy_split.listen) as channel:
        unary = channel.unary_unary(UNARY)

        def call() -> str:
            return str(unary(b"x", timeout=5).decode().partition(":")[0])

        assert 0.07 <= busy_share(call, requests=200) <= 0.13

"""Hostile load reporters against a real ``serve``, while a real Envoy carries a known load.

The honest load: one Envoy holds 4 requests open to echo (``/slow``), so echo's in-flight
figure is known to be 4. Each attacker is a real gRPC LRS stream; the known answer must
survive it: a forged report adds at most the documented per-proxy bound, and never replaces or
hides the Envoy's own.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.load_stats.v3 import lrs_pb2
from prometheus_client.parser import text_string_to_metric_families

from control_plane.dev.certs import dev_certs
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.load.intake import MAX_CLUSTER_STATS, MAX_FIRST_BYTES, MAX_REPORT_ENTRIES
from control_plane.load.reports import PER_SERVER
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, http_get
from harness.waiting import wait_until

pytestmark = pytest.mark.envoy
INTERVAL = 0.5
ECHO = "default_echo"  # names.cluster of echo
METHOD = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"


Samples = list[tuple[str, dict[str, str], float]]


def scrape(admin: str) -> Samples:
    """One /metrics scrape: (sample name, labels, value), all from the same tick."""
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(http_get(f"http://{admin}/metrics")[1])
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (``serve`` runs workers:
    every series carries a ``worker`` label)."""
    return sum(
        value
        for sample, found, value in samples
        if sample == name and labels.items() <= found.items()
    )


def echo_load(samples: Samples) -> tuple[float, float]:
    """echo's (in flight, requests/s) in one scrape."""
    return (
        total(samples, "routeplane_server_requests_in_flight", server="echo", region="*"),
        total(samples, "routeplane_server_requests_per_second", server="echo", region="*"),
    )


def counter(admin: str, name: str, **labels: str) -> float:
    return total(scrape(admin), name, **labels)


def report(
    node: str = "",
    *,
    cluster: str = "",
    localities: int = 1,
    in_flight: int = 0,
    issued: int = 0,
    dropped: int = 0,
    clusters: int = 1,
    cluster_name: str = ECHO,
) -> lrs_pb2.LoadStatsRequest:
    request = lrs_pb2.LoadStatsRequest()
    if node:
        request.node.CopyFrom(base_pb2.Node(id=node, cluster=cluster))
    for _ in range(clusters):
        stats = request.cluster_stats.add(cluster_name=cluster_name, total_dropped_requests=dropped)
        stats.load_report_interval.FromSeconds(1)
        for _ in range(localities):
            stats.upstream_locality_stats.add(
                locality=base_pb2.Locality(region="us-west"),
                total_requests_in_progress=in_flight,
                total_issued_requests=issued,
            )
    return request


@dataclass
class Reporter:
    """A hostile LRS client on its own thread: sends ``first``, then ``then`` every ``every``
    seconds until stopped. Its reports are sent as bytes (serialized once)."""

    target: str
    first: lrs_pb2.LoadStatsRequest
    then: lrs_pb2.LoadStatsRequest | None = None
    every: float = INTERVAL
    credentials: grpc.ChannelCredentials | None = None
    answered: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    error: grpc.RpcError | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Reporter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _requests(self) -> Iterator[bytes]:
        yield self.first.SerializeToString()
        then = (self.then or self.first).SerializeToString()
        while not self._stop.wait(self.every):  # pacing the attack, not synchronisation
            yield then

    def _run(self) -> None:
        channel = (
            grpc.secure_channel(self.target, self.credentials)
            if self.credentials is not None
            else grpc.insecure_channel(self.target)
        )
        call = channel.stream_stream(
            METHOD,
            request_serializer=None,
            response_deserializer=lrs_pb2.LoadStatsResponse.FromString,
        )(self._requests())
        try:
            for _ in call:
                self.answered.set()
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()
            channel.close()


@dataclass
class Honest:
    cp: ControlPlane
    envoy: Envoy


def wait_in_flight(cp: ControlPlane, count: int) -> None:
    """Wait for echo's in-flight gauge to read ``count``; a failure says what it read last."""
    seen: list[tuple[float, float]] = []
    try:
        wait_until(
            lambda: seen.append(echo_load(scrape(cp.admin))) or seen[-1][0] == count,
            timeout=30,
            what=f"{count} in flight",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last (in flight, req/s): {seen[-3:]}") from None


def hold(envoy: Envoy, count: int) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=envoy.get,
            kwargs={"path": "/slow?ms=120000", "host": "echo.local", "timeout": 130},
            daemon=True,
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


@pytest.fixture
def honest(tmp_path: Path, echo_factory: Callable[[str], EchoThread]) -> Iterator[Honest]:
    """serve, echo with one replica, and the Envoy edge-1 holding 4 requests to it."""
    cp = ControlPlane.create(
        tmp_path, extra=["--load-report-interval", str(INTERVAL), "--workers", "1"]
    )
    cp.start()
    envoy = Envoy.create(tmp_path, node_id="edge-1", region="us-west", xds=[cp.xds])
    threads: list[threading.Thread] = []
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.put_server(
            name="echo",
            hostnames=["echo.local"],
            protocol="http",
            spec={"autoscaling": {"target_concurrency": 2, "max_replicas": 10}},
        )
        registry.register_replica(
            server="echo", address=echo_factory("a").address, region="us-west"
        )
        registry.close()
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, what="routing")
        threads = hold(envoy, 4)
        wait_in_flight(cp, 4)
        yield Honest(cp=cp, envoy=envoy)
    finally:
        envoy.stop()
        cp.stop()
        for thread in threads:
            thread.join(timeout=30)


def test_one_report_adds_at_most_one_proxys_bound_after_merging_duplicates(
    honest: Honest,
) -> None:
    admin = honest.cp.admin
    # 1,000 copies of one locality at 10^7 in flight each: one 10^10 claim.
    forger = Reporter(
        honest.cp.xds, report("forger", localities=1000, in_flight=10**7, issued=1)
    ).start()
    try:
        expected = 4 + PER_SERVER.in_flight

        def loaded() -> float | None:
            in_flight = echo_load(scrape(admin))[0]
            return in_flight if in_flight > 4 else None

        seen = wait_until(loaded, timeout=15, what="the forged report counted")
        assert seen == expected, f"{seen} in flight; the bound allows {expected}"
        assert counter(admin, "routeplane_load_report_items_ignored_total", reason="clipped") >= 1
    finally:
        forger.stop()
    # The forger's stream ended: the known answer is back.
    wait_until(lambda: echo_load(scrape(admin))[0] == 4, timeout=15, what="back to 4")


def test_a_stream_reporting_under_the_envoys_node_id_cannot_hide_its_load(
    honest: Honest,
) -> None:
    admin = honest.cp.admin
    # The Envoy's own node id and fleet, nothing in flight and a marker rate of 1,000/s.
    impostor = Reporter(honest.cp.xds, report("edge-1", cluster="edge", issued=1000)).start()
    try:

        def attacked() -> tuple[float, float] | None:
            in_flight, rate = echo_load(scrape(admin))
            return (in_flight, rate) if rate >= 500 else None

        in_flight, _ = wait_until(attacked, timeout=15, what="the impostor's report counted")
        assert in_flight == 4, "the impostor's report replaced the Envoy's"
    finally:
        impostor.stop()


def test_a_node_id_connected_as_one_fleet_cannot_report_as_another(honest: Honest) -> None:
    impostor = Reporter(honest.cp.xds, report("edge-1", cluster="apps", issued=1000)).start()
    try:
        assert impostor.ended.wait(15)
        assert impostor.error is not None
        assert impostor.error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'edge-1' is connected over xDS as node cluster(s) ['edge']" in (
            impostor.error.details() or ""
        )
    finally:
        impostor.stop()
    assert echo_load(scrape(honest.cp.admin))[0] == 4


def test_every_bound_applies_to_the_first_report(honest: Honest) -> None:
    admin = honest.cp.admin
    big = Reporter(honest.cp.xds, report("big", clusters=MAX_CLUSTER_STATS + 1, in_flight=9))
    big.start()
    try:
        assert big.ended.wait(30)
        assert big.error is not None
        assert big.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"at most {MAX_CLUSTER_STATS}" in (big.error.details() or "")
    finally:
        big.stop()
    assert echo_load(scrape(admin))[0] == 4


def empty_localities(node: str, count: int) -> lrs_pb2.LoadStatsRequest:
    """One cluster with ``count`` empty locality stats (2 bytes each: cheap to send, costly to
    parse and hold)."""
    request = report(node, localities=0)
    for _ in range(count):
        request.cluster_stats[0].upstream_locality_stats.add()
    return request


def test_a_first_request_bigger_than_a_node_is_refused_before_it_is_parsed(
    honest: Honest,
) -> None:
    """A first request is parsed before the loop budget is asked (the node must be known) and
    used to be held for the stream's life: ~2M empty localities held ~270 MB per stream."""
    first = empty_localities("fat", MAX_FIRST_BYTES // 2)
    assert first.ByteSize() > MAX_FIRST_BYTES
    fat = Reporter(honest.cp.xds, first).start()
    try:
        assert fat.ended.wait(30)
        assert fat.error is not None
        assert fat.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"at most {MAX_FIRST_BYTES:,}" in (fat.error.details() or "")
    finally:
        fat.stop()
    assert echo_load(scrape(honest.cp.admin))[0] == 4


def test_a_report_of_too_many_locality_stats_in_one_cluster_is_refused(honest: Honest) -> None:
    """The cluster bound alone let one cluster carry millions of entries."""
    many = Reporter(
        honest.cp.xds, report("many"), empty_localities("many", MAX_REPORT_ENTRIES + 1)
    ).start()
    try:
        assert many.ended.wait(30)
        assert many.error is not None
        assert many.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"more than {MAX_REPORT_ENTRIES:,} locality" in (many.error.details() or "")
    finally:
        many.stop()
    assert echo_load(scrape(honest.cp.admin))[0] == 4


def test_forged_drops_are_no_cold_starts_for_a_server_with_replicas(honest: Honest) -> None:
    admin = honest.cp.admin
    dropper = Reporter(honest.cp.xds, report("dropper", dropped=3 * 10**11, issued=1000)).start()
    try:
        wait_until(lambda: echo_load(scrape(admin))[1] >= 500, timeout=15, what="the drops counted")
        samples = scrape(admin)
        assert total(samples, "routeplane_cold_starts_total", server="echo") == 0
        assert echo_load(samples)[0] == 4
    finally:
        dropper.stop()


def flood_report(node: str) -> lrs_pb2.LoadStatsRequest:
    """About 2.6 MB: the most clusters a report may name, each with 20 localities in a region
    echo does not have (ignored, so the known answer stays 4)."""
    request = report(node, clusters=MAX_CLUSTER_STATS, localities=0)
    for stats in request.cluster_stats:
        for _ in range(20):
            stats.upstream_locality_stats.add(
                locality=base_pb2.Locality(region="mars"), total_requests_in_progress=1
            )
    return request


def test_big_reports_from_many_streams_leave_the_loop_answering_and_the_known_load(
    honest: Honest,
) -> None:
    admin = honest.cp.admin
    dropped_before = counter(
        admin, "routeplane_load_reports_rejected_total", reason="busy"
    ) + counter(admin, "routeplane_load_reports_rejected_total", reason="rate")
    flood = flood_report("flood")
    assert len(flood.SerializeToString()) > 2_500_000
    reporters = [
        Reporter(honest.cp.xds, report(f"flood-{i}"), then=flood, every=0.26) for i in range(20)
    ]
    started = time.monotonic()
    for reporter in reporters:
        reporter.start()
    try:
        answers = []
        while time.monotonic() - started < 8.0:  # the flood's length, not a wait for a state
            answers.append(http_get(f"http://{admin}/healthz")[0])
        # The loop kept answering: every /healthz within the client's 5 s timeout.
        assert set(answers) == {200}, answers
        samples = scrape(admin)
        assert echo_load(samples)[0] == 4  # the Envoy's report in force never went stale
        assert all(reporter.error is None for reporter in reporters)
    finally:
        for reporter in reporters:
            reporter.stop()
    elapsed = time.monotonic() - started
    dropped = total(samples, "routeplane_load_reports_rejected_total", reason="busy") + total(
        samples, "routeplane_load_reports_rejected_total", reason="rate"
    )
    assert dropped > dropped_before  # reports past the stream's rate or the budget, unparsed
    assert total(samples, "routeplane_load_report_items_ignored_total", reason="localities") > 0
    # Logged at most once a second per reason, however many reports ignored something or
    # were dropped.
    log = honest.cp.log().splitlines()
    for event, reason in [
        ("load_report_items_ignored", "localities"),
        ("load_report_dropped", "busy"),
    ]:
        lines = [line for line in log if f'"{event}"' in line and f'"{reason}"' in line]
        assert 1 <= len(lines) <= elapsed + 1, (event, len(lines))


def test_new_load_report_streams_share_the_xds_admission(tmp_path: Path) -> None:
    cp = ControlPlane.create(tmp_path, extra=["--workers", "1", "--new-streams-per-second", "1"])
    cp.start()
    reporters: list[Reporter] = []
    try:
        cp.wait_ready()
        reporters = [Reporter(cp.xds, report(f"p-{i}", issued=1)).start() for i in range(5)]
        wait_until(
            lambda: all(r.answered.is_set() or r.ended.is_set() for r in reporters),
            what="every stream answered or refused",
        )
        refused = [r.error for r in reporters if r.error is not None]
        assert refused, "no stream was refused"
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "retry with backoff" in (error.details() or "")
        assert counter(cp.admin, "routeplane_load_reports_rejected_total", reason="admission") >= 1
    finally:
        for reporter in reporters:
            reporter.stop()
        cp.stop()


def test_under_mtls_a_certificate_of_one_fleet_cannot_report_for_another_fleets_node(
    tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    certs = tmp_path / "certs"
    dev_certs(certs, clusters=["edge", "apps"])
    tls = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server-key.pem")]
    cp = ControlPlane.create(
        tmp_path,
        extra=[
            *tls,
            "--client-ca",
            str(certs / "ca.pem"),
            "--load-report-interval",
            str(INTERVAL),
            "--workers",
            "1",
        ],
    )
    cp.start()
    envoy = Envoy.create(tmp_path, node_id="tls-edge", region="us-west", xds=[cp.xds])
    # The Envoy of fleet edge connects with edge's certificate.
    envoy.argv[envoy.argv.index("-c") + 1] = str(tmp_path / "tls-edge-mtls.yaml")
    threads: list[threading.Thread] = []
    impostors: list[Reporter] = []
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.put_server(name="echo", hostnames=["echo.local"], protocol="http")
        registry.register_replica(
            server="echo", address=echo_factory("a").address, region="us-west"
        )
        registry.close()
        bootstrap = subprocess.run(
            [
                ROUTEPLANE,
                "bootstrap",
                "--node-id",
                "tls-edge",
                "--cluster",
                "edge",
                "--region",
                "us-west",
                "--xds",
                cp.xds,
                "--listen",
                envoy.listen,
                "--admin",
                envoy.admin,
                "--tls-cert",
                str(certs / "client-edge.pem"),
                "--tls-key",
                str(certs / "client-edge-key.pem"),
                "--ca",
                str(certs / "ca.pem"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (tmp_path / "tls-edge-mtls.yaml").write_text(bootstrap)
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, what="routing over mTLS")
        threads = hold(envoy, 4)
        wait_in_flight(cp, 4)
        ca = (certs / "ca.pem").read_bytes()
        apps = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(certs / "client-apps-key.pem").read_bytes(),
            certificate_chain=(certs / "client-apps.pem").read_bytes(),
        )
        # The apps certificate, as the edge Envoy's node: as fleet apps (its own), then as edge.
        for cluster, refusal in [
            ("apps", "'tls-edge' is connected over xDS as node cluster(s) ['edge'], not 'apps'"),
            ("edge", "allows node cluster(s) ['apps'], not 'edge'"),
        ]:
            impostor = Reporter(
                cp.xds, report("tls-edge", cluster=cluster, issued=1000), credentials=apps
            )
            impostors.append(impostor.start())
            assert impostor.ended.wait(15)
            assert impostor.error is not None, f"a stream as {cluster} was let in"
            assert impostor.error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refusal in (impostor.error.details() or "")
        assert echo_load(scrape(cp.admin))[0] == 4
        assert counter(cp.admin, "routeplane_load_reports_rejected_total", reason="identity") == 2
    finally:
        for impostor in impostors:
            impostor.stop()
        envoy.stop()
        cp.stop()
        for thread in threads:
            thread.join(timeout=30)

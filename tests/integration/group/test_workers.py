"""``serve --workers 2``: real worker processes sharing one xDS port, real gRPC streams.

A stream lands on whichever worker the kernel picks (SO_REUSEPORT); each worker names itself in
``control_plane.identifier`` (``.../w0``, ``.../w1``), so a client reconnects until it reaches
the worker it wants. A channel is one connection, so its LRS stream reaches the same worker as
its ADS stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, http_get
from harness.waiting import free_port, wait_until

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TIMEOUT = 10
ATTEMPTS = 60  # fresh connections tried to reach a given worker (each lands on either of 2)
GRACE = 5.0  # serve's shutdown grace (ServeConfig.grace_seconds)


@dataclass
class Session:
    """One delta ADS stream on its own connection, CDS (wildcard) then EDS of those clusters."""

    xds: str
    node_id: str
    initial: dict[str, dict[str, str]] = field(default_factory=dict)
    channel: grpc.Channel | None = None
    requests: queue.Queue[Any] = field(default_factory=queue.Queue)
    responses: Iterator[Any] | None = None
    identifier: str = ""
    received: dict[str, dict[str, str]] = field(default_factory=dict)

    def _request(self, type_url: str, **fields: Any) -> Any:
        return discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            node=base_pb2.Node(
                id=self.node_id,
                cluster="edge",
                locality=base_pb2.Locality(region="us-west"),
            ),
            initial_resource_versions=self.initial.get(type_url, {}),
            **fields,
        )

    def _next(self) -> Any:
        assert self.responses is not None
        response = next(self.responses)
        self.identifier = response.control_plane.identifier
        self.received.setdefault(response.type_url, {}).update(
            {r.name: r.version for r in response.resources}
        )
        self.requests.put(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=response.type_url, response_nonce=response.nonce
            )
        )
        return response

    def open(self) -> tuple[Any, Any]:
        """Connect and subscribe; the first CDS and EDS responses."""
        # Its own connection: channels to one target otherwise share one.
        self.channel = grpc.insecure_channel(
            self.xds, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.responses = stub.DeltaAggregatedResources(iter(self.requests.get, None), timeout=60)
        self.requests.put(self._request(CDS))
        clusters = self._next()
        names = sorted(self.initial.get(CDS, {})) or [r.name for r in clusters.resources]
        self.requests.put(self._request(EDS, resource_names_subscribe=names))
        endpoints = self._next()
        return clusters, endpoints

    def close(self) -> None:
        self.requests.put(None)
        if self.channel is not None:
            self.channel.close()


def session_on(xds: str, node_id: str, *, not_on: str = "", **kwargs: Any) -> Session:
    """A session on a worker whose identifier is not ``not_on`` (any worker if empty)."""
    for _ in range(ATTEMPTS):
        session = Session(xds=xds, node_id=node_id, **kwargs)
        session.open()
        if session.identifier != not_on:
            return session
        session.close()
    raise AssertionError(f"{ATTEMPTS} connections all reached {not_on}")


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ControlPlane]:
    registry_url = f"sqlite://{tmp_path / 'registry.db'}"
    registry = open_registry(registry_url)
    registry.create_server(
        name="echo",
        hostnames=["echo.local"],
        protocol="http",
        spec={"autoscaling": {"target_concurrency": 1, "max_replicas": 20}},
    )
    registry.register_replica(server="echo", address=f"127.0.0.1:{free_port()}", region="us-west")
    registry.close()
    cp = ControlPlane.create(
        tmp_path,
        registry=registry_url,
        extra=["--workers", "2", "--load-report-interval", "0.5"],
    )
    cp.start()
    try:
        cp.wait_ready()
        yield cp
    finally:
        cp.stop()


def test_a_proxy_that_reconnects_to_another_worker_gets_nothing_it_has(
    group: ControlPlane,
) -> None:
    first = session_on(group.xds, "edge-1")
    assert first.received[CDS]  # the first worker sent everything
    assert first.received[EDS]
    first.close()
    again = session_on(group.xds, "edge-1", not_on=first.identifier, initial=first.received)
    assert again.identifier.rsplit("/", 1)[0] == first.identifier.rsplit("/", 1)[0]
    # The other worker answered both subscriptions, with no resource.
    assert again.received == {CDS: {}, EDS: {}}
    again.close()


def cli(*args: str) -> str:
    """A ``routeplane`` command's output; it must succeed."""
    done = subprocess.run(
        [ROUTEPLANE, *args], capture_output=True, text=True, check=False, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def proxies(admin: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(cli("proxies", "--admin", admin, "--json"))
    return result


def workers_of(admin: str, nodes: set[str]) -> dict[str, str] | None:
    """Node id -> the worker serving it, once every one of ``nodes`` is listed."""
    listed = {p["node_id"]: p.get("worker", "") for p in proxies(admin)}
    return listed if nodes <= listed.keys() else None


def load_total(admin: str) -> dict[str, Any] | None:
    for row in json.loads(cli("load", "--admin", admin, "--json")):
        if row["server"] == "echo" and row["region"] == "*":
            return dict(row)
    return None


def report(node_id: str, cluster: str, in_flight: int, done: threading.Event) -> Iterator[Any]:
    """An LRS client's requests: the node, then the same load every half second until done."""
    yield lrs_pb2.LoadStatsRequest(node=base_pb2.Node(id=node_id, cluster="edge"))
    while not done.is_set():
        request = lrs_pb2.LoadStatsRequest()
        stats = request.cluster_stats.add(cluster_name=cluster)
        stats.load_report_interval.FromMilliseconds(500)
        stats.upstream_locality_stats.add(
            locality=base_pb2.Locality(region="us-west"), total_requests_in_progress=in_flight
        )
        yield request
        done.wait(0.5)  # the report interval: pacing, not synchronisation


def test_the_admin_address_shows_the_whole_group(group: ControlPlane) -> None:
    a = session_on(group.xds, "edge-a")
    b = session_on(group.xds, "edge-b", not_on=a.identifier)
    [cluster] = a.received[CDS]
    loads = []
    done = threading.Event()
    try:
        listed = wait_until(
            lambda: workers_of(group.admin, {"edge-a", "edge-b"}),
            what="both workers' streams in `routeplane proxies`",
        )
        assert listed is not None
        assert sorted(listed.values()) == ["0", "1"]
        assert "WORKER" in cli("proxies", "--admin", group.admin)
        status, text = http_get(f"http://{group.admin}/metrics")
        assert status == 200
        connected = [
            line for line in text.splitlines() if line.startswith("routeplane_connected_proxies{")
        ]
        assert any('worker="0"' in line for line in connected), connected
        assert any('worker="1"' in line for line in connected), connected
        assert text.count("# TYPE routeplane_connected_proxies gauge") == 1
        assert 'routeplane_worker_up{worker="1"} 1.0' in text
        # CSDS on the xDS port answers for the group whichever worker the call lands on (each
        # session's channel is on its own worker), and so does the admin address.
        with grpc.insecure_channel(group.admin) as admin_channel:
            for channel in (a.channel, b.channel, admin_channel):
                assert channel is not None
                status_of = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
                answer = status_of.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=15)
                assert [c.node.id for c in answer.config] == ["edge-a", "edge-b"]
                only_b = status_of.FetchClientStatus(
                    csds_pb2.ClientStatusRequest(
                        node_matchers=[{"node_id": {"exact": "edge-b"}}],
                        exclude_resource_contents=True,
                    ),
                    timeout=15,
                )
                [config] = only_b.config
                assert config.generic_xds_configs
                assert all(not e.HasField("xds_config") for e in config.generic_xds_configs)
        # A node's snapshot comes from whichever worker serves it (the other says NOT_FOUND).
        for node_id in ("edge-a", "edge-b"):
            assert cluster in cli("snapshot", "show", "--admin", group.admin, "--node", node_id)
        # Each worker hears only its own proxies' load: 3 in flight on one, 4 on the other.
        for session, in_flight in ((a, 3), (b, 4)):
            assert session.channel is not None
            stub = lrs_pb2_grpc.LoadReportingServiceStub(session.channel)
            call = stub.StreamLoadStats(
                report(session.node_id, cluster, in_flight, done), timeout=60
            )
            next(call)
            loads.append(call)
        total = wait_until(
            lambda: (row := load_total(group.admin)) and row["in_flight"] == 7 and row,
            what="load summed over both workers",
        )
        # Recomputed from the sum (target concurrency 1): no single worker would say 7.
        wait_until(
            lambda: (load_total(group.admin) or {}).get("desired_replicas") == 7,
            what="desired replicas from the summed load",
        )
        assert total["ready_replicas"] == 1
        # /metrics has the group's load, as `routeplane load` shows it: one series per row,
        # from the sums (no worker label), not each worker's share.
        _, text = http_get(f"http://{group.admin}/metrics")
        assert 'routeplane_server_requests_in_flight{region="*",server="echo"} 7.0' in text
        assert 'routeplane_server_desired_replicas{region="*",server="echo"} 7.0' in text
        assert text.count("# TYPE routeplane_server_desired_replicas gauge") == 1
    finally:
        done.set()
        for call in loads:
            call.cancel()
        a.close()
        b.close()


def children_running(cp: ControlPlane, module: bytes) -> list[int]:
    """The supervisor's children running ``python -m module``."""
    children = Path(f"/proc/{cp.pid}/task/{cp.pid}/children").read_text().split()
    found = []
    for pid in children:
        with contextlib.suppress(OSError):
            if module in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(int(pid))
    return found


def worker_pids(cp: ControlPlane) -> list[int]:
    return children_running(cp, b"control_plane.group.worker")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_sigterm_to_the_supervisor_stops_every_worker(group: ControlPlane) -> None:
    pids = worker_pids(group)
    assert len(pids) == 2
    watcher = children_running(group, b"control_plane.group.watcher")
    assert len(watcher) == 1  # the host's one registry watch
    pids += watcher
    held = session_on(group.xds, "edge-held")
    assert group.process is not None
    group.process.send_signal(signal.SIGTERM)
    # Within serve's bound: the grace, plus the margin before the supervisor kills.
    assert group.process.wait(timeout=GRACE + 5) == 0
    assert not [pid for pid in pids if alive(pid)]
    held.close()
    assert "worker_killed" not in group.log()


def test_a_worker_that_dies_stops_the_group_with_an_error(group: ControlPlane) -> None:
    pids = worker_pids(group)
    os.kill(pids[0], signal.SIGKILL)
    assert group.process is not None
    assert group.process.wait(timeout=GRACE + 5) == 1
    assert not [pid for pid in pids if alive(pid)]
    assert "worker_exited" in group.log()


def test_a_taken_xds_port_is_refused_before_any_worker_starts(
    tmp_path: Path, group: ControlPlane
) -> None:
    other = subprocess.run(
        [
            ROUTEPLANE,
            "serve",
            "--registry",
            group.registry,
            "--xds-listen",
            group.xds,
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert other.returncode != 0
    assert f"cannot listen on --xds-listen {group.xds}" in other.stderr


def test_workers_stop_themselves_when_the_supervisor_is_killed(group: ControlPlane) -> None:
    pids = worker_pids(group) + children_running(group, b"control_plane.group.watcher")
    held = session_on(group.xds, "edge-held")  # a stream that would keep a drain going
    assert group.process is not None
    group.process.kill()  # SIGKILL: no chance to stop anyone
    group.process.wait(timeout=TIMEOUT)
    # The README says within a second; 1.5 s for a busy machine.
    wait_until(
        lambda: not [pid for pid in pids if alive(pid)],
        timeout=1.5,
        what="orphaned workers to stop",
    )
    held.close()
    assert "supervisor_gone" in group.log()


def started_pids(cp: ControlPlane) -> list[int]:
    """The workers' pids in index order, from the supervisor's ``workers_started``."""
    for line in cp.log().splitlines():
        if '"workers_started"' in line:
            return [int(pid) for pid in json.loads(line)["pids"]]
    raise AssertionError(f"no workers_started in the log:\n{cp.log()}")


def test_a_hung_worker_is_named_and_killed_2_s_after_the_grace(group: ControlPlane) -> None:
    held = session_on(group.xds, "edge-held")
    answering = int(held.identifier.rsplit("/w", 1)[1])
    pids = started_pids(group)
    silent = 1 - answering
    os.kill(pids[silent], signal.SIGSTOP)
    try:
        named = f"worker {silent} (pid {pids[silent]}, admin 127.0.0.1:"
        _, reason = wait_until(
            lambda: (answer := http_get(f"http://{group.admin}/readyz"))[0] == 503 and answer,
            timeout=TIMEOUT,
            what="/readyz to say the stopped worker does not answer",
        )
        assert named in reason, reason
        assert "did not answer" in reason, reason
        listed = subprocess.run(
            [ROUTEPLANE, "proxies", "--admin", group.admin],
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT + 5,
        )
        assert listed.returncode == 0, listed.stderr
        assert "edge-held" in listed.stdout  # the answering worker's proxy
        assert f"not listed: the proxies of {named}" in listed.stderr
        # SIGTERM: the stopped worker cannot drain; the supervisor kills it 2 s after the grace.
        assert group.process is not None
        sent = time.monotonic()
        group.process.send_signal(signal.SIGTERM)
        assert group.process.wait(timeout=GRACE + 2 + TIMEOUT) == 0
        waited = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[silent], signal.SIGCONT)
        held.close()
    assert not alive(pids[silent])
    killed = [json.loads(line) for line in group.log().splitlines() if '"worker_killed"' in line]
    assert [(k["pid"], k["after_seconds"]) for k in killed] == [(pids[silent], GRACE + 2)]
    assert waited >= GRACE + 2 - 0.5, waited  # not before: the answering worker drained


@pytest.mark.parametrize("workers", ["-1", "257"])
def test_a_worker_count_out_of_range_is_refused_with_the_flag_named(
    tmp_path: Path, workers: str
) -> None:
    done = subprocess.run(
        [
            ROUTEPLANE,
            "serve",
            "--registry",
            f"sqlite://{tmp_path / 'registry.db'}",
            "--xds-listen",
            f"127.0.0.1:{free_port()}",
            "--workers",
            workers,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"invalid --workers {workers}" in done.stderr


def test_with_a_token_the_group_and_its_workers_need_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    cp = ControlPlane.create(
        tmp_path, extra=["--workers", "2", "--admin-token-file", str(token_file)]
    )
    cp.start()
    try:
        cp.wait_ready()  # /readyz stays open, and the supervisor reached both workers
        assert http_get(f"http://{cp.admin}/metrics")[0] == 401
        denied = subprocess.run(
            [ROUTEPLANE, "proxies", "--admin", cp.admin],
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT,
            env={k: v for k, v in os.environ.items() if k != "ROUTEPLANE_ADMIN_TOKEN"},
        )
        assert denied.returncode == 1
        assert "admin token" in denied.stderr
        allowed = subprocess.run(
            [ROUTEPLANE, "proxies", "--admin", cp.admin],
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT,
            env={**os.environ, "ROUTEPLANE_ADMIN_TOKEN": "s3cret"},
        )
        assert allowed.returncode == 0, allowed.stderr  # the supervisor's calls carry it too
        request = urllib.request.Request(
            f"http://{cp.admin}/metrics", headers={"Authorization": "Bearer s3cret"}
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            text = response.read().decode()
        assert 'routeplane_worker_up{worker="0"} 1.0' in text
        assert 'routeplane_worker_up{worker="1"} 1.0' in text
        # CSDS: the admin address wants the token; on the xDS port a worker asks its siblings
        # with the token it was given.
        with grpc.insecure_channel(cp.admin) as admin_channel:
            status_of = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(admin_channel)
            with pytest.raises(grpc.RpcError) as refused:
                status_of.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=15)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            status_of.FetchClientStatus(
                csds_pb2.ClientStatusRequest(),
                timeout=15,
                metadata=(("authorization", "Bearer s3cret"),),
            )
        with grpc.insecure_channel(cp.xds) as xds_channel:
            # Without mTLS, CSDS on the xDS port wants the admin token too, when one is set.
            status_of = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(xds_channel)
            with pytest.raises(grpc.RpcError) as refused:
                status_of.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=15)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            status_of.FetchClientStatus(
                csds_pb2.ClientStatusRequest(),
                timeout=15,
                metadata=(("authorization", "Bearer s3cret"),),
            )
    finally:
        cp.stop()


def test_a_cold_start_reaches_the_groups_load_view_without_waiting_a_tick(
    tmp_path: Path,
) -> None:
    """The supervisor follows every worker's WatchLoad: a cold start one worker heard shows in
    the group's view at once, not at the group's next half-interval tick (15 s here)."""
    registry_url = f"sqlite://{tmp_path / 'registry.db'}"
    registry = open_registry(registry_url)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.close()  # no replica: the cluster drops every request as a cold start
    cp = ControlPlane.create(
        tmp_path, registry=registry_url, extra=["--workers", "2", "--load-report-interval", "30"]
    )
    cp.start()
    session = None
    try:
        cp.wait_ready()
        cli("load", "--admin", cp.admin, "--json")  # the group's view exists from here on
        session = session_on(cp.xds, "edge-cold")
        [cluster] = session.received[CDS]

        def drops() -> Iterator[Any]:
            yield lrs_pb2.LoadStatsRequest(node=base_pb2.Node(id="edge-cold", cluster="edge"))
            request = lrs_pb2.LoadStatsRequest()
            stats = request.cluster_stats.add(cluster_name=cluster, total_dropped_requests=3)
            stats.load_report_interval.FromSeconds(30)
            yield request

        assert session.channel is not None
        call = lrs_pb2_grpc.LoadReportingServiceStub(session.channel).StreamLoadStats(
            drops(), timeout=60
        )
        next(call)
        try:
            # Well inside the 15 s between the group's own ticks.
            wait_until(
                lambda: (load_total(cp.admin) or {}).get("cold_starts") == 3,
                timeout=8,
                what="the cold start in the group's load view",
            )
        finally:
            call.cancel()
    finally:
        if session is not None:
            session.close()
        cp.stop()

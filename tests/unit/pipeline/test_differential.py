"""Differential tests: the incremental pipeline equals a rebuild from scratch.

Hypothesis drives random sequences of registry edits (servers created, updated, deleted;
replicas registered, made ready, drained, deregistered, moved, reweighted; malformed rows
appearing and disappearing; specs changed) and random sets of wanted node groups. After every
step, one long-lived :class:`Pipeline` must produce exactly what a fresh one builds from the same
state, resource by resource (bytes and versions), and each snapshot's ``changed`` must be the
exact difference from its parent. A simulated proxy fed every snapshot in turn, over SotW and
delta, must end holding exactly what a proxy that connects at the end receives; a simulated
gRPC client (named LDS, then the clusters its routes name) holds exactly what it asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.pipeline import Pipeline, Step
from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.routing import to_routing_table
from control_plane.xds.delta import DeltaStream
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE
from control_plane.xds.snapshot import Snapshot, eds_name, rds_names
from control_plane.xds.sotw import SotwStream

# Small pools, so edits collide: the same server edited twice, a hostname claimed by two.
SERVER_NAMES = ["echo", "api", "chat", "echo", "api", "chat", "Bad_Name"]
HOSTNAMES = ["echo.local", "api.local", "chat.local", "shared.local", "echo.local", "bad host!"]
PROTOCOLS = ["http", "http", "http", "grpc", "http2", "ftp"]
WORKSPACES = ["default", "default", "team-a"]
SPLIT_90_10 = [
    {"revision": "v1", "percent": 90},
    {"revision": "v2", "percent": 10, "tag": "canary"},
    {"revision": "latest", "percent": 0, "tag": "next"},
]
SPECS = [
    "{}",
    json.dumps({"retries": 3}),
    json.dumps({"path_prefix": "/v1"}),
    json.dumps({"regions": ["us-west"]}),
    json.dumps({"failover": "local_only"}),
    json.dumps({"failover": "local_only", "retries": 1}),
    json.dumps({"load_balancing": {"consistent_hash": {"header": "x-session"}}}),
    json.dumps({"timeouts": {"request": "5s"}}),
    json.dumps({"cold_start": {"mode": "hold", "timeout": "5s"}}),
    json.dumps({"cold_start": {"mode": "hold"}, "failover": "local_only"}),
    "{}",
    "{}",
    # Traffic splits (issue 26): named revisions, latest, tags, affinity, hold mode.
    json.dumps({"traffic": SPLIT_90_10}),
    json.dumps({"traffic": [{"revision": "latest", "percent": 100, "tag": "next"}]}),
    json.dumps(
        {
            "traffic": [{"revision": "v1", "percent": 50}, {"revision": "v3", "percent": 50}],
            "load_balancing": {"consistent_hash": {"header": "x-session"}},
        }
    ),
    json.dumps({"traffic": SPLIT_90_10, "cold_start": {"mode": "hold"}}),
    json.dumps({"traffic": [{"revision": "v1", "percent": 99}]}),  # malformed: not 100
    json.dumps({"retries": -1}),  # malformed
    "not json",  # malformed
]
REPLICA_IDS = [f"r{i}" for i in range(8)]
HOSTS = ["127.0.0.1", "127.0.0.2", "::1", "127.0.0.3", "127.0.0.1", "localhost", ""]
PORTS = [8081, 8082, 9000, 8083, 8084, 0, 70_000]
REGIONS = ["us-west", "us-east", "us-west", "us-east", ""]
ZONES = ["", "a", "b"]
WEIGHTS = [100, 1, 50, 100, 7, 0, -3]
REVISIONS = ["", "", "v1", "v2", "v1", "v3", "Bad!"]
REGISTERED = [0.0, 10.0, 20.0, 10.0]
STATES = ["READY", "READY", "READY", "DRAINING", "DRAINING", "STARTING", "GONE"]
GROUPS = [
    NodeGroup(cluster="edge", region="us-west"),
    NodeGroup(cluster="edge", region="us-west", zone="a"),
    NodeGroup(cluster="other", region="us-west"),  # same view as the first: shares it
    NodeGroup(cluster="edge", region="us-east", listen="127.0.0.1:10001"),
    NodeGroup(cluster="edge", region="", listen="[::1]:10002"),
    NodeGroup(cluster="edge", region="us-west", listen="127.0.0.1:notaport"),  # cannot build
    NodeGroup(cluster="apps", region="us-west", listen="", kind="grpc"),  # gRPC clients
    NodeGroup(cluster="apps", region="us-east", zone="a", listen="", kind="grpc"),
]
WATCHED = GROUPS[0]
WATCHED_GRPC = GROUPS[6]
# Every sequence starts from a live registry, so edits change what is routed.
SEED_SERVERS = {
    name: Server(name=name, hostnames=(f"{name}.local",), protocol="http")
    for name in ("echo", "api", "chat")
}
SEED_REPLICAS = {
    rid: Replica(
        id=rid,
        server=("echo", "api", "chat")[i % 3],
        host="127.0.0.1",
        port=8081 + i,
        region=("us-west", "us-east")[i % 2],
        zone=("a", "b", "")[i % 3],
    )
    for i, rid in enumerate(REPLICA_IDS[:6])
}  # the group the simulated proxies belong to: always wanted

put_server = st.builds(
    lambda name, hosts, protocol, workspace, spec: (
        "put_server",
        Server(
            name=name,
            hostnames=tuple(hosts),
            protocol=protocol,
            workspace=workspace,
            spec=spec,
        ),
    ),
    st.sampled_from(SERVER_NAMES),
    st.lists(st.sampled_from(HOSTNAMES), min_size=1, max_size=2, unique=True),
    st.sampled_from(PROTOCOLS),
    st.sampled_from(WORKSPACES),
    st.sampled_from(SPECS),
)
register = st.builds(
    lambda rid, server, host, port, region, zone, weight, state, revision, at: (
        "register",
        Replica(
            id=rid,
            server=server,
            host=host,
            port=port,
            region=region,
            zone=zone,
            weight=weight,
            state=state,
            revision=revision,
            registered_at=at,
        ),
    ),
    st.sampled_from(REPLICA_IDS),
    st.sampled_from(SERVER_NAMES),
    st.sampled_from(HOSTS),
    st.sampled_from(PORTS),
    st.sampled_from(REGIONS),
    st.sampled_from(ZONES),
    st.sampled_from(WEIGHTS),
    st.sampled_from(STATES),
    st.sampled_from(REVISIONS),
    st.sampled_from(REGISTERED),
)
edits = st.one_of(
    put_server,
    register,
    st.tuples(st.just("delete_server"), st.sampled_from(SERVER_NAMES)),
    st.tuples(st.just("deregister"), st.sampled_from(REPLICA_IDS)),
    st.tuples(st.just("state"), st.sampled_from(REPLICA_IDS), st.sampled_from(STATES)),
    st.tuples(
        st.just("move"),
        st.sampled_from(REPLICA_IDS),
        st.sampled_from(REGIONS),
        st.sampled_from(ZONES),
    ),
    st.tuples(st.just("weight"), st.sampled_from(REPLICA_IDS), st.sampled_from(WEIGHTS)),
    st.tuples(st.just("touch"), st.sampled_from(REPLICA_IDS)),  # a new row, equal routing
    st.tuples(st.just("revision"), st.sampled_from(REPLICA_IDS), st.sampled_from(REVISIONS)),
    st.tuples(st.just("spec"), st.sampled_from(SERVER_NAMES), st.sampled_from(SPECS)),
    st.tuples(st.just("spec"), st.sampled_from(SERVER_NAMES), st.sampled_from(SPECS)),
    st.tuples(
        st.just("hostnames"),
        st.sampled_from(SERVER_NAMES),
        st.lists(st.sampled_from(HOSTNAMES), min_size=1, max_size=2, unique=True),
    ),
    st.tuples(st.just("want"), st.sets(st.sampled_from(GROUPS))),
)


REPLICA_EDITS = frozenset({"state", "move", "weight", "touch", "revision"})


@dataclass
class Model:
    """The registry as rows, turned into a fresh RegistryState per step."""

    servers: dict[str, Server] = field(default_factory=lambda: dict(SEED_SERVERS))
    replicas: dict[str, Replica] = field(default_factory=lambda: dict(SEED_REPLICAS))
    wanted: set[NodeGroup] = field(default_factory=lambda: {WATCHED, GROUPS[3], WATCHED_GRPC})
    revision: int = 0

    def apply(self, edit: tuple[Any, ...]) -> None:
        kind = edit[0]
        replica = self.replicas.get(edit[1]) if kind in REPLICA_EDITS else None
        if kind == "put_server":
            self.servers[edit[1].name] = edit[1]
        elif kind == "register":
            self.replicas[edit[1].id] = edit[1]
        elif kind == "delete_server":
            self.servers.pop(edit[1], None)
        elif kind == "deregister":
            self.replicas.pop(edit[1], None)
        elif kind == "want":
            self.wanted = {WATCHED, WATCHED_GRPC, *edit[1]}
        elif kind in ("spec", "hostnames") and edit[1] in self.servers:
            server = self.servers[edit[1]]
            self.servers[server.name] = (
                replace(server, spec=edit[2])
                if kind == "spec"
                else replace(server, hostnames=tuple(edit[2]))
            )
        elif replica is not None:
            changes: dict[str, Any] = {
                "state": lambda: {"state": edit[2]},
                "move": lambda: {"region": edit[2], "zone": edit[3]},
                "weight": lambda: {"weight": edit[2]},
                "touch": lambda: {"updated_at": replica.updated_at + 1},
                "revision": lambda: {"revision": edit[2]},
            }[kind]()
            self.replicas[replica.id] = replace(replica, **changes)
        self.revision += 1

    def state(self) -> RegistryState:
        return RegistryState.of(
            servers=self.servers.values(),
            replicas=self.replicas.values(),
            revision=self.revision,
            committed_at=float(self.revision),
        )


def contents(snapshot: Snapshot) -> dict[str, dict[str, tuple[str, bytes]]]:
    return {
        type_url: {n: (r.version, r.any_bytes) for n, r in snapshot.of_type(type_url).items()}
        for type_url in PUSH_ORDER
    }


def assert_same_step(incremental: Step, fresh: Step, state: RegistryState) -> None:
    assert incremental.table == fresh.table
    # Routing alone, from scratch, knows nothing of cold periods (the pipeline's history).
    plain = tuple(replace(s, held=False, cold_epoch=0) for s in incremental.table.servers)
    assert replace(incremental.table, servers=plain) == to_routing_table(state)
    assert set(incremental.snapshots) == set(fresh.snapshots)
    assert set(incremental.failures) == set(fresh.failures)
    for group, snapshot in incremental.snapshots.items():
        other = fresh.snapshots[group]
        assert contents(snapshot) == contents(other), group
        assert dict(snapshot.versions) == dict(other.versions), group
        assert snapshot.version == other.version, group


def assert_exact_changes(snapshot: Snapshot, parent: Snapshot | None) -> None:
    """A snapshot built from a parent names exactly what differs from it."""
    if snapshot.changed is None or parent is None or snapshot.parent_version != parent.version:
        return
    for type_url in PUSH_ORDER:
        before, after = parent.of_type(type_url), snapshot.of_type(type_url)
        differ = {
            n
            for n in set(before) | set(after)
            if n not in before or n not in after or before[n].version != after[n].version
        }
        assert set(snapshot.changed.get(type_url, ())) == differ, type_url


# Simulated proxies: what an Envoy does with responses (apply, ACK, follow EDS/RDS names).


class SotwProxy:
    def __init__(self) -> None:
        self.stream = SotwStream(control_plane_id="cp")
        self.held: dict[str, dict[str, str]] = {t: {} for t in PUSH_ORDER}
        self.names: dict[str, list[str]] = {ENDPOINT: [], ROUTE: []}
        for type_url in PUSH_ORDER:
            self.stream.on_request(self._request(type_url))

    def _request(self, type_url: str, *, nonce: str = "", version: str = "") -> Any:
        return discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self.names.get(type_url, []),
            response_nonce=nonce,
            version_info=version,
            node=base_pb2.Node(id="sim"),
        )

    def sync(self, snapshot: Snapshot) -> None:
        for _ in range(10):
            outgoing = self.stream.responses(snapshot)
            if not outgoing:
                return
            for out in outgoing:
                response = discovery_pb2.DiscoveryResponse.FromString(out.payload)
                held = self.held[response.type_url]
                if response.type_url in (CLUSTER, LISTENER):
                    held.clear()
                for any_message in response.resources:
                    name, version = _name_and_version(snapshot, response.type_url, any_message)
                    held[name] = version
                self.stream.on_request(
                    self._request(response.type_url, nonce=out.nonce, version=out.version)
                )
                self._follow(snapshot, response.type_url)
        raise AssertionError("the stream kept sending")

    def _follow(self, snapshot: Snapshot, type_url: str) -> None:
        """After CDS/LDS: ask for the EDS/RDS names they reference, drop the rest."""
        wanted_type, names = _references(snapshot, type_url, self.held[type_url])
        if wanted_type is None or names == self.names[wanted_type]:
            return
        self.names[wanted_type] = names
        held = self.held[wanted_type]
        for gone in [n for n in held if n not in names]:
            del held[gone]
        self.stream.on_request(self._request(wanted_type))


class DeltaProxy:
    def __init__(self) -> None:
        self.stream = DeltaStream(control_plane_id="cp")
        self.held: dict[str, dict[str, str]] = {t: {} for t in PUSH_ORDER}
        self.names: dict[str, list[str]] = {ENDPOINT: [], ROUTE: []}
        for type_url in PUSH_ORDER:
            self.stream.on_request(
                discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, node=base_pb2.Node(id="s"))
            )

    def sync(self, snapshot: Snapshot) -> None:
        for _ in range(10):
            outgoing = self.stream.responses(snapshot)
            if not outgoing:
                return
            for out in outgoing:
                response = discovery_pb2.DeltaDiscoveryResponse.FromString(out.payload)
                held = self.held[response.type_url]
                for resource in response.resources:
                    held[resource.name] = resource.version
                for name in response.removed_resources:
                    held.pop(name, None)
                self.stream.on_request(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=response.type_url, response_nonce=out.nonce
                    )
                )
                self._follow(snapshot, response.type_url)
        raise AssertionError("the stream kept sending")

    def _follow(self, snapshot: Snapshot, type_url: str) -> None:
        wanted_type, names = _references(snapshot, type_url, self.held[type_url])
        if wanted_type is None or names == self.names[wanted_type]:
            return
        before = set(self.names[wanted_type])
        self.names[wanted_type] = names
        held = self.held[wanted_type]
        for gone in before - set(names):
            held.pop(gone, None)
        self.stream.on_request(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=wanted_type,
                resource_names_subscribe=sorted(set(names) - before),
                resource_names_unsubscribe=sorted(before - set(names)),
            )
        )


class GrpcProxy(SotwProxy):
    """What gRPC's xDS client does: named LDS for its targets, then named CDS for the clusters
    their routes name, then named EDS."""

    TARGETS = (
        "echo.local",
        "shared.local",
        "chat.local",
        "nothing.local",
        "canary--echo.local",
        "next--shared.local",
    )

    def __init__(self) -> None:
        self.stream = SotwStream(control_plane_id="cp")
        self.held = {t: {} for t in PUSH_ORDER}
        self.names = {LISTENER: list(self.TARGETS), CLUSTER: [], ENDPOINT: []}
        self.stream.on_request(self._request(LISTENER))

    def _follow(self, snapshot: Snapshot, type_url: str) -> None:
        available = snapshot.of_type(type_url)
        if type_url == LISTENER:
            wanted_type = CLUSTER
            names = sorted(
                {
                    c
                    for n in self.held[LISTENER]
                    if n in available
                    for c in _route_clusters(available[n].message)
                }
            )
        elif type_url == CLUSTER:
            wanted_type, names = _references(snapshot, type_url, self.held[type_url])
            assert wanted_type is not None
        else:
            return
        if names == self.names[wanted_type]:
            return
        self.names[wanted_type] = names
        held = self.held[wanted_type]
        for gone in [n for n in held if n not in names]:
            del held[gone]
        self.stream.on_request(self._request(wanted_type))

    def expected(self, snapshot: Snapshot) -> dict[str, dict[str, str]]:
        """What it must hold: its targets that exist, what they reference, nothing else."""
        listeners = {
            n: r.version for n, r in snapshot.of_type(LISTENER).items() if n in self.TARGETS
        }
        clusters = {
            c for n in listeners for c in _route_clusters(snapshot.of_type(LISTENER)[n].message)
        }
        found = {
            c: snapshot.of_type(CLUSTER)[c] for c in clusters if c in snapshot.of_type(CLUSTER)
        }
        endpoints = {eds_name(r.message) for r in found.values()}
        return {
            LISTENER: listeners,
            CLUSTER: {n: r.version for n, r in found.items()},
            ENDPOINT: {
                n: r.version for n, r in snapshot.of_type(ENDPOINT).items() if n in endpoints
            },
            ROUTE: {},
        }


def _route_clusters(listener: Any) -> set[str]:
    manager = hcm_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(manager)
    return {
        name
        for host in manager.route_config.virtual_hosts
        for route in host.routes
        for name in (
            [route.route.cluster]
            if route.route.cluster
            else [c.name for c in route.route.weighted_clusters.clusters]
        )
    }


def _name_and_version(snapshot: Snapshot, type_url: str, any_message: Any) -> tuple[str, str]:
    for name, resource in snapshot.of_type(type_url).items():
        if resource.any_bytes == any_message.SerializeToString(deterministic=True):
            return name, resource.version
    raise AssertionError(f"sent a {type_url} resource that is not in the snapshot")


def _references(
    snapshot: Snapshot, type_url: str, held: dict[str, str]
) -> tuple[str | None, list[str]]:
    available = snapshot.of_type(type_url)
    if type_url == CLUSTER:
        names = {eds_name(available[n].message) for n in held if n in available}
        return ENDPOINT, sorted(n for n in names if n)
    if type_url == LISTENER:
        return ROUTE, sorted(
            {r for n in held if n in available for r in rds_names(available[n].message)}
        )
    return None, []


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(edits, min_size=4, max_size=40))
def test_incremental_steps_equal_a_rebuild_and_proxies_converge(
    sequence: list[tuple[Any, ...]],
) -> None:
    model = Model()
    pipeline = Pipeline()
    sotw, delta, grpc = SotwProxy(), DeltaProxy(), GrpcProxy()
    last: dict[NodeGroup, Snapshot] = {}
    for edit in sequence:
        model.apply(edit)
        state = model.state()
        step = pipeline.step(state, frozenset(model.wanted))
        # A held server's cluster name depends on when its cold period began: the one piece
        # of history, handed to the rebuild as it stands after the step.
        rebuild = Pipeline(cold_epochs=pipeline.cold_epochs)
        assert_same_step(step, rebuild.step(state, frozenset(model.wanted)), state)
        for group, snapshot in step.snapshots.items():
            assert_exact_changes(snapshot, last.get(group))
            assert (group in step.changed) == (
                group not in last or last[group].version != snapshot.version
            )
        last = dict(step.snapshots)
        watched = step.snapshots[WATCHED]
        sotw.sync(watched)
        delta.sync(watched)
        grpc.sync(step.snapshots[WATCHED_GRPC])
    final = last[WATCHED]
    for proxy, fresh in ((sotw, SotwProxy()), (delta, DeltaProxy())):
        fresh.sync(final)
        assert proxy.held == fresh.held
        expected = {t: {n: r.version for n, r in final.of_type(t).items()} for t in PUSH_ORDER}
        assert proxy.held == expected
    final_grpc = last[WATCHED_GRPC]
    fresh_grpc = GrpcProxy()
    fresh_grpc.sync(final_grpc)
    assert grpc.held == fresh_grpc.held == grpc.expected(final_grpc)

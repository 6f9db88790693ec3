"""Clusters (CDS): one EDS cluster per server, one form for Envoy and gRPC clients.

A server with a traffic split (issue 26) has one cluster per revision (``RoutedServer.revisions``),
all alike but for the name.

Least-request (power of two choices) by default; Maglev consistent hashing for session
affinity. The policy is a ``load_balancing_policy`` list, since each client takes the first
entry it supports: Envoy takes least_request (or maglev); gRPC's xDS client, which supports
neither, falls back to round_robin within weighted localities (or ring_hash, hashing the same
header). ``round_robin`` and ``utilization`` are one entry both take: round_robin, and
client_side_weighted_round_robin (weights from the replicas' ORCA reports; gRPC's
weighted_round_robin), flat over a priority's replicas on both (see
:func:`set_load_balancing`). No panic routing (a DRAINING or unhealthy replica never gets new
requests because too few healthy ones are left). Circuit breakers: cluster-wide limits set
out of the way (Envoy's default of 1,024 requests per cluster is far below an inference fleet's
streams); ``max_requests_per_replica`` limits each replica: connections per host over
HTTP/1.1, streams per connection over HTTP/2. Outlier detection on consecutive 5xx by default;
active health checks only when asked.
"""

from __future__ import annotations

from functools import lru_cache

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, health_check_pb2, protocol_pb2
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from control_plane.registry.spec import ServerSpec, Utilization, view_metric
from control_plane.routing.model import RoutedServer
from control_plane.translate import names
from control_plane.translate.durations import set_duration

_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CLUSTER_WIDE_LIMIT = 1_000_000


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def set_load_balancing(cluster: cluster_pb2.Cluster, *, spec: ServerSpec) -> None:
    """The policy list: each client uses the first entry it supports.

    least_request (the default): Envoy's least_request, then for gRPC round_robin wrapped in
    wrr_locality so locality weights hold. consistent_hash: Envoy's maglev, then gRPC's
    ring_hash, which hashes the route's header hash policy (random without one, as maglev
    does). round_robin: one entry, round_robin. utilization: one entry,
    client_side_weighted_round_robin. Not wrapped in wrr_locality: Envoy 1.40 implements
    wrr_locality too (with only this child) and would take it as well, weighting each
    locality by its replica count, so a busy zone could not shed load to an idle one; bare,
    both clients weigh every replica of a priority by its reports alone.
    """
    policies = cluster.load_balancing_policy.policies
    if spec.hash_on is not None:
        envoy = policies.add().typed_extension_config
        envoy.name = "envoy.load_balancing_policies.maglev"
        envoy.typed_config.Pack(maglev_pb2.Maglev())
        grpc = policies.add().typed_extension_config
        grpc.name = "envoy.load_balancing_policies.ring_hash"
        grpc.typed_config.Pack(ring_hash_pb2.RingHash())
        return
    if spec.balancing == "utilization":
        both = policies.add().typed_extension_config
        both.name = "envoy.load_balancing_policies.client_side_weighted_round_robin"
        both.typed_config.Pack(to_weighted_round_robin(spec.utilization or Utilization()))
        return
    if spec.balancing == "round_robin":
        both = policies.add().typed_extension_config
        both.name = "envoy.load_balancing_policies.round_robin"
        both.typed_config.Pack(round_robin_pb2.RoundRobin())
        return
    envoy = policies.add().typed_extension_config
    envoy.name = "envoy.load_balancing_policies.least_request"
    envoy.typed_config.Pack(least_request_pb2.LeastRequest())
    child = wrr_locality_pb2.WrrLocality()
    endpoint_picking = child.endpoint_picking_policy.policies.add().typed_extension_config
    endpoint_picking.name = "envoy.load_balancing_policies.round_robin"
    endpoint_picking.typed_config.Pack(round_robin_pb2.RoundRobin())
    grpc = policies.add().typed_extension_config
    grpc.name = "envoy.load_balancing_policies.wrr_locality"
    grpc.typed_config.Pack(child)


def to_weighted_round_robin(
    utilization: Utilization,
) -> client_side_weighted_round_robin_pb2.ClientSideWeightedRoundRobin:
    """The client_side_weighted_round_robin config, every knob written out (defaults
    included, so a reader of the config never has to know the clients' defaults).

    ``metric`` becomes ``metric_names_for_computing_utilization``, which both clients read
    after application_utilization (a report carrying one above 0 wins) and before
    cpu_utilization (probed: Envoy 1.40 and grpcio 1.85 both split by a named metric)."""
    config = client_side_weighted_round_robin_pb2.ClientSideWeightedRoundRobin()
    set_duration(config.blackout_period, utilization.blackout_period)
    set_duration(config.weight_expiration_period, utilization.weight_expiration_period)
    set_duration(config.weight_update_period, utilization.weight_update_period)
    config.error_utilization_penalty.value = utilization.error_utilization_penalty
    if utilization.out_of_band_period is not None:
        config.enable_oob_load_report.value = True
        set_duration(config.oob_reporting_period, utilization.out_of_band_period)
    if utilization.metric:
        config.metric_names_for_computing_utilization.append(utilization.metric)
    return config


def cluster_revisions(server: RoutedServer) -> tuple[str, ...]:
    """The revision of each of the server's clusters: ``("",)`` (the plain cluster) for a
    server with no traffic split. A hold-mode server with revisions that has been held (a
    cold epoch) keeps its plain cold cluster too, ``<workspace>_<server>_cold<epoch>``, the
    one the requests held in its cold period wait for: it carries the split's replicas
    (``endpoints.endpoints_of``)."""
    if not server.revisions:
        return ("",)
    if server.cold_epoch and "" not in server.revisions:
        return ("", *server.revisions)
    return server.revisions


def cluster_name(server: RoutedServer, revision: str = "") -> str:
    """The name of the server's cluster of ``revision``: the plain cluster ("") carries the
    cold epoch, a revision's cluster never does (hold mode is kept simple for servers with
    revisions: see ``routes``)."""
    return names.cluster(
        workspace=server.workspace,
        server=server.name,
        epoch=0 if revision else server.cold_epoch,
        revision=revision,
    )


def to_cluster(server: RoutedServer, *, revision: str = "") -> cluster_pb2.Cluster:
    """The server's Cluster (of ``revision``, for a server with a traffic split): its name,
    and the rest from its protocol and spec alone."""
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(_unnamed_cluster(server.protocol, server.spec))
    cluster.name = cluster_name(server, revision)
    return cluster


def endpoint_metrics(spec: ServerSpec) -> tuple[str, ...]:
    """The ORCA metrics Envoy puts in its load reports for ``spec``'s clusters."""
    names = ["application_utilization", "cpu_utilization"]
    metric = view_metric(spec)
    if metric and metric not in names:
        names.append(metric)
    return tuple(names)


@lru_cache(maxsize=256)
def _unnamed_cluster(protocol: str, spec: ServerSpec) -> cluster_pb2.Cluster:
    """Everything of a Cluster but its name: a function of the protocol and the spec, which a
    fleet's servers mostly share, so built once per distinct pair. Must not be altered (callers
    copy it)."""
    cluster = cluster_pb2.Cluster(type=cluster_pb2.Cluster.EDS)
    set_load_balancing(cluster, spec=spec)
    # gRPC clients report load (LRS) to the control plane they got the cluster from; Envoy
    # ignores this field and reports as its bootstrap says.
    cluster.lrs_server.self.SetInParent()
    # Envoy adds these replicas' ORCA metrics (from the endpoint-load-metrics header or
    # trailer) to its load reports, per locality and per endpoint (``load/reports.py``): the
    # two utilizations Envoy's own order reads, and the metric the autoscaling rule (or else
    # utilization balancing) names (``spec.view_metric``).
    # Never ``named_metrics.*``: a replica could then fill every report with names of its own.
    cluster.lrs_report_endpoint_metrics.extend(endpoint_metrics(spec))
    set_duration(cluster.connect_timeout, spec.connect_timeout)
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    cluster.common_lb_config.healthy_panic_threshold.value = 0.0
    thresholds = cluster.circuit_breakers.thresholds.add(priority=base_pb2.RoutingPriority.DEFAULT)
    thresholds.max_connections.value = CLUSTER_WIDE_LIMIT
    thresholds.max_pending_requests.value = CLUSTER_WIDE_LIMIT
    thresholds.max_requests.value = CLUSTER_WIDE_LIMIT
    http2 = protocol in ("http2", "grpc")
    if spec.max_requests_per_replica and not http2:
        per_host = cluster.circuit_breakers.per_host_thresholds.add(
            priority=base_pb2.RoutingPriority.DEFAULT
        )
        per_host.max_connections.value = spec.max_requests_per_replica
    if http2:
        h2 = protocol_pb2.Http2ProtocolOptions()
        if spec.max_requests_per_replica:
            h2.max_concurrent_streams.value = spec.max_requests_per_replica
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=h2
            )
        )
        cluster.typed_extension_protocol_options[_HTTP_OPTIONS_KEY].Pack(options)
    if spec.outlier_detection is not None:
        od = spec.outlier_detection
        detection = outlier_detection_pb2.OutlierDetection()
        detection.consecutive_5xx.value = od.consecutive_5xx
        set_duration(detection.interval, od.interval)
        set_duration(detection.base_ejection_time, od.base_ejection_time)
        detection.max_ejection_percent.value = od.max_ejection_percent
        cluster.outlier_detection.CopyFrom(detection)
    if spec.health_check is not None:
        hc = spec.health_check
        check = health_check_pb2.HealthCheck()
        set_duration(check.interval, hc.interval)
        set_duration(check.timeout, hc.timeout)
        check.unhealthy_threshold.value = hc.unhealthy_threshold
        check.healthy_threshold.value = hc.healthy_threshold
        if hc.kind == "http":
            check.http_health_check.path = hc.target
            if http2:
                check.http_health_check.codec_client_type = 2  # HTTP2
        else:
            check.grpc_health_check.service_name = hc.target
        cluster.health_checks.append(check)
    return cluster

"""Clusters (CDS): one EDS cluster per server."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from control_plane.routing.model import RoutedServer
from control_plane.translate import names

CONNECT_TIMEOUT_MS = 1000
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def to_cluster(server: RoutedServer) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=names.cluster(workspace=server.workspace, server=server.name),
        type=cluster_pb2.Cluster.EDS,
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
    )
    cluster.connect_timeout.FromMilliseconds(CONNECT_TIMEOUT_MS)
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    # No panic routing: a DRAINING or unhealthy replica must never get new requests just
    # because too few healthy ones are left (Envoy's default threshold is 50%).
    cluster.common_lb_config.healthy_panic_threshold.value = 0.0
    if server.protocol in ("http2", "grpc"):
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        cluster.typed_extension_protocol_options[_HTTP_OPTIONS_KEY].Pack(options)
    return cluster

"""Listeners (LDS): one HTTP listener per proxy group, fed by RDS.

Its bytes depend only on the listen address, never on servers or replicas: a listener update
drains live WebSockets and gRPC streams, so routing churn must never produce one.
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.translate import names
from control_plane.translate.clusters import ads_config_source

_HCM_NAME = "envoy.filters.network.http_connection_manager"
_ROUTER_NAME = "envoy.filters.http.router"


def to_listener(*, host: str, port: int) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=names.HTTP_STAT_PREFIX,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        strip_any_host_port=True,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=names.ROUTE_CONFIG),
    )
    manager.upgrade_configs.add(upgrade_type="websocket")
    router = manager.http_filters.add(name=_ROUTER_NAME)
    router.typed_config.Pack(router_pb2.Router())
    listener = listener_pb2.Listener(
        name=names.LISTENER,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=host, port_value=port)
        ),
    )
    chain = listener.filter_chains.add()
    network_filter: listener_components_pb2.Filter = chain.filters.add(name=_HCM_NAME)
    network_filter.typed_config.Pack(manager)
    return listener

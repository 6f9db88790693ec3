"""Listeners (LDS): one HTTP listener per proxy group, fed by RDS.

Its bytes depend only on the listen address, never on servers or replicas: a listener update
drains live WebSockets and gRPC streams, so routing churn must never produce one. So what cold
starts need lives here once for every server: the on-demand filter (it acts only on a route
that carries its per-route config: a held route) and the local replies of a cold start, 503
with ``retry-after`` and ``x-routeplane-cold-start: <server>`` when a server with no READY
replica drops a request (flag ``DO``) or a held request found no replica in time (``NC``).
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.on_demand.v3 import on_demand_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.translate import names
from control_plane.translate.clusters import ads_config_source

_HCM_NAME = "envoy.filters.network.http_connection_manager"
_ROUTER_NAME = "envoy.filters.http.router"
ON_DEMAND_NAME = "envoy.filters.http.on_demand"
RETRY_AFTER_SECONDS = 1
# Every route carries its server's name in its metadata (``translate.routes``).
COLD_START_SERVER = f"%METADATA(ROUTE:{names.METADATA_NAMESPACE}:server)%"
COLD_START_BODY = (
    f"server {COLD_START_SERVER} has no ready replica; retry in {RETRY_AFTER_SECONDS}s\n"
)


def to_listener(*, host: str, port: int) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=names.HTTP_STAT_PREFIX,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        strip_any_host_port=True,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=names.ROUTE_CONFIG),
    )
    manager.upgrade_configs.add(upgrade_type="websocket")
    on_demand = manager.http_filters.add(name=ON_DEMAND_NAME)
    on_demand.typed_config.Pack(on_demand_pb2.OnDemand())
    # UDO: dropped by a 100% drop_overloads (DO: a partial one); NC: a held request's
    # cluster did not come in time.
    for flags in (("UDO", "DO"), ("NC",)):
        mapper = manager.local_reply_config.mappers.add()
        mapper.filter.response_flag_filter.flags.extend(flags)
        mapper.status_code.value = 503
        mapper.body_format_override.text_format_source.inline_string = COLD_START_BODY
        for key, value in (
            ("retry-after", str(RETRY_AFTER_SECONDS)),
            (names.COLD_START_HEADER, COLD_START_SERVER),
        ):
            mapper.headers_to_add.append(
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
            )
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

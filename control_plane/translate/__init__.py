"""RoutingTable -> Envoy resources (and gRPC clients' API listeners); every name from ``names``.

Pure: no I/O, no clock, no logging, no asyncio, no memo of results (reuse across steps is the
pipeline's job; the one cache here is of the parts of a Cluster and of routes that are a
function of a server's protocol and spec alone, built once per distinct spec). May
import ``routing.model``, ``registry.spec`` (the values a routed server carries),
``xds.resources`` and Envoy proto modules.
"""

from control_plane.translate.translator import (
    ProxyView,
    api_listener_resources,
    cluster_resource,
    cluster_resources,
    endpoints_resource,
    listener_resource,
    route_resource,
    to_resources,
)

__all__ = [
    "ProxyView",
    "api_listener_resources",
    "cluster_resource",
    "cluster_resources",
    "endpoints_resource",
    "listener_resource",
    "route_resource",
    "to_resources",
]

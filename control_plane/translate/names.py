"""Every Envoy resource name routeplane emits, in one place.

Stats, dashboards and CSDS output depend on these names: they are pinned by golden tests.
Server and workspace names are ``[a-z0-9-]``, so ``_`` is an unambiguous separator and no name
contains the ``.`` that Envoy's stat tag extraction splits on.
"""

from __future__ import annotations

from typing import Final

LISTENER: Final = "ingress_http"
ROUTE_CONFIG: Final = "ingress_http"
HTTP_STAT_PREFIX: Final = "ingress_http"
XDS_CLUSTER: Final = "routeplane_xds"


def cluster(*, workspace: str, server: str, epoch: int = 0) -> str:
    """The Cluster (and its ClusterLoadAssignment) of one server: ``<workspace>_<server>``, or
    ``<workspace>_<server>_cold<epoch>`` for a hold-mode server that has been held: Envoy asks
    for an on-demand cluster name only once, so each cold period gets a name of its own."""
    if epoch:
        return f"{workspace}_{server}_cold{epoch}"
    return f"{workspace}_{server}"


METADATA_NAMESPACE: Final = "routeplane"
COLD_START_CATEGORY: Final = "cold_start"
COLD_START_HEADER: Final = "x-routeplane-cold-start"


def virtual_host(*, hostname: str) -> str:
    """One virtual host per hostname (servers under different path prefixes share it)."""
    return hostname


def route(*, workspace: str, server: str, variant: str) -> str:
    """A server's route: ``<workspace>_<server>/<variant>`` (``default`` or ``websocket``)."""
    return f"{cluster(workspace=workspace, server=server)}/{variant}"


def api_listener(*, hostname: str) -> str:
    """A gRPC client's Listener: named exactly as the host of its target (``xds:///<hostname>``),
    since that is the name gRPC asks for. Only gRPC nodes get these (never an Envoy)."""
    return hostname


def api_route_config(*, hostname: str) -> str:
    """The route configuration inlined in that Listener."""
    return hostname

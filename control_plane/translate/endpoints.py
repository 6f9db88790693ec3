"""ClusterLoadAssignments (EDS): one per server, with priorities that follow the proxy.

For a proxy in region R (zone Z, when known): priority 0 holds the replicas in R/Z, then the
rest of R, then other regions (only if the server allows cross-region failover). Envoy sends
all traffic to priority 0 while it has enough healthy replicas (overprovisioning factor 1.4:
at least ~72% of it healthy) and spills the shortfall to the next priority: traffic leaves the
region only when the region runs short. DRAINING replicas are sent with health status DRAINING:
no new requests, their open streams finish.

A ClusterLoadAssignment with no READY replica drops every request (``policy.drop_overloads``,
category ``cold_start``, 100%): Envoy answers 503 at once (response flag ``DO``; the listener
adds ``retry-after`` and the cause header) and counts the drop in its load report, which is how
routeplane learns that the server had demand with no replica.

Every locality carries a ``load_balancing_weight`` (Envoy ignores it without locality-weighted
balancing; gRPC drops a locality without one): the sum of its replicas' weights, so gRPC's
round robin within weighted localities sends each locality its share; 1 for consistent-hash
servers, whose ring multiplies locality and replica weights.
"""

from __future__ import annotations

from collections import defaultdict

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.type.v3 import percent_pb2

from control_plane.routing.model import Endpoint, RoutedServer
from control_plane.translate import names

_HEALTHY = health_check_pb2.HealthStatus.HEALTHY
_DRAINING = health_check_pb2.HealthStatus.DRAINING


def level(endpoint: Endpoint, *, region: str, zone: str) -> int:
    """0: same zone, 1: same region, 2: elsewhere (a proxy with no region: all 0)."""
    if not region:
        return 0
    if endpoint.region != region:
        return 2
    if zone and endpoint.zone and endpoint.zone != zone:
        return 1
    return 0


def to_load_assignment(
    server: RoutedServer, *, region: str = "", zone: str = ""
) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=names.cluster(
            workspace=server.workspace, server=server.name, epoch=server.cold_epoch
        )
    )
    by_locality: dict[tuple[int, str, str], list[Endpoint]] = defaultdict(list)
    for endpoint in server.endpoints:
        rank = level(endpoint, region=region, zone=zone)
        if rank == 2 and not server.spec.cross_region:
            continue
        by_locality[(rank, endpoint.region, endpoint.zone)].append(endpoint)
    if not any(not e.draining for group in by_locality.values() for e in group):
        drop = assignment.policy.drop_overloads.add(category=names.COLD_START_CATEGORY)
        drop.drop_percentage.numerator = 100
        drop.drop_percentage.denominator = percent_pb2.FractionalPercent.HUNDRED
    # Envoy wants priorities without gaps: number the levels that are present.
    priorities = {rank: i for i, rank in enumerate(sorted({key[0] for key in by_locality}))}
    for (rank, ep_region, ep_zone), endpoints in sorted(by_locality.items()):
        locality = assignment.endpoints.add()
        locality.locality.CopyFrom(base_pb2.Locality(region=ep_region, zone=ep_zone))
        locality.priority = priorities[rank]
        locality.load_balancing_weight.value = locality_weight(
            endpoints, hashed=server.spec.hash_on is not None
        )
        for endpoint in endpoints:
            _fill_lb_endpoint(locality.lb_endpoints.add(), endpoint)
    return assignment


def locality_weight(endpoints: list[Endpoint], *, hashed: bool) -> int:
    """A locality's weight: above 0 always (gRPC drops a locality of weight 0)."""
    if hashed:
        return 1
    return max(1, min(sum(max(0, e.weight) for e in endpoints), 0xFFFFFFFF))


def _fill_lb_endpoint(lb_endpoint: endpoint_components_pb2.LbEndpoint, endpoint: Endpoint) -> None:
    # Filled in place: about a third cheaper than building and appending a message.
    lb_endpoint.health_status = _DRAINING if endpoint.draining else _HEALTHY
    lb_endpoint.load_balancing_weight.value = endpoint.weight
    socket = lb_endpoint.endpoint.address.socket_address
    socket.address = endpoint.host
    socket.port_value = endpoint.port

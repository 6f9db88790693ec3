"""The one-line summaries of ``routeplane snapshot show``."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from control_plane.admin.service import summary
from control_plane.xds.resources import ENDPOINT, to_resource


def test_a_load_assignment_counts_its_draining_endpoints() -> None:
    status = health_check_pb2.HealthStatus
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name="default_echo")
    locality = assignment.endpoints.add()
    for health in (status.HEALTHY, status.DRAINING, status.DRAINING, status.TIMEOUT):
        locality.lb_endpoints.add(health_status=health)
    resource = to_resource(ENDPOINT, "default_echo", assignment)
    assert summary(resource) == "4 endpoints (2 draining), 1 priority"

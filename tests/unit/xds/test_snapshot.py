from __future__ import annotations

import pytest

from control_plane.translate import ProxyView, to_resources
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control_plane.xds.snapshot import InconsistentSnapshotError, build_snapshot
from harness.models import endpoint, server, table

VIEW = ProxyView(region="us-west", listen_host="127.0.0.1", listen_port=10000)


def test_snapshot_groups_resources_by_type_and_versions_them() -> None:
    snap = build_snapshot(to_resources(table(server("echo", endpoint("r1", 8081))), VIEW))
    assert list(snap.of_type(CLUSTER)) == ["default_echo"]
    assert list(snap.of_type(ENDPOINT)) == ["default_echo"]
    assert list(snap.of_type(LISTENER)) == ["ingress_http"]
    assert list(snap.of_type(ROUTE)) == ["ingress_http"]
    assert set(snap.versions) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}


def test_same_state_gives_same_versions_across_builds() -> None:
    state = table(server("echo", endpoint("r1", 8081)), server("api", endpoint("r2", 8082)))
    first = build_snapshot(to_resources(state, VIEW))
    second = build_snapshot(to_resources(state, VIEW))
    assert first.version == second.version
    assert dict(first.versions) == dict(second.versions)


def test_a_cluster_without_its_endpoints_is_rejected() -> None:
    resources = [r for r in to_resources(table(server("echo")), VIEW) if r.type_url != ENDPOINT]
    with pytest.raises(InconsistentSnapshotError, match="missing endpoints 'default_echo'"):
        build_snapshot(resources)


def test_a_listener_without_its_route_is_rejected() -> None:
    resources = [r for r in to_resources(table(server("echo")), VIEW) if r.type_url != ROUTE]
    with pytest.raises(InconsistentSnapshotError, match="missing route 'ingress_http'"):
        build_snapshot(resources)


def test_duplicate_names_are_rejected() -> None:
    resources = to_resources(table(server("echo")), VIEW)
    with pytest.raises(InconsistentSnapshotError, match="duplicate"):
        build_snapshot(resources + resources[:1])

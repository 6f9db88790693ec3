"""Immutable, versioned snapshots of every resource one node group receives.

A snapshot is checked for consistency before anyone can publish it: every ClusterLoadAssignment
that a Cluster references and every RouteConfiguration that a Listener references must be in it.
Versions are derived from content only (per resource, per type, and for the whole snapshot).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    Resource,
    content_hash,
)

_HCM_TYPE = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name


class InconsistentSnapshotError(ValueError):
    """A snapshot references resources it does not contain, or repeats a name."""


def type_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources: a hash of their sorted (name, version) pairs."""
    pairs = sorted((r.name, r.version) for r in resources)
    return content_hash(*(f"{name}\0{version}".encode() for name, version in pairs))


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Every resource of one node group at one moment. Must not be altered once built."""

    resources: Mapping[str, Mapping[str, Resource]]
    versions: Mapping[str, str]
    version: str

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    @property
    def size(self) -> int:
        return sum(r.size for by_name in self.resources.values() for r in by_name.values())


_EMPTY: Mapping[str, Resource] = MappingProxyType({})


def build_snapshot(resources: Iterable[Resource]) -> Snapshot:
    """Group ``resources`` by type, version them, and check references.

    Raises :class:`InconsistentSnapshotError` naming every dangling reference or duplicate.
    """
    by_type: dict[str, dict[str, Resource]] = {type_url: {} for type_url in PUSH_ORDER}
    problems: list[str] = []
    for resource in resources:
        bucket = by_type.setdefault(resource.type_url, {})
        if resource.name in bucket:
            problems.append(f"duplicate {resource.type_url.rsplit('.', 1)[-1]} {resource.name!r}")
        bucket[resource.name] = resource
    for name, cluster in by_type[CLUSTER].items():
        wanted = eds_name(cluster.message)
        if wanted is not None and wanted not in by_type[ENDPOINT]:
            problems.append(f"cluster {name!r} references missing endpoints {wanted!r}")
    for name, listener in by_type[LISTENER].items():
        for route_name in rds_names(listener.message):
            if route_name not in by_type[ROUTE]:
                problems.append(f"listener {name!r} references missing route {route_name!r}")
    if problems:
        raise InconsistentSnapshotError("; ".join(problems))
    versions = {type_url: type_version(bucket.values()) for type_url, bucket in by_type.items()}
    frozen = MappingProxyType(
        {type_url: MappingProxyType(bucket) for type_url, bucket in by_type.items()}
    )
    overall = content_hash(*(f"{t}\0{v}".encode() for t, v in sorted(versions.items())))
    return Snapshot(resources=frozen, versions=MappingProxyType(versions), version=overall)


def eds_name(cluster: cluster_pb2.Cluster) -> str | None:
    """The ClusterLoadAssignment name an EDS cluster asks for, or None for other clusters."""
    if cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def rds_names(listener: object) -> list[str]:
    """Every RouteConfiguration name the listener's HTTP connection managers ask for over RDS."""
    names: list[str] = []
    chains = list(listener.filter_chains)  # type: ignore[attr-defined]
    if listener.HasField("default_filter_chain"):  # type: ignore[attr-defined]
        chains.append(listener.default_filter_chain)  # type: ignore[attr-defined]
    for chain in chains:
        for network_filter in chain.filters:
            typed = network_filter.typed_config
            if typed.type_url != _HCM_TYPE:
                continue
            manager = hcm_pb2.HttpConnectionManager.FromString(typed.value)
            if manager.HasField("rds"):
                names.append(manager.rds.route_config_name)
    return names

"""Immutable, versioned snapshots of every resource one node group receives.

A snapshot is checked for consistency before anyone can publish it: every ClusterLoadAssignment
that a Cluster references and every RouteConfiguration that a Listener references must be in it.
Versions are derived from content only: a resource's version hashes its bytes; a type's version
is the sum (mod 2**64) of the hashes of its (name, version) pairs, so it is the same for the same
content wherever it is computed, and updating it for one changed resource is O(1).

Built from a previous snapshot plus the names that may have changed, the work is proportional
to the change, not to the size of the snapshot; the snapshot then records exactly which names
differ from its parent, so a stream synced to the parent pushes in O(changes) too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    MASK64,
    PUSH_ORDER,
    ROUTE,
    Resource,
    content_hash,
    version_of_sum,
)

_HCM_TYPE = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name


class InconsistentSnapshotError(ValueError):
    """A snapshot references resources it does not contain, or repeats a name."""


def type_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources (order does not matter)."""
    return version_of_sum(sum(r.pair_hash for r in resources))


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Every resource of one node group at one moment. Must not be altered once built.

    ``changed`` names, per type, what differs from ``parent_version`` (the snapshot it was built
    from), removals included; None when it was built from scratch.
    """

    resources: Mapping[str, Mapping[str, Resource]]
    versions: Mapping[str, str]
    version: str
    sums: Mapping[str, int] = field(repr=False, compare=False)
    parent_version: str | None = None
    changed: Mapping[str, frozenset[str]] | None = field(default=None, compare=False)
    # Where it came from: the newest source commit it reflects (unix seconds; for convergence
    # measurements), the source revision, and a short human reason.
    committed_at: float = field(default=0.0, compare=False)
    revision: int = field(default=0, compare=False)
    cause: str = field(default="", compare=False)

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    @property
    def size(self) -> int:
        return sum(r.size for by_name in self.resources.values() for r in by_name.values())


_EMPTY: Mapping[str, Resource] = MappingProxyType({})


def build_snapshot(resources: Iterable[Resource]) -> Snapshot:
    """Group ``resources`` by type, version them, and check every reference.

    Raises :class:`InconsistentSnapshotError` naming every dangling reference or duplicate.
    """
    by_type: dict[str, dict[str, Resource]] = {type_url: {} for type_url in PUSH_ORDER}
    problems: list[str] = []
    for resource in resources:
        bucket = by_type.setdefault(resource.type_url, {})
        if resource.name in bucket:
            problems.append(f"duplicate {resource.type_url.rsplit('.', 1)[-1]} {resource.name!r}")
        bucket[resource.name] = resource
    if problems:
        raise InconsistentSnapshotError("; ".join(problems))
    return build_from_types(by_type)


def build_from_types(
    by_type: dict[str, dict[str, Resource]],
    *,
    previous: Snapshot | None = None,
    candidates: Mapping[str, AbstractSet[str]] | None = None,
    committed_at: float = 0.0,
    revision: int = 0,
    cause: str = "",
) -> Snapshot:
    """A snapshot of ``by_type`` (which it takes ownership of: neither the dict nor the maps in it
    may be altered afterwards; a map may be shared by several snapshots).

    With ``previous`` and, per type, the ``candidates``: the names that may differ from it
    (removals included; names that did not change are allowed), versions and checks cost only
    the candidates, and the snapshot's ``changed`` is exactly the names whose version differs.
    Removals of EDS/RDS resources still check every reference to them.
    """
    for type_url in PUSH_ORDER:
        by_type.setdefault(type_url, {})
    if previous is not None and candidates is not None:
        sums = dict(previous.sums)
        changed: dict[str, frozenset[str]] = {}
        for type_url, names in candidates.items():
            old = previous.of_type(type_url)
            new = by_type[type_url]
            total = sums.get(type_url, 0)
            differ = []
            for name in names:
                before, after = old.get(name), new.get(name)
                if before is after or (
                    before is not None and after is not None and before.version == after.version
                ):
                    continue
                differ.append(name)
                if before is not None:
                    total -= before.pair_hash
                if after is not None:
                    total += after.pair_hash
            sums[type_url] = total & MASK64
            if differ:
                changed[type_url] = frozenset(differ)
        removed_targets = any(
            name not in by_type[t] for t in (ENDPOINT, ROUTE) for name in changed.get(t, ())
        )
        clusters = (
            by_type[CLUSTER].values()
            if removed_targets
            else [by_type[CLUSTER][n] for n in changed.get(CLUSTER, ()) if n in by_type[CLUSTER]]
        )
        listeners = (
            by_type[LISTENER].values()
            if removed_targets
            else [by_type[LISTENER][n] for n in changed.get(LISTENER, ()) if n in by_type[LISTENER]]
        )
        parent_version: str | None = previous.version
        changed_view: Mapping[str, frozenset[str]] | None = MappingProxyType(changed)
    else:
        sums = {t: sum(r.pair_hash for r in b.values()) & MASK64 for t, b in by_type.items()}
        clusters = by_type[CLUSTER].values()
        listeners = by_type[LISTENER].values()
        parent_version = None
        changed_view = None
    problems: list[str] = []
    for cluster in clusters:
        wanted = eds_name(cluster.message)
        if wanted is not None and wanted not in by_type[ENDPOINT]:
            problems.append(f"cluster {cluster.name!r} references missing endpoints {wanted!r}")
    for listener in listeners:
        for route_name in rds_names(listener.message):
            if route_name not in by_type[ROUTE]:
                problems.append(
                    f"listener {listener.name!r} references missing route {route_name!r}"
                )
    if problems:
        raise InconsistentSnapshotError("; ".join(problems))
    versions = {type_url: version_of_sum(total) for type_url, total in sums.items()}
    overall = content_hash(*(f"{t}\0{v}".encode() for t, v in sorted(versions.items())))
    return Snapshot(
        resources=MappingProxyType(
            {type_url: MappingProxyType(bucket) for type_url, bucket in by_type.items()}
        ),
        versions=MappingProxyType(versions),
        version=overall,
        sums=MappingProxyType(sums),
        parent_version=parent_version,
        changed=changed_view,
        committed_at=committed_at,
        revision=revision,
        cause=cause,
    )


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

"""Serialized xDS resources: encoded once per content version, shared by every stream.

A :class:`Resource` is immutable. Its ``version`` is derived from its bytes only, so the same
content gets the same version on every control-plane replica and across restarts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

CLUSTER: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE: Final = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

# The order a push goes out in, so that nothing ever waits warming on something not yet sent.
PUSH_ORDER: Final = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
# Types whose SotW responses must carry every resource (absence means removal).
WILDCARD_TYPES: Final = frozenset({CLUSTER, LISTENER})
SHORT_NAMES: Final = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}
TYPE_BY_SHORT_NAME: Final = {short: url for url, short in SHORT_NAMES.items()}


def content_hash(*parts: bytes) -> str:
    """A short, stable hex digest of ``parts`` (16 hex characters)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


MASK64 = (1 << 64) - 1


def pair_hash(name: str, version: str) -> int:
    digest = hashlib.blake2b(f"{name}\0{version}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def version_of_sum(total: int) -> str:
    """The version string of a set of resources whose pair hashes add up to ``total``."""
    return f"{total & MASK64:016x}"


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One protobuf length-delimited field (wire type 2), tag included."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def string_field(field_number: int, value: str) -> bytes:
    return length_delimited(field_number, value.encode()) if value else b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """One Envoy resource at one content version.

    ``message`` is the parsed proto (kept for reference checks and inspection; it must not be
    altered). ``any_bytes`` is the serialized ``google.protobuf.Any``. The two pre-encoded
    fields are what responses are assembled from, so a push costs a join, not a serialization.
    """

    type_url: str
    name: str
    version: str
    message: Any = field(repr=False, compare=False)
    any_bytes: bytes = field(repr=False)
    # 64-bit hash of (name, version): type versions are sums of these, so updating a type's
    # version for one changed resource is O(1).
    pair_hash: int = field(repr=False, compare=False)
    sotw_field: bytes = field(repr=False, compare=False)
    delta_field: bytes = field(repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.any_bytes)


def to_resource(type_url: str, name: str, message: Any) -> Resource:
    """Serialize ``message`` once (deterministically) and pre-encode its response fields."""
    payload = message.SerializeToString(deterministic=True)
    version = content_hash(type_url.encode(), payload)
    any_bytes = string_field(1, type_url) + length_delimited(2, payload)
    # DiscoveryResponse.resources = 2 (repeated Any).
    sotw_field = length_delimited(2, any_bytes)
    # DeltaDiscoveryResponse.resources = 2 (repeated Resource{name=3, version=1, resource=2}).
    delta_resource = (
        string_field(1, version) + length_delimited(2, any_bytes) + string_field(3, name)
    )
    delta_field = length_delimited(2, delta_resource)
    return Resource(
        type_url=type_url,
        name=name,
        version=version,
        message=message,
        any_bytes=any_bytes,
        pair_hash=pair_hash(name, version),
        sotw_field=sotw_field,
        delta_field=delta_field,
    )


def sotw_response(
    *,
    version_info: str,
    resources: list[Resource],
    type_url: str,
    nonce: str,
    control_plane: bytes,
) -> bytes:
    """Encode a ``DiscoveryResponse`` from pre-encoded resource fields."""
    parts = [string_field(1, version_info)]
    parts.extend(resource.sotw_field for resource in resources)
    parts.append(string_field(4, type_url))
    parts.append(string_field(5, nonce))
    parts.append(control_plane)
    return b"".join(parts)


def delta_response(
    *,
    system_version_info: str,
    resources: list[Resource],
    removed: list[str],
    type_url: str,
    nonce: str,
    control_plane: bytes,
) -> bytes:
    """Encode a ``DeltaDiscoveryResponse`` from pre-encoded resource fields."""
    parts = [string_field(1, system_version_info)]
    parts.extend(resource.delta_field for resource in resources)
    parts.append(string_field(4, type_url))
    parts.append(string_field(5, nonce))
    parts.extend(string_field(6, name) for name in removed)
    parts.append(control_plane)
    return b"".join(parts)


def control_plane_field(*, identifier: str, field_number: int) -> bytes:
    """The ``control_plane`` field (``core.v3.ControlPlane{identifier=1}``) for a response."""
    return length_delimited(field_number, string_field(1, identifier))

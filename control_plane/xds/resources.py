"""Serialized xDS resources: encoded once per content version, shared by every stream.

A :class:`Resource` is immutable. Its ``version`` is derived from its bytes only, so the same
content gets the same version on every control-plane replica and across restarts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2

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


# The one-byte varints (most lengths and small numbers an encoder joins).
_ONE_BYTE: Final = tuple(bytes((n,)) for n in range(0x80))


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if 0 <= value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
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

    ``any_bytes`` is the serialized ``google.protobuf.Any``. The two pre-encoded fields are what
    responses are assembled from, so a push costs a join, not a serialization. ``message`` is
    the parsed proto (for reference checks and inspection; it must not be altered): the one
    the resource was serialized from, or, for a resource encoded straight to bytes, parsed from
    them on first use.
    """

    type_url: str
    name: str
    version: str
    any_bytes: bytes = field(repr=False)
    # 64-bit hash of (name, version): type versions are sums of these, so updating a type's
    # version for one changed resource is O(1).
    pair_hash: int = field(repr=False, compare=False)
    sotw_field: bytes = field(repr=False, compare=False)
    delta_field: bytes = field(repr=False, compare=False)
    # The parsed proto once known (see ``message``); None until then.
    parsed: Any = field(default=None, repr=False, compare=False)

    @property
    def message(self) -> Any:
        parsed = self.parsed
        if parsed is None:
            # Two threads may both parse: equal messages, either one kept.
            parsed = _MESSAGE_TYPES[self.type_url].FromString(
                any_pb2.Any.FromString(self.any_bytes).value
            )
            object.__setattr__(self, "parsed", parsed)
        return parsed

    @property
    def size(self) -> int:
        return len(self.any_bytes)


_MESSAGE_TYPES: Final[dict[str, Any]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}


def to_resource(type_url: str, name: str, message: Any) -> Resource:
    """Serialize ``message`` once (deterministically) and pre-encode its response fields."""
    return encoded_resource(
        type_url, name, message.SerializeToString(deterministic=True), message=message
    )


@cache
def _type_prefix(type_url: str) -> tuple[bytes, Any]:
    """``Any.type_url`` encoded, and a hash that has already taken the type URL in."""
    encoded = type_url.encode()
    digest = hashlib.blake2b(digest_size=8)
    digest.update(len(encoded).to_bytes(8, "little"))
    digest.update(encoded)
    return string_field(1, type_url), digest


# Marks a version hashed from a version key rather than from the payload itself.
_KEYED = b"\xffkeyed"


def encoded_resource(
    type_url: str,
    name: str,
    payload: bytes,
    *,
    message: Any = None,
    version_key: bytes | None = None,
) -> Resource:
    """A resource from its serialized message (``payload``, as ``SerializeToString(
    deterministic=True)`` gives it), its response fields pre-encoded. ``message``, when the
    caller has it, saves a parse if anyone asks for it.

    The version hashes ``payload``; or, with ``version_key``, that key instead: a short
    stand-in for the payload that its encoder derives from the same content (a large
    ClusterLoadAssignment's, ``translate.endpoints.load_assignment``: a change is versioned
    without hashing every endpoint again). Either way, the same content has the same version
    wherever it is computed."""
    type_field, primed = _type_prefix(type_url)
    digest = primed.copy()
    if version_key is None:
        digest.update(len(payload).to_bytes(8, "little"))
        digest.update(payload)
    else:
        digest.update(_KEYED)
        digest.update(len(version_key).to_bytes(8, "little"))
        digest.update(version_key)
    version = digest.hexdigest()  # without a key: content_hash(type_url.encode(), payload)
    any_bytes = b"".join((type_field, b"\x12", varint(len(payload)), payload))
    any_length = varint(len(any_bytes))
    # DiscoveryResponse.resources = 2 (repeated Any).
    sotw_field = b"".join((b"\x12", any_length, any_bytes))
    # DeltaDiscoveryResponse.resources = 2 (repeated Resource{name=3, version=1, resource=2}).
    # The version is 16 hex characters: field 1, length 16.
    name_field = string_field(3, name)
    delta_length = 2 + 16 + 1 + len(any_length) + len(any_bytes) + len(name_field)
    delta_field = b"".join(
        (
            b"\x12",
            varint(delta_length),
            b"\x0a\x10",
            version.encode(),
            b"\x12",
            any_length,
            any_bytes,
            name_field,
        )
    )
    return Resource(
        type_url=type_url,
        name=name,
        version=version,
        any_bytes=any_bytes,
        pair_hash=pair_hash(name, version),
        sotw_field=sotw_field,
        delta_field=delta_field,
        parsed=message,
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
    head, tail = sotw_response_parts(
        version_info=version_info,
        resources=resources,
        type_url=type_url,
        control_plane=control_plane,
    )
    return b"".join((*head, string_field(5, nonce), tail))


def sotw_response_parts(
    *, version_info: str, resources: list[Resource], type_url: str, control_plane: bytes
) -> tuple[list[bytes], bytes]:
    """A ``DiscoveryResponse`` but its nonce: the parts before it (not joined: a stream joins
    them once, with its nonce) and the part after it."""
    head = [string_field(1, version_info)]
    head.extend(resource.sotw_field for resource in resources)
    head.append(string_field(4, type_url))
    return head, control_plane


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
    head, tail = delta_response_parts(
        system_version_info=system_version_info,
        resources=resources,
        removed=removed,
        type_url=type_url,
        control_plane=control_plane,
    )
    return head + string_field(5, nonce) + tail


def delta_response_parts(
    *,
    system_version_info: str,
    resources: list[Resource],
    removed: list[str],
    type_url: str,
    control_plane: bytes,
) -> tuple[bytes, bytes]:
    """A ``DeltaDiscoveryResponse`` but its nonce: ``head + string_field(5, nonce) + tail`` is
    the response (one encoding shared by every stream sent the same thing)."""
    parts = [string_field(1, system_version_info)]
    parts.extend(resource.delta_field for resource in resources)
    parts.append(string_field(4, type_url))
    tail = [string_field(6, name) for name in removed]
    tail.append(control_plane)
    return b"".join(parts), b"".join(tail)


def control_plane_field(*, identifier: str, field_number: int) -> bytes:
    """The ``control_plane`` field (``core.v3.ControlPlane{identifier=1}``) for a response."""
    return length_delimited(field_number, string_field(1, identifier))

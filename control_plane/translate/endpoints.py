"""ClusterLoadAssignments (EDS): one per server (per revision of a server with a traffic
split: ``endpoints_of``), with priorities that follow the proxy.

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

Encoded straight to bytes, in the order ``SerializeToString(deterministic=True)`` writes them:
each endpoint's ``LbEndpoint`` is encoded once (:func:`encode_endpoints`, which reuses the
bytes of every endpoint equal to one of a previous encoding, so one changed replica of 10,000
encodes one), grouped by locality, and every proxy view's ClusterLoadAssignment is joined from
those groups (:func:`encode_load_assignment`): protobuf lets repeated fields be concatenated,
only the lengths of the enclosing messages are written again. Its version is hashed from a short
key (:func:`load_assignment`), not from the joined bytes: every part but the endpoints, and per
locality the count and the digest sum of its endpoints (:func:`endpoint_digest`), which a change
moves by what it adds and removes; so a change in a server of 10,000 replicas encodes one
endpoint and hashes a few hundred bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import compress, count, repeat
from operator import attrgetter, eq, is_not, not_

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.type.v3 import percent_pb2

from control_plane.routing.model import Endpoint, RoutedServer
from control_plane.translate import names
from control_plane.translate.clusters import cluster_name
from control_plane.xds.resources import MASK64, length_delimited, string_field, varint

_HEALTHY = health_check_pb2.HealthStatus.HEALTHY
_DRAINING = health_check_pb2.HealthStatus.DRAINING
# LbEndpoint.health_status = 2 (an enum: a varint).
_HEALTH_FIELD = {False: bytes((0x10, _HEALTHY)), True: bytes((0x10, _DRAINING))}
_ONE = tuple(bytes((n,)) for n in range(0x80))  # the one-byte varints
_where = attrgetter("region", "zone")
_weight = attrgetter("weight")
_draining = attrgetter("draining")


def _drop_everything() -> bytes:
    """ClusterLoadAssignment.policy (field 4): drop 100% as ``cold_start``, encoded once."""
    assignment = endpoint_pb2.ClusterLoadAssignment()
    drop = assignment.policy.drop_overloads.add(category=names.COLD_START_CATEGORY)
    drop.drop_percentage.numerator = 100
    drop.drop_percentage.denominator = percent_pb2.FractionalPercent.HUNDRED
    return bytes(assignment.SerializeToString(deterministic=True))


_DROP_EVERYTHING = _drop_everything()


def level(endpoint: Endpoint, *, region: str, zone: str) -> int:
    """0: same zone, 1: same region, 2: elsewhere (a proxy with no region: all 0)."""
    return _level(endpoint.region, endpoint.zone, region=region, zone=zone)


def _level(ep_region: str, ep_zone: str, *, region: str, zone: str) -> int:
    if not region:
        return 0
    if ep_region != region:
        return 2
    if zone and ep_zone and ep_zone != zone:
        return 1
    return 0


def locality_weight(endpoints: Iterable[Endpoint], *, hashed: bool) -> int:
    """A locality's weight: above 0 always (gRPC drops a locality of weight 0)."""
    return _clamp_weight(sum(max(0, e.weight) for e in endpoints), hashed=hashed)


def _clamp_weight(total: int, *, hashed: bool) -> int:
    if hashed:
        return 1
    return max(1, min(total, 0xFFFFFFFF))


def lb_endpoint_field(endpoint: Endpoint) -> bytes:
    """``LocalityLbEndpoints.lb_endpoints`` (field 2) holding the endpoint's ``LbEndpoint``:
    endpoint = 1 {address = 1 {socket_address = 1 {address = 2, port_value = 3}}},
    health_status = 2, load_balancing_weight = 4 {value = 1}."""
    host = endpoint.host.encode()
    port = varint(endpoint.port)  # port_value is in a oneof: written even when 0
    value = varint(endpoint.weight)
    weight = (
        b"\x22\x00" if not endpoint.weight else b"\x22" + _ONE[len(value) + 1] + b"\x08" + value
    )
    health = _HEALTH_FIELD[endpoint.draining]
    socket = 3 + len(host) + len(port)
    body = socket + 8 + len(weight)
    if body < 0x80:  # every length fits one byte (any IP address does)
        lengths = bytes((0x12, body, 0x0A, socket + 4, 0x0A, socket + 2, 0x0A, socket, 0x12))
        return b"".join((lengths, _ONE[len(host)], host, b"\x18", port, health, weight))
    inner = length_delimited(
        1, length_delimited(1, b"".join((string_field(2, endpoint.host), b"\x18", port)))
    )
    return length_delimited(2, b"".join((length_delimited(1, inner), health, weight)))


def endpoint_digest(endpoint: Endpoint, field: bytes) -> int:
    """A 64-bit hash of the endpoint's replica id and its encoded ``LbEndpoint`` field. A
    locality's endpoints are in replica id order, so the set of these pairs fixes its bytes:
    their sum (mod 2**64) stands for them in the ClusterLoadAssignment's version, and moves by
    what left and what came (see :func:`load_assignment`)."""
    rid = endpoint.replica_id.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(len(rid).to_bytes(4, "little"), digest_size=8)
    digest.update(rid)
    digest.update(field)
    return int.from_bytes(digest.digest(), "little")


# Endpoints are grouped by where they are: (region, zone).
Where = tuple[str, str]


@dataclass(frozen=True, slots=True)
class _Locality:
    """The endpoints of one (region, zone), ready to join: their ``lb_endpoints`` fields in
    order, the sum of their weights, how many of them take new requests, how many there are
    and the sum of their :func:`endpoint_digest` (mod 2**64)."""

    lb_endpoints: bytes
    weight: int
    ready: int
    count: int = 0
    digest: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedEndpoints:
    """A server's endpoints, each one's ``LbEndpoint`` encoded, grouped by locality: what the
    ClusterLoadAssignment of every proxy view is joined from. ``fields``, ``digests`` (each
    one's :func:`endpoint_digest`) and ``wheres`` are aligned with ``endpoints``. Must not be
    altered."""

    endpoints: tuple[Endpoint, ...]
    fields: tuple[bytes, ...]
    digests: tuple[int, ...]
    wheres: tuple[Where, ...]
    localities: Mapping[Where, _Locality]


def encode_endpoints(
    endpoints: tuple[Endpoint, ...], *, previous: EncodedEndpoints | None = None
) -> EncodedEndpoints:
    """``endpoints`` encoded, taking the bytes of every endpoint equal to one of ``previous``
    (the encoding of an earlier version of the same server's endpoints) instead of encoding it
    again, and joining again only the localities whose endpoints changed. Endpoints keep their
    order (replica id), so what differs is the run between the longest common prefix and
    suffix (compared by identity first, which only short-cuts equal values; the run is then
    compared by value): one changed replica of 10,000 is encoded alone."""
    if previous is None or not previous.endpoints or not endpoints:
        return _encode_all(endpoints)
    old = previous.endpoints
    if old is endpoints or old == endpoints:
        return previous
    shorter = min(len(old), len(endpoints))
    start = next(compress(count(), map(is_not, old, endpoints)), shorter)
    tail = min(
        next(compress(count(), map(is_not, reversed(old), reversed(endpoints))), shorter),
        shorter - start,
    )
    old_end, new_end = len(old) - tail, len(endpoints) - tail
    gone = old[start:old_end]
    gone_digests = previous.digests[start:old_end]
    known = dict(
        zip(gone, zip(previous.fields[start:old_end], gone_digests, strict=True), strict=True)
    )
    came = endpoints[start:new_end]
    came_fields = []
    came_digests = []
    for endpoint in came:
        seen = known.get(endpoint)
        if seen is None:
            field = lb_endpoint_field(endpoint)
            seen = (field, endpoint_digest(endpoint, field))
        came_fields.append(seen[0])
        came_digests.append(seen[1])
    fields = previous.fields[:start] + tuple(came_fields) + previous.fields[old_end:]
    digests = previous.digests[:start] + tuple(came_digests) + previous.digests[old_end:]
    came_wheres = tuple((e.region, e.zone) for e in came)
    wheres = previous.wheres[:start] + came_wheres + previous.wheres[old_end:]
    # Weights, ready counts, counts and digests move by what left and what came; the bytes
    # are joined again.
    delta: dict[Where, list[int]] = {}
    for sign, run, run_wheres, run_digests in (
        (-1, gone, previous.wheres[start:old_end], gone_digests),
        (1, came, came_wheres, came_digests),
    ):
        for endpoint, where, digest in zip(run, run_wheres, run_digests, strict=True):
            moved = delta.setdefault(where, [0, 0, 0, 0])
            moved[0] += sign * max(0, endpoint.weight)
            moved[1] += sign * (not endpoint.draining)
            moved[2] += sign
            moved[3] += sign * digest
    localities = dict(previous.localities)
    for where, (weight, ready, number, digest) in delta.items():
        members = list(map(eq, wheres, repeat(where)))
        if not any(members):
            del localities[where]
            continue
        before = localities.get(where, _EMPTY_LOCALITY)
        localities[where] = _Locality(
            lb_endpoints=b"".join(compress(fields, members)),
            weight=weight + before.weight,
            ready=ready + before.ready,
            count=number + before.count,
            digest=(digest + before.digest) & MASK64,
        )
    return EncodedEndpoints(
        endpoints=endpoints, fields=fields, digests=digests, wheres=wheres, localities=localities
    )


_EMPTY_LOCALITY = _Locality(lb_endpoints=b"", weight=0, ready=0)


def _encode_all(endpoints: tuple[Endpoint, ...]) -> EncodedEndpoints:
    fields = tuple(map(lb_endpoint_field, endpoints))
    digests = tuple(map(endpoint_digest, endpoints, fields))
    # One (region, zone) object per locality, shared by its endpoints.
    found = dict.fromkeys(map(_where, endpoints))
    shared = dict(zip(found, found, strict=True))
    wheres = tuple(map(shared.__getitem__, map(_where, endpoints)))
    localities = {}
    for where in shared:
        members = list(map(eq, wheres, repeat(where)))
        chosen = list(compress(endpoints, members))
        localities[where] = _Locality(
            lb_endpoints=b"".join(compress(fields, members)),
            weight=sum(map(max, map(_weight, chosen), repeat(0))),
            ready=sum(map(not_, map(_draining, chosen))),
            count=len(chosen),
            digest=sum(compress(digests, members)) & MASK64,
        )
    return EncodedEndpoints(
        endpoints=endpoints, fields=fields, digests=digests, wheres=wheres, localities=localities
    )


def endpoints_of(server: RoutedServer, revision: str = "") -> tuple[Endpoint, ...]:
    """The endpoints of the server's cluster of ``revision``: all of them for a server with no
    traffic split (the same tuple); for the plain cold cluster of a hold-mode server with
    revisions (``clusters.cluster_revisions``), those of the split's revisions."""
    if not server.revisions:
        return server.endpoints
    if not revision and "" not in server.revisions:
        split = {name for name, _ in server.split}
        return tuple(endpoint for endpoint in server.endpoints if endpoint.revision in split)
    return tuple(endpoint for endpoint in server.endpoints if endpoint.revision == revision)


def encode_load_assignment(
    server: RoutedServer,
    *,
    revision: str = "",
    region: str = "",
    zone: str = "",
    encoded: EncodedEndpoints | None = None,
) -> bytes:
    """The ClusterLoadAssignment of the server's cluster of ``revision`` (see
    ``endpoints_of``) as a proxy in ``region``/``zone`` sees it, serialized (``encoded``: those
    endpoints' encoding, when the caller has it)."""
    return load_assignment(server, revision=revision, region=region, zone=zone, encoded=encoded)[0]


def load_assignment(
    server: RoutedServer,
    *,
    revision: str = "",
    region: str = "",
    zone: str = "",
    encoded: EncodedEndpoints | None = None,
) -> tuple[bytes, bytes]:
    """:func:`encode_load_assignment`, and a short key that stands for those bytes in the
    resource's version (``xds.resources.encoded_resource``), so a change is versioned without
    hashing every endpoint's bytes again: every part of the message but the localities'
    ``lb_endpoints``, and for each locality its endpoints' count and digest sum (which, with
    the endpoints in replica id order, fix its ``lb_endpoints``). cluster_name = 1,
    endpoints = 2 (LocalityLbEndpoints: locality = 1 {region = 1, zone = 2}, lb_endpoints = 2,
    load_balancing_weight = 3 {value = 1}, priority = 5), policy = 4."""
    endpoints = endpoints_of(server, revision)
    if encoded is None or (encoded.endpoints is not endpoints and encoded.endpoints != endpoints):
        encoded = encode_endpoints(endpoints)
    ranked = []
    for where, locality in encoded.localities.items():
        rank = _level(*where, region=region, zone=zone)
        if rank == 2 and not server.spec.cross_region:
            continue
        ranked.append((rank, where, locality))
    ranked.sort(key=lambda item: (item[0], item[1]))
    # Envoy wants priorities without gaps: number the levels that are present.
    priorities = {rank: i for i, rank in enumerate(sorted({item[0] for item in ranked}))}
    hashed = server.spec.hash_on is not None
    name = string_field(1, cluster_name(server, revision))
    parts = [name]
    key = [name]
    for rank, (ep_region, ep_zone), locality in ranked:
        weight = varint(_clamp_weight(locality.weight, hashed=hashed))
        priority = priorities[rank]
        head = length_delimited(1, string_field(1, ep_region) + string_field(2, ep_zone))
        tail = b"".join(
            (
                b"\x1a",
                varint(len(weight) + 1),
                b"\x08",
                weight,
                b"\x28" + varint(priority) if priority else b"",
            )
        )
        size = varint(len(head) + len(locality.lb_endpoints) + len(tail))
        parts += (b"\x12", size, head, locality.lb_endpoints, tail)
        key += (
            b"\x12",
            size,
            head,
            locality.count.to_bytes(8, "little"),
            locality.digest.to_bytes(8, "little"),
            tail,
        )
    if not any(locality.ready for _, _, locality in ranked):
        parts.append(_DROP_EVERYTHING)
        key.append(_DROP_EVERYTHING)
    return b"".join(parts), b"".join(key)


def to_load_assignment(
    server: RoutedServer, *, revision: str = "", region: str = "", zone: str = ""
) -> endpoint_pb2.ClusterLoadAssignment:
    """:func:`encode_load_assignment` as a message (for tests and inspection)."""
    return endpoint_pb2.ClusterLoadAssignment.FromString(
        encode_load_assignment(server, revision=revision, region=region, zone=zone)
    )

"""Write-time validation. Every failure is a ValidationError naming the field and the value."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import Any

from control_plane.registry.errors import ValidationError
from control_plane.registry.model import ReplicaState, ServerProtocol
from control_plane.registry.rows import Malformed, excerpt

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
REGION_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
HOSTNAME_RE = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)
WEIGHT_MIN, WEIGHT_MAX = 1, 10_000


def name(field: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise ValidationError(
            field, value, "use 1-63 lowercase letters, digits and '-', not starting with '-'"
        )
    return value


# ``latest`` names the newest revision in a traffic split (registry/spec.py), never a replica's.
RESERVED_REVISIONS = frozenset({"latest"})


def revision(field: str, value: Any) -> str:
    """A replica's revision: "" (none: rows from older writers) or a short name, ``[a-z0-9-]``,
    at most 63 characters, not ``latest``."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(
            field, value, "use 1-63 lowercase letters, digits and '-', not starting with '-'"
        )
    if value in RESERVED_REVISIONS:
        raise ValidationError(field, value, "'latest' is reserved for the traffic split")
    return value


def hostnames(values: Sequence[Any]) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)):
        raise ValidationError("hostnames", values, "expected a list of hostnames")
    if not values:
        raise ValidationError("hostnames", list(values), "a server needs at least one hostname")
    out: list[str] = []
    for value in values:
        if isinstance(value, Malformed):
            raise ValidationError("hostnames", excerpt(value.raw), value.reason)
        if not isinstance(value, str):
            raise ValidationError("hostname", value, "expected a DNS name (a string)")
        lowered = value.strip().lower()
        if len(lowered) > 253 or not HOSTNAME_RE.match(lowered):
            raise ValidationError(
                "hostname", value, "expected a DNS name such as api.example.com or *.example.com"
            )
        if lowered not in out:
            out.append(lowered)
    return tuple(out)


def protocol(value: str) -> str:
    try:
        return ServerProtocol(value).value
    except ValueError:
        choices = ", ".join(p.value for p in ServerProtocol)
        raise ValidationError("protocol", value, f"expected one of {choices}") from None


_STATES = frozenset(s.value for s in ReplicaState)


def state(value: str) -> str:
    upper = value.upper() if isinstance(value, str) else ""
    if upper in _STATES:
        return upper
    choices = ", ".join(s.value for s in ReplicaState)
    raise ValidationError("state", value, f"expected one of {choices}")


def region(field: str, value: str, *, required: bool = True) -> str:
    if not value and not required:
        return ""
    if not isinstance(value, str) or not REGION_RE.match(value):
        raise ValidationError(field, value, "expected a region name such as us-west")
    return value


def _whole(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, value, "expected a whole number")
    return value


def weight(value: int) -> int:
    if not WEIGHT_MIN <= _whole("weight", value) <= WEIGHT_MAX:
        raise ValidationError("weight", value, f"must be between {WEIGHT_MIN} and {WEIGHT_MAX}")
    return value


def port(value: int) -> int:
    if not 1 <= _whole("port", value) <= 65535:
        raise ValidationError("port", value, "must be between 1 and 65535")
    return value


def host(value: str) -> str:
    """An IP address (v4, or v6 normalized): EDS endpoints are IP literals, and Envoy rejects
    a whole ClusterLoadAssignment that holds a name (``malformed IP address``), so names are
    refused here, at write time and again when rows are read."""
    try:
        # The C parser is ~50x faster than ipaddress here; it accepts only canonical dotted quads.
        socket.inet_pton(socket.AF_INET, value)
        return value
    except (OSError, TypeError, ValueError):
        pass
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        parsed = None
    if parsed is None or "%" in value:
        raise ValidationError(
            "address", value, "expected an IP address (resolve names before registering)"
        )
    return str(parsed)


def host_or_name(value: str) -> str:
    """An IP address (normalized) or a DNS name (lowercased): for addresses Envoy resolves
    itself (a bootstrap's control-plane cluster), never for EDS endpoints."""
    try:
        return host(value)
    except ValidationError:
        pass
    lowered = value.lower()
    if not lowered or len(lowered) > 253 or not HOSTNAME_RE.match(lowered) or "*" in lowered:
        raise ValidationError("address", value, "expected an IP address or a DNS name")
    return lowered


def address(value: str, *, names: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); HOST an IP literal, or also a DNS
    name with ``names``."""
    text = value.strip()
    if text.startswith("["):
        host_part, sep, port_part = text[1:].partition("]:")
    else:
        host_part, sep, port_part = text.rpartition(":")
    if not sep or not host_part or not (port_part.isascii() and port_part.isdigit()):
        raise ValidationError("address", value, "expected HOST:PORT, e.g. 10.0.0.7:8080")
    if len(port_part) > 16:  # int() of thousands of digits raises; no port needs more
        raise ValidationError("port", port_part, "must be between 1 and 65535")
    return (host_or_name(host_part) if names else host(host_part)), port(int(port_part))


LEASE_MIN, LEASE_MAX = 1.0, 3600.0


def lease(seconds: float) -> float:
    if not LEASE_MIN <= seconds <= LEASE_MAX:
        raise ValidationError(
            "lease_seconds", seconds, f"must be between {LEASE_MIN:g} and {LEASE_MAX:g}"
        )
    return seconds

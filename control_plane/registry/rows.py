"""Registry rows decoded defensively: a column of any type or shape never raises here.

The registry has other writers, so a row may hold anything its column type allows (SQLite:
anything at all). Decoding keeps a value it cannot convert exactly as it was read; routing's
validation (``registry.validate``) then reports it as a problem naming the row, the field and
the value, and leaves that row out. Nothing here raises, so one bad row never stops a read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from control_plane.registry.model import Replica, Server


@dataclass(frozen=True, slots=True)
class Malformed:
    """A column whose shape is wrong as a whole (e.g. hostnames that are not a JSON list)."""

    raw: str
    reason: str

    def __str__(self) -> str:
        return self.raw


def text(value: Any) -> str:
    """A text column: str as is, None as "", anything else as its str()."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def whole_number(value: Any) -> Any:
    """An integer column: an int (also from an integral float or a decimal string), else the
    value as read, for validation to report (never silently cut: 8181.5 stays 8181.5)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return value


def seconds(value: Any) -> float | None:
    """A timestamp in unix seconds, or None when absent or not a finite number."""
    if isinstance(value, bool) or value is None:
        return None
    if hasattr(value, "timestamp"):
        try:
            return float(value.timestamp())
        except (TypeError, ValueError, OverflowError):
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def json_list(value: Any) -> tuple[Any, ...]:
    """A JSON list column as a tuple of its elements (of any type); a column that is not a
    JSON list becomes one :class:`Malformed` element, so validation names it."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raw = text(value)
    try:
        decoded = json.loads(raw)
    except ValueError:
        return (Malformed(raw, "not a JSON list"),)
    if not isinstance(decoded, list):
        return (Malformed(raw, "not a JSON list"),)
    return tuple(decoded)


def server(
    name: Any,
    workspace: Any,
    hostnames: Any,
    protocol: Any,
    spec: Any,
    updated_at: Any,
    created_at: Any,
) -> Server:
    """A servers row, from either store, as read: never raises."""
    return Server(
        name=text(name),
        workspace=text(workspace),
        hostnames=json_list(hostnames),
        protocol=text(protocol),
        spec=text(spec) or "{}",
        updated_at=seconds(updated_at) or 0.0,
        created_at=seconds(created_at) or 0.0,
    )


def replica(
    rid: Any,
    server: Any,
    host: Any,
    port: Any,
    region: Any,
    zone: Any,
    weight: Any,
    state: Any,
    lease: Any,
    updated_at: Any,
) -> Replica:
    """A replicas row, from either store, as read: never raises."""
    return Replica(
        id=text(rid),
        server=text(server),
        host=text(host),
        port=whole_number(port),
        region=text(region),
        zone=text(zone),
        weight=whole_number(weight),
        state=text(state),
        lease_expires_at=seconds(lease),
        updated_at=seconds(updated_at) or 0.0,
    )

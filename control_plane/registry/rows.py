"""Registry rows decoded defensively: a column of any type or shape never raises here.

The registry has other writers, so a row may hold anything its column type allows (SQLite:
anything at all). Decoding keeps a value it cannot convert exactly as it was read; routing's
validation (``registry.validate``) then reports it as a problem naming the row, the field and
the value, and leaves that row out. Nothing here raises, so one bad row never stops a read.

JSON columns (``hostnames`` in SQLite, ``spec``) are decoded by :func:`json_document`, which is
bounded before it parses: at most :data:`MAX_JSON_BYTES` bytes and :data:`MAX_JSON_DEPTH`
levels of nesting (a 2 KB row of 1,000 ``[`` would otherwise raise RecursionError in the
parser, and a decoded value that deep would raise it again wherever it is compared or printed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from control_plane.registry.model import LoadRecord, Replica, RolloutRow, Server


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


MAX_DIGITS = 20  # an integer column longer than this is no count, port or epoch


def whole_number(value: Any) -> Any:
    """An integer column: an int (also from an integral float or a decimal string), else the
    value as read, for validation to report (never silently cut: 8181.5 stays 8181.5)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        digits = value.strip().removeprefix("+").removeprefix("-")
        # ASCII digits only ('²'.isdigit() is true, int('²') raises), and few enough that int()
        # never refuses them (it does past 4,300): anything else is reported by validation.
        if digits.isascii() and digits.isdigit() and len(digits) <= MAX_DIGITS:
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


# A registry JSON column: a server's spec is a few hundred bytes and 4 levels deep at most.
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
EXCERPT_CHARS = 80


def excerpt(raw: str) -> str:
    """``raw`` short enough for a problem, a log line or a message: up to
    :data:`EXCERPT_CHARS` + 32 characters as they are, else the first :data:`EXCERPT_CHARS`
    and the whole length (so an excerpt of an excerpt is the excerpt)."""
    if len(raw) <= EXCERPT_CHARS + 32:
        return raw
    return f"{raw[:EXCERPT_CHARS]}... ({len(raw):,} characters)"


def too_deep(raw: str) -> bool:
    """Whether ``[`` and ``{`` nest more than :data:`MAX_JSON_DEPTH` levels in ``raw``
    (outside JSON strings). Linear, never recurses; a count of brackets answers the common
    case without a scan."""
    if raw.count("[") + raw.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    in_string = escaped = False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


def json_document(raw: str) -> Any:
    """``raw`` decoded as JSON, or a :class:`Malformed` saying why not. Never raises:
    bytes and depth are checked before the parser runs, and the parser's own RecursionError
    and MemoryError are caught as well."""
    if len(raw) > MAX_JSON_BYTES:  # kept short: a row may hold megabytes
        return Malformed(excerpt(raw), f"longer than {MAX_JSON_BYTES:,} characters")
    if too_deep(raw):
        return Malformed(raw, f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError, MemoryError):
        return Malformed(raw, "not valid JSON")


def json_list(value: Any) -> tuple[Any, ...]:
    """A JSON list column as a tuple of its elements (of any type); a column that is not a
    JSON list (or is too long or too deep, see :func:`json_document`) becomes one
    :class:`Malformed` element, so validation names it."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raw = text(value)
    decoded = json_document(raw)
    if isinstance(decoded, Malformed):
        return (decoded,)
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
    revision: Any = None,
    registered_at: Any = None,
) -> Replica:
    """A replicas row, from either store, as read: never raises. ``revision`` and
    ``registered_at`` are None in rows written before their columns: "" and 0."""
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
        revision=text(revision),
        registered_at=seconds(registered_at) or 0.0,
    )


def load_record(
    publisher: Any, group: Any, written_at: Any, interval: Any, size: Any, totals: Any
) -> LoadRecord:
    """A published-load row (``control_plane/fleet/``): a time or interval that is not a finite
    number is NaN, totals that are not bytes are None (``fleet`` reports either); never raises."""
    length = whole_number(size)
    return LoadRecord(
        publisher=text(publisher),
        group=text(group),
        written_at=_number(written_at),
        interval=_number(interval),
        totals=bytes(totals) if isinstance(totals, bytes | bytearray) else None,
        size=length if isinstance(length, int) and not isinstance(length, bool) else 0,
    )


MAX_ROLLOUT_KEY = 512  # characters of a rollout row's server, state and holder kept


def rollout_row(
    server: Any,
    state: Any,
    holder: Any,
    lease_expires_at: Any,
    written_at: Any,
    size: Any,
    body: Any,
) -> RolloutRow:
    """A rollout row (``control_plane/rollout/``): texts cut to :data:`MAX_ROLLOUT_KEY`, a time
    that is not a finite number is NaN, a body that is not text is None; never raises."""
    length = whole_number(size)
    return RolloutRow(
        server=text(server)[:MAX_ROLLOUT_KEY],
        state=text(state)[:MAX_ROLLOUT_KEY],
        holder=text(holder)[:MAX_ROLLOUT_KEY],
        lease_expires_at=_number(lease_expires_at),
        written_at=_number(written_at),
        body=body if isinstance(body, str) else None,
        size=length if isinstance(length, int) and not isinstance(length, bool) else 0,
    )


def _number(value: Any) -> float:
    number = seconds(value)
    return math.nan if number is None else number

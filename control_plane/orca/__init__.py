"""ORCA load reports from replicas: what a replica says about its own load, encoded the two ways
Envoy and gRPC read it (the ``endpoint-load-metrics`` header, TEXT or binary, and the
``xds.data.orca.v3.OrcaLoadReport`` bytes of the ``-bin`` trailer and the out-of-band stream).

Owns ``LoadReport`` (a validated value), its encodings and ``Reporter`` (a callback turned into
a header, never raising). Stdlib only: replicas install routeplane for this and must not need
protobuf or grpc; it imports nothing else from ``control_plane``. ``orca.asgi`` and ``orca.wsgi``
are stdlib too; ``orca.grpc`` is the one module that imports grpc.

The TEXT grammar is the one Envoy 1.40 parses (probed on the binary): ``TEXT `` then
``name=value`` pairs separated by commas; names are the five scalar fields,
``named_metrics.<key>`` and ``utilization.<key>`` (``request_cost.<key>`` makes Envoy reject the
whole header, so ``to_text`` refuses it); a key holding ``,``, ``:`` or ``=`` breaks the header,
and so does a repeated name.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

HEADER: Final = "endpoint-load-metrics"
BINARY_HEADER: Final = "endpoint-load-metrics-bin"

MAX_ENTRIES: Final = 64
"""Named entries (named_metrics, utilization and request_cost together) in one report."""
MAX_NAME_BYTES: Final = 128

SCALARS: Final = (
    "cpu_utilization",
    "mem_utilization",
    "application_utilization",
    "rps_fractional",
    "eps",
)
MAPS: Final = ("named_metrics", "utilization", "request_cost")
FRACTIONS: Final = frozenset({"mem_utilization", "utilization"})
"""Fields the ORCA proto documents as fractions in [0, 1]; the rest are any finite value >= 0."""

# OrcaLoadReport's field numbers (xds/data/orca/v3/orca_load_report.proto).
_FIELD_NUMBERS: Final = {
    "cpu_utilization": 1,
    "mem_utilization": 2,
    "request_cost": 4,
    "utilization": 5,
    "rps_fractional": 6,
    "eps": 7,
    "named_metrics": 8,
    "application_utilization": 9,
}
_FORBIDDEN_NAME_CHARACTERS: Final = frozenset(",:=")

Metrics = Mapping[str, float]


def _empty() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadReport:
    """One ORCA load report. A scalar left ``None`` is not sent; maps are name -> value.

    Every value is finite and >= 0 (``mem_utilization`` and ``utilization`` values <= 1);
    names are 1-128 bytes of printable ASCII without ``,``, ``:`` or ``=`` (what the TEXT
    header can carry); at most 64 named entries in all. ``ValueError`` names the field and
    value otherwise. The maps are copied into read-only mappings.
    """

    cpu_utilization: float | None = None
    mem_utilization: float | None = None
    application_utilization: float | None = None
    rps_fractional: float | None = None
    eps: float | None = None
    named_metrics: Metrics = field(default_factory=_empty)
    utilization: Metrics = field(default_factory=_empty)
    request_cost: Metrics = field(default_factory=_empty)

    def __post_init__(self) -> None:
        for name in SCALARS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _value(name, value, fraction=name in FRACTIONS))
        entries = 0
        for name in MAPS:
            raw = getattr(self, name)
            if not isinstance(raw, Mapping):
                raise ValueError(f"{name}: expected a mapping of name to number, not {raw!r}")
            entries += len(raw)
            if entries > MAX_ENTRIES:
                raise ValueError(
                    f"{name}: more than {MAX_ENTRIES} named entries in one report "
                    f"({entries} so far)"
                )
            clean = {
                _name(name, key): _value(f"{name}.{key}", value, fraction=name in FRACTIONS)
                for key, value in raw.items()
            }
            object.__setattr__(self, name, MappingProxyType(dict(sorted(clean.items()))))

    def __hash__(self) -> int:
        return hash(
            (
                *(getattr(self, name) for name in SCALARS),
                *(tuple(getattr(self, name).items()) for name in MAPS),
            )
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoadReport):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in SCALARS) and all(
            dict(getattr(self, n)) == dict(getattr(other, n)) for n in MAPS
        )

    @property
    def empty(self) -> bool:
        """Nothing to say (no scalar set, no named entry)."""
        return all(getattr(self, n) is None for n in SCALARS) and not any(
            getattr(self, n) for n in MAPS
        )

    @classmethod
    def from_mapping(cls, metrics: Mapping[str, float]) -> LoadReport:
        """From flat names as the TEXT form spells them: ``{"application_utilization": 0.9,
        "named_metrics.kv_cache": 0.5}``. An unknown name is a ValueError naming it."""
        scalars: dict[str, float] = {}
        maps: dict[str, dict[str, float]] = {name: {} for name in MAPS}
        for flat, value in metrics.items():
            if not isinstance(flat, str):
                raise ValueError(f"metric name {flat!r}: expected a string")
            prefix, dot, key = flat.partition(".")
            if flat in SCALARS:
                scalars[flat] = value
            elif dot and prefix in MAPS:
                maps[prefix][key] = value
            else:
                known = ", ".join((*SCALARS, *(f"{m}.<name>" for m in MAPS)))
                raise ValueError(f"unknown metric {flat!r}: expected one of {known}")
        return cls(**scalars, **maps)  # type: ignore[arg-type]

    def to_mapping(self) -> dict[str, float]:
        """The flat form ``from_mapping`` reads (scalars set, then each map's entries)."""
        flat = {name: getattr(self, name) for name in SCALARS if getattr(self, name) is not None}
        for name in MAPS:
            flat.update({f"{name}.{key}": value for key, value in getattr(self, name).items()})
        return flat

    def to_text(self) -> str:
        """The ``endpoint-load-metrics`` header value in Envoy's TEXT form, e.g.
        ``TEXT application_utilization=0.9, rps_fractional=1, named_metrics.kv_cache=0.5``.
        ``request_cost`` cannot travel this way (Envoy 1.40 rejects the whole header): a
        report holding it is a ValueError; use ``to_header_value(binary=True)``."""
        if self.request_cost:
            raise ValueError(
                f"request_cost {dict(self.request_cost)!r}: the TEXT header cannot carry it "
                "(Envoy rejects the whole header); send the binary form"
            )
        pairs = [
            f"{name}={_number(value)}"
            for name, value in self.to_mapping().items()
            if not name.startswith("request_cost.")
        ]
        return "TEXT " + ", ".join(pairs)

    def to_bytes(self) -> bytes:
        """A serialized ``xds.data.orca.v3.OrcaLoadReport`` (fields in number order, map
        entries sorted by key). Zero scalars are
        left out, as proto3 does; map entries always carry their value, as upb writes them."""
        out = bytearray()
        for name, number in sorted(_FIELD_NUMBERS.items(), key=lambda item: item[1]):
            value = getattr(self, name)
            if name in MAPS:
                for key, entry_value in value.items():
                    entry = bytearray()
                    key_bytes = key.encode()
                    entry += _tag(1, 2) + _varint(len(key_bytes)) + key_bytes
                    entry += _tag(2, 1) + struct.pack("<d", entry_value)
                    out += _tag(number, 2) + _varint(len(entry)) + entry
            elif value:  # None and 0.0 are not sent
                out += _tag(number, 1) + struct.pack("<d", value)
        return bytes(out)

    def to_header_value(self, *, binary: bool = False) -> str:
        """The value of ``header_name(binary=...)``: TEXT, or base64 of ``to_bytes``."""
        if binary:
            return base64.b64encode(self.to_bytes()).decode("ascii")
        return self.to_text()


def header_name(*, binary: bool = False) -> str:
    return BINARY_HEADER if binary else HEADER


def parse_assignments(assignments: Iterable[str]) -> LoadReport:
    """``["application_utilization=0.9", "named_metrics.kv_cache=0.5"]`` (the CLI's and the
    report file's form) -> LoadReport; ValueError naming the bad assignment. A name given twice
    is an error (Envoy rejects a header that repeats one)."""
    metrics: dict[str, float] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise ValueError(f"{assignment!r}: expected METRIC=VALUE")
        if name in metrics:
            raise ValueError(f"{assignment!r}: {name} is given twice")
        try:
            metrics[name] = float(text)
        except ValueError:
            raise ValueError(f"{assignment!r}: {text!r} is not a number") from None
    return LoadReport.from_mapping(metrics)


ReportSource = Callable[[], "LoadReport | None"]
"""What the middlewares, the interceptor and the service call: the report now, or None."""


def as_source(report: LoadReport | ReportSource | None) -> ReportSource:
    """A fixed report (or None) as a callable; a callable as it is."""
    if report is None or isinstance(report, LoadReport):
        fixed = report
        return lambda: fixed
    if not callable(report):
        raise ValueError(f"report: expected a LoadReport or a callable, not {report!r}")
    return report


class Reporter:
    """A report callback made safe for a response: ``header()`` calls it once and returns the
    header to add, or None when the callback returned None or an empty report. A callback that
    raises or returns anything but a LoadReport (or a report the chosen form cannot carry) adds
    nothing: ``failures`` counts those, ``last_error`` says the latest. Never raises, never
    logs. Counters are updated without a lock (a lost increment is harmless)."""

    __slots__ = ("binary", "failures", "last_error", "source")

    def __init__(self, report: LoadReport | ReportSource, *, binary: bool = False) -> None:
        self.source = as_source(report)
        self.binary = binary
        self.failures = 0
        self.last_error = ""

    def report(self) -> LoadReport | None:
        """The callback's report, or None (nothing to send, or a failure counted)."""
        try:
            report = self.source()
        except Exception as exc:  # noqa: BLE001 -- a user callback; counted, never propagated
            self._fail(f"report callback raised {type(exc).__name__}: {exc}")
            return None
        if report is None:
            return None
        if not isinstance(report, LoadReport):
            self._fail(f"report callback returned {type(report).__name__}, not a LoadReport")
            return None
        return None if report.empty else report

    def header(self) -> tuple[str, str] | None:
        report = self.report()
        if report is None:
            return None
        try:
            return header_name(binary=self.binary), report.to_header_value(binary=self.binary)
        except ValueError as exc:
            self._fail(str(exc))
            return None

    def _fail(self, error: str) -> None:
        self.failures += 1
        self.last_error = error[:500]


def _name(field_name: str, key: object) -> str:
    if not isinstance(key, str):
        raise ValueError(f"{field_name}: name {key!r} is not a string")
    size = len(key.encode("utf-8", "replace"))
    if not 1 <= size <= MAX_NAME_BYTES:
        raise ValueError(
            f"{field_name}: name {key[:40]!r}{'...' if size > 40 else ''} is {size} bytes; "
            f"names are 1-{MAX_NAME_BYTES} bytes"
        )
    for char in key:
        if not "!" <= char <= "~" or char in _FORBIDDEN_NAME_CHARACTERS:
            raise ValueError(
                f"{field_name}: name {key!r} holds {char!r}; names are printable ASCII "
                "without spaces, ',', ':' or '=' (what the endpoint-load-metrics header carries)"
            )
    return key


def _value(name: str, value: object, *, fraction: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name}: {value!r} is not a finite number >= 0")
    if fraction and number > 1:
        raise ValueError(f"{name}: {value!r} is not a fraction in [0, 1]")
    return number + 0.0  # -0.0 -> 0.0


def _number(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

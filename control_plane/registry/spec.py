"""A server's routing policy: the ``spec`` a server row carries, parsed and checked.

Pure; used at write time (``servers apply`` refuses a bad spec, naming the field) and again by
routing (a row written by anything else is checked before it is routed). Every field has a
default; ``ServerSpec()`` is what ``servers create`` gives.

    path_prefix: /                      # route only this prefix (and below)
    regions: []                         # regions whose replicas may serve; [] = any
    failover: cross_region              # or local_only: never leave the proxy's region
    load_balancing: least_request       # or round_robin
                                        # or {consistent_hash: {header: H} | {cookie: C, ttl: 1h}}
                                        # or {utilization: {metric: named_metrics.kv_cache,
                                        #   blackout_period: 10s, weight_expiration_period: 3m,
                                        #   weight_update_period: 1s, error_utilization_penalty: 1,
                                        #   out_of_band: {period: 1s}}}: weights from the
                                        #   replicas' ORCA reports; every key optional
    timeouts: {request: 60s, idle: 300s, connect: 1s}   # request applies to plain HTTP only
    retries: 2                          # only where safe: connect failure, refused stream,
                                        # reset before any byte was sent
    max_requests_per_replica: 0         # 0 = no limit (circuit breaker)
    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s,
                        max_ejection_percent: 50}          # or off
    health_check: off                   # or {http: /healthz} | {grpc: ""}; interval 5s,
                                        # timeout 1s, unhealthy_threshold 2, healthy_threshold 1
    cold_start: {mode: reject, timeout: 30s}   # no READY replica: reject = 503 at once with
                                        # retry-after; hold = Envoy holds the request until a
                                        # replica is READY, 503 after timeout
    traffic:                            # the split among revisions; default: 100% to latest
      - {revision: v1, percent: 90}     # whole percents adding up to 100; a revision at most
      - {revision: v2, percent: 10, tag: canary}   # once, a tag at most once; latest = the
      - {revision: latest, percent: 0, tag: next}  # newest revision with a READY replica
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.registry.errors import ValidationError
from control_plane.registry.rows import Malformed, excerpt, json_document

_PATH = re.compile(r"^/[\x21-\x7e]*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HEADER = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
# What Envoy's metric_names_for_computing_utilization reads as a utilization
# (source/common/orca/orca_load_metrics.cc): a top-level field, or a key (or ``*``: the
# largest) of one of the report's maps. Keys are kept to characters the TEXT header form can
# carry (no ``,``, ``=``, ``:`` or space).
_UTILIZATION_FIELDS = ("application_utilization", "cpu_utilization", "mem_utilization")
_UTILIZATION_MAPS = ("named_metrics", "utilization", "request_cost")
_METRIC = re.compile(rf"^(?:{'|'.join(_UTILIZATION_MAPS)})\.(?:\*|[A-Za-z0-9_./-]{{1,100}})$")
LOAD_BALANCING_POLICIES = ("least_request", "round_robin")


@dataclass(frozen=True, slots=True, kw_only=True)
class HashOn:
    header: str = ""
    cookie: str = ""
    cookie_ttl: float = 0.0


# Utilization balancing: the error penalty travels as a 32-bit float; the out-of-band period
# defaults to Envoy's and gRPC's own (10s).
ERROR_PENALTY_MAX = 1_000_000.0
OUT_OF_BAND_PERIOD = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Utilization:
    """Balancing by the replicas' own ORCA load reports (Envoy's
    client_side_weighted_round_robin, gRPC's weighted_round_robin): a replica's weight is
    requests/s / utilization. Defaults are Envoy's and gRPC's own."""

    # "" = the clients' fallback: application_utilization, then cpu_utilization. Either client
    # uses application_utilization whenever a report carries one above 0, metric or not.
    metric: str = ""
    blackout_period: float = 10.0  # a replica's reports count only after this long
    weight_expiration_period: float = 180.0  # no report this long: weighed as one without
    weight_update_period: float = 1.0  # how often weights are recomputed (at least 100ms)
    error_utilization_penalty: float = 1.0  # utilization += penalty * errors/s / requests/s
    # None: reports ride on responses (header or trailer); else the clients open an
    # OpenRcaService stream to each replica and ask for a report every this many seconds.
    out_of_band_period: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    kind: str  # "http" or "grpc"
    target: str  # HTTP path or gRPC service name
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Autoscaling:
    """How many replicas a server should run for its load (see ``load/autoscale.py``)."""

    target_concurrency: float = 0.0  # in-flight requests per replica; 0 = no recommendation
    min_replicas: int = 0
    max_replicas: int = 20
    buffer_replicas: int = 0
    scale_up_window: float = 0.0
    scale_down_window: float = 60.0
    # The alternative to target_concurrency (at most one of the two above 0): the utilization
    # replicas report (ORCA) per replica, a fraction of 1; ``metric`` names it ("": Envoy's
    # order, application_utilization where reported above 0, else cpu_utilization).
    target_utilization: float = 0.0
    metric: str = ""


# ORCA metrics a utilization rule may name: the standard ones, or one named metric.
UTILIZATION_METRICS = ("application_utilization", "cpu_utilization", "mem_utilization")
NAMED_METRIC_PREFIX = "named_metrics."
_NAMED_METRIC = re.compile(r"named_metrics\.[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
TARGET_UTILIZATION_MIN = 0.01


# Autoscaling's one float, besides durations: 0 (no recommendation) or in this range, so that
# in_flight / target stays a finite, small number (5e-324 made it inf).
TARGET_CONCURRENCY_MIN = 0.01
TARGET_CONCURRENCY_MAX = 1_000_000.0

COLD_START_MODES = ("reject", "hold")


@dataclass(frozen=True, slots=True, kw_only=True)
class ColdStart:
    """What a request meets when the server has no READY replica (see ``translate``)."""

    mode: str = "reject"  # reject: 503 at once; hold: Envoy holds it until a replica is READY
    timeout: float = 30.0  # hold: how long a request may wait for a replica


LATEST = "latest"  # in a traffic split: the newest revision with a READY replica
MAX_TRAFFIC_TARGETS = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficTarget:
    """One entry of a server's traffic split: ``percent`` of its requests to ``revision`` (a
    replica revision, or ``latest``); ``tag`` gives the revision an address of its own that
    bypasses the split."""

    revision: str
    percent: int
    tag: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSpec:
    path_prefix: str = "/"
    regions: tuple[str, ...] = ()
    cross_region: bool = True
    hash_on: HashOn | None = None
    # "least_request" (the default), "round_robin", "consistent_hash" (then ``hash_on`` is
    # set) or "utilization" (then ``utilization`` holds its knobs).
    balancing: str = "least_request"
    utilization: Utilization | None = None
    # Per try: time to the first response byte and between bytes (Envoy per_try_idle_timeout);
    # a response that keeps sending is never cut by it. 0 = none.
    request_timeout: float = 60.0
    idle_timeout: float = 300.0
    # The whole stream, request and response (Envoy max_stream_duration); 0 = none.
    max_stream: float = 0.0
    connect_timeout: float = 1.0
    retries: int = 2
    max_requests_per_replica: int = 0
    outlier_detection: OutlierDetection | None = OutlierDetection()
    health_check: HealthCheck | None = None
    autoscaling: Autoscaling | None = None
    cold_start: ColdStart = ColdStart()
    # Empty: 100% to latest (every replica, as before revisions, while they carry none).
    traffic: tuple[TrafficTarget, ...] = ()


DEFAULT = ServerSpec()
KNOWN_FIELDS = frozenset(
    {
        "path_prefix",
        "regions",
        "failover",
        "load_balancing",
        "timeouts",
        "retries",
        "max_requests_per_replica",
        "outlier_detection",
        "health_check",
        "autoscaling",
        "cold_start",
        "traffic",
    }
)


def duration(field: str, value: Any, *, positive: bool = False) -> float:
    """``"300s"``, ``"1.5s"``, ``"250ms"``, ``"5m"``, ``"1h"`` or a number of seconds.

    Envoy takes whole milliseconds: a duration is 0 or at least 1ms (a fraction below would
    silently become 0, which means "none" or is refused). ``positive``: Envoy wants > 0."""
    if isinstance(value, bool):
        raise ValidationError(field, value, "expected a duration such as 30s or 250ms")
    if isinstance(value, int) and not -1 <= value <= 86_400:
        raise ValidationError(field, value, "must be between 0s and 24h")  # float() may overflow
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ValidationError(field, value, "expected a duration such as 30s or 250ms")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 <= seconds <= 86_400:  # also refuses nan and inf
        raise ValidationError(field, value, "must be between 0s and 24h")
    if 0 < seconds < 0.001 or (positive and seconds < 0.001):
        raise ValidationError(field, value, "must be at least 1ms" + ("" if positive else " or 0"))
    return seconds + 0.0  # -0.0 -> 0.0


def integer(field: str, value: Any, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(field, value, f"expected a whole number from {low} to {high}")
    return value


def _mapping(field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(field, value, "expected a mapping")
    return value


def _no_extra(field: str, value: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(value) - allowed)
    if extra:
        raise ValidationError(f"{field}.{extra[0]}", value[extra[0]], "unknown field")


def decode(text: str) -> dict[str, Any]:
    """A spec column (JSON) as a mapping for :func:`parse_spec`; raises ValidationError
    naming ``spec`` and an excerpt of the text, whatever the text (too long, too deep, not
    JSON, not an object: see ``rows.json_document``)."""
    value = json_document(text or "{}")
    if isinstance(value, Malformed):
        raise ValidationError("spec", excerpt(value.raw), value.reason)
    if not isinstance(value, dict):
        raise ValidationError("spec", excerpt(text), "expected a JSON object")
    return value


def parse_spec(raw: Mapping[str, Any] | None, *, protocol: str = "http") -> ServerSpec:
    """A checked ServerSpec; raises ValidationError naming the field (``spec.<path>``)."""
    if not raw:
        return DEFAULT
    spec = _mapping("spec", raw)
    _no_extra("spec", spec, set(KNOWN_FIELDS))
    from control_plane.registry import validate

    prefix = str(spec.get("path_prefix", "/"))
    if (
        not _PATH.match(prefix)
        or len(prefix) > 1024
        or "?" in prefix
        or "#" in prefix
        or "//" in prefix
    ):
        raise ValidationError(
            "spec.path_prefix", prefix, "expected a path starting with / (printable ASCII)"
        )
    regions_raw = spec.get("regions", [])
    if not isinstance(regions_raw, list | tuple):
        raise ValidationError("spec.regions", regions_raw, "expected a list of regions")
    regions = tuple(validate.region("spec.regions", str(r)) for r in regions_raw)
    failover = spec.get("failover", "cross_region")
    if failover not in ("cross_region", "local_only"):
        raise ValidationError("spec.failover", failover, "expected cross_region or local_only")
    hash_on, balancing, utilization = _load_balancing(spec.get("load_balancing", "least_request"))
    timeouts = _mapping("spec.timeouts", spec.get("timeouts", {}))
    _no_extra("spec.timeouts", timeouts, {"request", "idle", "connect", "max_stream"})
    request = duration("spec.timeouts.request", timeouts.get("request", DEFAULT.request_timeout))
    idle = duration("spec.timeouts.idle", timeouts.get("idle", DEFAULT.idle_timeout))
    connect = duration(
        "spec.timeouts.connect", timeouts.get("connect", DEFAULT.connect_timeout), positive=True
    )
    return ServerSpec(
        path_prefix=prefix,
        regions=regions,
        cross_region=failover == "cross_region",
        hash_on=hash_on,
        balancing=balancing,
        utilization=utilization,
        request_timeout=request,
        idle_timeout=idle,
        max_stream=duration("spec.timeouts.max_stream", timeouts.get("max_stream", 0.0)),
        connect_timeout=connect,
        retries=integer("spec.retries", spec.get("retries", DEFAULT.retries), low=0, high=10),
        max_requests_per_replica=integer(
            "spec.max_requests_per_replica",
            spec.get("max_requests_per_replica", 0),
            low=0,
            high=1_000_000,
        ),
        outlier_detection=_outlier(spec.get("outlier_detection", {})),
        health_check=_health_check(spec.get("health_check", "off"), protocol=protocol),
        autoscaling=_autoscaling(spec.get("autoscaling")),
        cold_start=_cold_start(spec.get("cold_start", {})),
        traffic=_traffic(spec.get("traffic")),
    )


def _traffic(value: Any) -> tuple[TrafficTarget, ...]:
    """``spec.traffic``: a list of {revision, percent, tag?}; percents whole, adding up to 100;
    no revision and no tag twice."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_TRAFFIC_TARGETS:
        raise ValidationError(
            "spec.traffic",
            excerpt(str(value)),
            f"expected a list of 1 to {MAX_TRAFFIC_TARGETS} {{revision, percent, tag}} entries",
        )
    from control_plane.registry import validate

    targets: list[TrafficTarget] = []
    revisions: dict[str, int] = {}
    tags: dict[str, int] = {}
    for i, entry in enumerate(value):
        field = f"spec.traffic[{i}]"
        raw = _mapping(field, entry)
        _no_extra(field, raw, {"revision", "percent", "tag"})
        if "revision" not in raw:
            raise ValidationError(f"{field}.revision", None, "required")
        revision = raw["revision"]
        if revision != LATEST:
            revision = validate.revision(f"{field}.revision", revision)
            if not revision:
                raise ValidationError(f"{field}.revision", raw["revision"], "required")
        if revision in revisions:
            raise ValidationError(
                f"{field}.revision", revision, f"repeats spec.traffic[{revisions[revision]}]"
            )
        revisions[revision] = i
        if "percent" not in raw:
            raise ValidationError(f"{field}.percent", None, "required")
        percent = integer(f"{field}.percent", raw["percent"], low=0, high=100)
        tag = raw.get("tag", "")
        if tag != "":
            tag = validate.name(f"{field}.tag", tag) if isinstance(tag, str) else None
            if tag is None:
                raise ValidationError(f"{field}.tag", raw["tag"], "expected a name such as canary")
            if tag in tags:
                raise ValidationError(f"{field}.tag", tag, f"repeats spec.traffic[{tags[tag]}]")
            tags[tag] = i
        targets.append(TrafficTarget(revision=revision, percent=percent, tag=tag))
    total = sum(t.percent for t in targets)
    if total != 100:
        raise ValidationError(
            "spec.traffic", [t.percent for t in targets], f"percents add up to {total}, not 100"
        )
    return tuple(targets)


def _cold_start(value: Any) -> ColdStart:
    raw = _mapping("spec.cold_start", value)
    _no_extra("spec.cold_start", raw, {"mode", "timeout"})
    mode = raw.get("mode", "reject")
    if mode not in COLD_START_MODES:
        raise ValidationError("spec.cold_start.mode", mode, "expected reject or hold")
    timeout = duration("spec.cold_start.timeout", raw.get("timeout", 30.0), positive=True)
    if timeout > 3600:
        raise ValidationError("spec.cold_start.timeout", raw.get("timeout"), "at most 1h")
    return ColdStart(mode=mode, timeout=timeout)


def _autoscaling(value: Any) -> Autoscaling | None:
    if value is None:
        return None
    raw = _mapping("spec.autoscaling", value)
    fields = {
        "target_concurrency",
        "min_replicas",
        "max_replicas",
        "buffer_replicas",
        "scale_up_window",
        "scale_down_window",
        "target_utilization",
        "metric",
    }
    _no_extra("spec.autoscaling", raw, fields)
    base = Autoscaling()
    target = raw.get("target_concurrency", base.target_concurrency)
    if (
        isinstance(target, bool)
        or not isinstance(target, int | float)
        # The range first: it refuses nan and inf too, and a 400-digit int without converting
        # it (math.isfinite raised OverflowError, out of routing for every row).
        or not (target == 0 or TARGET_CONCURRENCY_MIN <= target <= TARGET_CONCURRENCY_MAX)
    ):
        raise ValidationError(
            "spec.autoscaling.target_concurrency",
            target,
            f"expected 0 (off) or a number from {TARGET_CONCURRENCY_MIN:g} "
            f"to {TARGET_CONCURRENCY_MAX:g}",
        )
    utilization, metric = _utilization_rule(raw, concurrency=target)
    low = integer(
        "spec.autoscaling.min_replicas",
        raw.get("min_replicas", base.min_replicas),
        low=0,
        high=10_000,
    )
    high = integer(
        "spec.autoscaling.max_replicas",
        raw.get("max_replicas", max(base.max_replicas, low)),
        low=max(1, low),
        high=10_000,
    )
    return Autoscaling(
        target_concurrency=float(target) + 0.0,  # -0.0 -> 0.0
        min_replicas=low,
        max_replicas=high,
        buffer_replicas=integer(
            "spec.autoscaling.buffer_replicas",
            raw.get("buffer_replicas", base.buffer_replicas),
            low=0,
            high=10_000,
        ),
        scale_up_window=duration(
            "spec.autoscaling.scale_up_window", raw.get("scale_up_window", base.scale_up_window)
        ),
        scale_down_window=duration(
            "spec.autoscaling.scale_down_window",
            raw.get("scale_down_window", base.scale_down_window),
        ),
        target_utilization=utilization,
        metric=metric,
    )


def _utilization_rule(raw: Mapping[str, Any], *, concurrency: float) -> tuple[float, str]:
    """``target_utilization`` and ``metric`` of an autoscaling block: a fraction in
    [TARGET_UTILIZATION_MIN, 1], or 0 (off); never with a target_concurrency above 0; a metric
    only with a target_utilization."""
    target = raw.get("target_utilization", 0.0)
    if (
        isinstance(target, bool)
        or not isinstance(target, int | float)
        or not (target == 0 or TARGET_UTILIZATION_MIN <= target <= 1)  # refuses nan, inf, 1e400
    ):
        raise ValidationError(
            "spec.autoscaling.target_utilization",
            target,
            f"expected 0 (off) or a fraction from {TARGET_UTILIZATION_MIN:g} to 1",
        )
    if target > 0 and concurrency > 0:
        raise ValidationError(
            "spec.autoscaling.target_utilization",
            target,
            "set target_concurrency or target_utilization, not both (the other one 0)",
        )
    metric = raw.get("metric", "")
    if metric != "":
        if not isinstance(metric, str) or not (
            metric in UTILIZATION_METRICS or _NAMED_METRIC.fullmatch(metric)
        ):
            raise ValidationError(
                "spec.autoscaling.metric",
                metric,
                f"expected one of {', '.join(UTILIZATION_METRICS)} or named_metrics.NAME "
                "(NAME: letters, digits, _ . -; at most 64)",
            )
        if not target > 0:
            raise ValidationError(
                "spec.autoscaling.metric",
                metric,
                "a metric is for target_utilization: set target_utilization above 0",
            )
    return float(target) + 0.0, metric


def view_metric(spec: ServerSpec) -> str:
    """The utilization metric the load view reads for ``spec`` ("" = Envoy's own order,
    application_utilization then cpu_utilization): the autoscaling rule's, else the one
    utilization balancing weighs by when the view can read it (a scalar or one
    ``named_metrics.NAME``; never a wildcard or another map)."""
    if spec.autoscaling is not None and spec.autoscaling.metric:
        return spec.autoscaling.metric
    metric = spec.utilization.metric if spec.utilization is not None else ""
    if metric in UTILIZATION_METRICS or _NAMED_METRIC.fullmatch(metric):
        return metric
    return ""


_LB_EXPECTED = "expected least_request, round_robin, {consistent_hash: ...} or {utilization: ...}"


def _load_balancing(value: Any) -> tuple[HashOn | None, str, Utilization | None]:
    """``spec.load_balancing``: (hash_on, balancing, utilization)."""
    if isinstance(value, str) and value in LOAD_BALANCING_POLICIES:
        return None, value, None
    if not isinstance(value, Mapping):
        raise ValidationError("spec.load_balancing", excerpt(str(value)), _LB_EXPECTED)
    _no_extra("spec.load_balancing", value, {"consistent_hash", "utilization"})
    if len(value) != 1:
        raise ValidationError(
            "spec.load_balancing",
            sorted(value),
            "give one of consistent_hash, utilization (affinity and utilization exclude "
            "each other)",
        )
    if "utilization" in value:
        return None, "utilization", _utilization(value["utilization"])
    return _hash_on(value["consistent_hash"]), "consistent_hash", None


def _utilization(value: Any) -> Utilization:
    field = "spec.load_balancing.utilization"
    raw = _mapping(field, {} if value is None else value)
    _no_extra(
        field,
        raw,
        {
            "metric",
            "blackout_period",
            "weight_expiration_period",
            "weight_update_period",
            "error_utilization_penalty",
            "out_of_band",
        },
    )
    base = Utilization()
    metric = raw.get("metric", "")
    if not isinstance(metric, str) or not (
        metric == "" or metric in _UTILIZATION_FIELDS or _METRIC.match(metric)
    ):
        raise ValidationError(
            f"{field}.metric",
            excerpt(str(metric)),
            "expected application_utilization, cpu_utilization, mem_utilization or "
            "named_metrics.<key>, utilization.<key>, request_cost.<key> (a key of letters, "
            "digits and _ . / -, or * for the largest)",
        )
    update = duration(
        f"{field}.weight_update_period",
        raw.get("weight_update_period", base.weight_update_period),
        positive=True,
    )
    if update < 0.1:
        raise ValidationError(
            f"{field}.weight_update_period", raw["weight_update_period"], "at least 100ms"
        )
    penalty = raw.get("error_utilization_penalty", base.error_utilization_penalty)
    if (
        isinstance(penalty, bool)
        or not isinstance(penalty, int | float)
        or not 0 <= penalty <= ERROR_PENALTY_MAX  # also refuses nan and a 400-digit int
    ):
        raise ValidationError(
            f"{field}.error_utilization_penalty",
            penalty,
            f"expected a number from 0 to {ERROR_PENALTY_MAX:g}",
        )
    oob: float | None = None
    if "out_of_band" in raw and raw["out_of_band"] not in (None, False):
        band = {} if raw["out_of_band"] is True else raw["out_of_band"]
        band = _mapping(f"{field}.out_of_band", band)
        _no_extra(f"{field}.out_of_band", band, {"period"})
        oob = duration(
            f"{field}.out_of_band.period", band.get("period", OUT_OF_BAND_PERIOD), positive=True
        )
    return Utilization(
        metric=metric,
        blackout_period=duration(
            f"{field}.blackout_period", raw.get("blackout_period", base.blackout_period)
        ),
        weight_expiration_period=duration(
            f"{field}.weight_expiration_period",
            raw.get("weight_expiration_period", base.weight_expiration_period),
            positive=True,
        ),
        weight_update_period=update,
        error_utilization_penalty=float(penalty) + 0.0,  # -0.0 -> 0.0
        out_of_band_period=oob,
    )


def _hash_on(value: Any) -> HashOn:
    on = _mapping("spec.load_balancing.consistent_hash", value)
    _no_extra("spec.load_balancing.consistent_hash", on, {"header", "cookie", "ttl"})
    header = str(on.get("header", "")).lower()
    cookie = str(on.get("cookie", ""))
    if bool(header) == bool(cookie):
        raise ValidationError(
            "spec.load_balancing.consistent_hash", dict(on), "give exactly one of header, cookie"
        )
    if header and not _HEADER.match(header):
        raise ValidationError("spec.load_balancing.consistent_hash.header", header, "bad name")
    if cookie and not re.match(r"^[A-Za-z0-9_.-]+$", cookie):
        raise ValidationError("spec.load_balancing.consistent_hash.cookie", cookie, "bad name")
    ttl = duration("spec.load_balancing.consistent_hash.ttl", on.get("ttl", "0s"))
    return HashOn(header=header, cookie=cookie, cookie_ttl=ttl)


def _outlier(value: Any) -> OutlierDetection | None:
    if value in ("off", False, None):
        return None
    raw = _mapping("spec.outlier_detection", value)
    _no_extra(
        "spec.outlier_detection",
        raw,
        {"consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent"},
    )
    base = OutlierDetection()
    return OutlierDetection(
        consecutive_5xx=integer(
            "spec.outlier_detection.consecutive_5xx",
            raw.get("consecutive_5xx", base.consecutive_5xx),
            low=1,
            high=1000,
        ),
        interval=duration(
            "spec.outlier_detection.interval", raw.get("interval", base.interval), positive=True
        ),
        base_ejection_time=duration(
            "spec.outlier_detection.base_ejection_time",
            raw.get("base_ejection_time", base.base_ejection_time),
            positive=True,
        ),
        max_ejection_percent=integer(
            "spec.outlier_detection.max_ejection_percent",
            raw.get("max_ejection_percent", base.max_ejection_percent),
            low=0,
            high=100,
        ),
    )


def _health_check(value: Any, *, protocol: str) -> HealthCheck | None:
    if value in ("off", False, None):
        return None
    raw = _mapping("spec.health_check", value)
    _no_extra(
        "spec.health_check",
        raw,
        {"http", "grpc", "interval", "timeout", "unhealthy_threshold", "healthy_threshold"},
    )
    if ("http" in raw) == ("grpc" in raw):
        raise ValidationError("spec.health_check", dict(raw), "give exactly one of http, grpc")
    kind = "http" if "http" in raw else "grpc"
    target = str(raw[kind] or "")
    if kind == "http" and not target.startswith("/"):
        raise ValidationError("spec.health_check.http", target, "expected a path such as /healthz")
    if kind == "grpc" and protocol == "http":
        raise ValidationError("spec.health_check.grpc", target, "needs protocol grpc or http2")
    return HealthCheck(
        kind=kind,
        target=target,
        interval=duration("spec.health_check.interval", raw.get("interval", 5.0), positive=True),
        timeout=duration("spec.health_check.timeout", raw.get("timeout", 1.0), positive=True),
        unhealthy_threshold=integer(
            "spec.health_check.unhealthy_threshold",
            raw.get("unhealthy_threshold", 2),
            low=1,
            high=100,
        ),
        healthy_threshold=integer(
            "spec.health_check.healthy_threshold",
            raw.get("healthy_threshold", 1),
            low=1,
            high=100,
        ),
    )

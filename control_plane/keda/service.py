"""KEDA's ``externalscaler.ExternalScaler`` over a load view: what a ScaledObject's
``external-push`` trigger asks of ``serve --keda-listen``.

The trigger's metadata names ``server`` (required) and ``region`` (optional, "*": the server's
total). The answers come from that server's row in the view (``admin/loadview.py``), so they
are whatever the view shows: a lone process's load, a ``serve --workers`` group's sums.

- ``GetMetricSpec``: one metric, ``routeplane-desired-replicas``, target 1 (AverageValue).
  ``GetMetrics``: the row's ``desired_replicas``, the count ``routeplane load`` shows. The HPA
  computes ceil(metric / target) = desired_replicas: the autoscaling rule (target concurrency,
  buffer, bounds, scale-up and scale-down windows) is applied once, by routeplane. Following
  in-flight with target = target_concurrency instead would drop the buffer and the bounds and
  apply the HPA's windows on top of routeplane's (or none of routeplane's).
- ``IsActive`` and ``StreamIsActive``: whether desired_replicas is above 0. A cold start (a
  request that met no replica: a reject 503 or hold-mode demand) moves the recommendation to
  at least 1 at once, and it goes back to 0 only after the rule's scale-down window of quiet;
  so the server is active from its first cold start until then (always, with min_replicas 1
  or more). The stream sends the answer at once, then only when it changes, looked at when the
  view's version moves and the server is among what changed (never by polling).
- A server whose row has no recommendation (no autoscaling rule, or a region its spec does not
  list) is FAILED_PRECONDITION on every call: there is no count to follow, and guessing one
  (its ready replicas, 0) could scale it wrongly. Unknown server or region: NOT_FOUND; missing
  or bad metadata: INVALID_ARGUMENT; each message names the key and the value (cut to
  ``SHOWN`` characters).

Bounds: every metadata value at most ``MAX_VALUE_CHARS``, at most ``MAX_ENTRIES`` entries (KEDA
sends the trigger's whole metadata: other keys are ignored), the request's bytes by the
server's receive limit (``MAX_REQUEST_BYTES``, set where it is served); at most ``max_streams``
``StreamIsActive`` streams at once (RESOURCE_EXHAUSTED past it); a stream whose client stops
reading is cut with DEADLINE_EXCEEDED once a write has waited ``write_timeout`` (as a stalled
xDS stream is, ``xds/server.py``).

Imports the load view protocol and its rows, and the generated protos; nothing else of
routeplane.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from control_plane.admin.loadview import LoadView
from control_plane.keda.pb import externalscaler_pb2, externalscaler_pb2_grpc
from control_plane.load.totals import LoadRow

log = structlog.get_logger("routeplane.keda")

METRIC = "routeplane-desired-replicas"
TARGET = 1  # the HPA's AverageValue target: ceil(desired_replicas / 1) = desired_replicas
MAX_STREAMS = 1000  # StreamIsActive streams at once: one per ScaledObject per KEDA operator
WRITE_TIMEOUT = 10.0  # seconds a write may wait for a client that stopped reading
FIRST_ANSWER_TIMEOUT = 5.0  # seconds a call waits for the view's first rows (a group starting)
MAX_VALUE_CHARS = 253  # a metadata value routeplane reads (a server name is at most 63)
MAX_ENTRIES = 64  # metadata entries
MAX_REQUEST_BYTES = 16 * 1024  # a request's bytes (the server's receive limit)
SHOWN = 64  # characters of a value a message echoes


def shorten(text: str, limit: int = SHOWN) -> str:
    """A client's value as a message may echo it."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text) - limit} more)"


class RequestError(Exception):
    """A call that cannot be answered: its gRPC status and a message naming what."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What a trigger follows: a server, in a region ("*": all of them)."""

    server: str
    region: str = "*"


def target_of(ref: Any) -> Target:
    """A ``ScaledObjectRef`` -> its target; RequestError (INVALID_ARGUMENT) naming the key and
    the value when the metadata lacks ``server`` or a value is too long."""
    metadata = ref.scalerMetadata
    if len(metadata) > MAX_ENTRIES:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"scalerMetadata has {len(metadata)} entries: at most {MAX_ENTRIES}",
        )
    values = {}
    for key in ("server", "region"):
        value = metadata.get(key, "")
        if len(value) > MAX_VALUE_CHARS or not value.isprintable():
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid scalerMetadata {key} {shorten(value)!r}: expected a name of at most "
                f"{MAX_VALUE_CHARS} printable characters",
            )
        values[key] = value.strip()
    if not values["server"]:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "scalerMetadata server is missing: name the routeplane server to scale",
        )
    return Target(server=values["server"], region=values["region"] or "*")


def desired(view: LoadView, target: Target) -> int:
    """``target``'s desired replicas in ``view``; RequestError when it has none."""
    rows = view.rows_of(target.server)
    if not rows:
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            f"scalerMetadata server {shorten(target.server)!r}: no such server in the load view",
        )
    row: LoadRow | None = next((r for r in rows if r.region == target.region), None)
    if row is None:
        regions = ", ".join(shorten(r.region) for r in rows[:10])
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            f"scalerMetadata region {shorten(target.region)!r}: server "
            f"{shorten(target.server)!r} has no such region (it has {regions})",
        )
    if row.desired_replicas is None:
        why = (
            "its spec has no autoscaling rule (autoscaling.target_concurrency or "
            "target_utilization above 0)"
            if target.region == "*"
            else "its spec lists no regions, so only region '*' has a recommendation"
        )
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"server {shorten(target.server)!r} region {shorten(target.region)!r} has no "
            f"desired replicas: {why}",
        )
    return row.desired_replicas


class KedaScaler(externalscaler_pb2_grpc.ExternalScalerServicer):  # type: ignore[misc]
    """KEDA's external scaler over ``view``; ``versions()`` is the view's version now, then
    after every change (``LoadService.watch``, the supervisor's ``AggregateService.versions``);
    it yields its first once the view has rows to show."""

    def __init__(
        self,
        *,
        view: LoadView,
        versions: Callable[[], AsyncIterator[int]],
        max_streams: int = MAX_STREAMS,
        write_timeout: float = WRITE_TIMEOUT,
        first_answer_timeout: float = FIRST_ANSWER_TIMEOUT,
    ) -> None:
        self._view = view
        self._versions = versions
        self.max_streams = max_streams
        self.write_timeout = write_timeout
        self._first_answer_timeout = first_answer_timeout
        self.streams = 0  # StreamIsActive streams open now

    async def _ready(self) -> None:
        """Wait for the view's first rows (at once, but for a group still starting)."""
        versions = self._versions()
        try:
            async with asyncio.timeout(self._first_answer_timeout):
                await anext(versions)
        except TimeoutError:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, "the load view has no rows yet; try again"
            ) from None
        finally:
            await versions.aclose()  # type: ignore[attr-defined]

    async def _desired(self, ref: Any) -> int:
        target = target_of(ref)
        await self._ready()
        return desired(self._view, target)

    async def IsActive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            count = await self._desired(request)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        return externalscaler_pb2.IsActiveResponse(result=count > 0)

    async def GetMetricSpec(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await self._desired(request)  # a ScaledObject naming no such server fails here
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        return externalscaler_pb2.GetMetricSpecResponse(
            metricSpecs=[
                externalscaler_pb2.MetricSpec(
                    metricName=METRIC, targetSize=TARGET, targetSizeFloat=float(TARGET)
                )
            ]
        )

    async def GetMetrics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if request.metricName and request.metricName != METRIC:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"metricName {shorten(request.metricName)!r}: routeplane serves {METRIC!r}",
                )
            count = await self._desired(request.scaledObjectRef)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        # Both fields: KEDA reads the float only when it is above 0.
        return externalscaler_pb2.GetMetricsResponse(
            metricValues=[
                externalscaler_pb2.MetricValue(
                    metricName=METRIC, metricValue=count, metricValueFloat=float(count)
                )
            ]
        )

    async def StreamIsActive(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            target = target_of(request)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        if self.streams >= self.max_streams:
            log.warning("keda_stream_refused", streams=self.streams, limit=self.max_streams)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.streams} StreamIsActive streams open: at most {self.max_streams}",
            )
        self.streams += 1
        try:
            await self._follow(target, context)
        finally:
            self.streams -= 1

    async def _follow(self, target: Target, context: grpc.aio.ServicerContext) -> None:
        """Send whether ``target`` is active now, then each time it changes."""
        view = self._view
        sent: bool | None = None
        seen: int | None = None
        versions = self._versions()
        try:
            async with asyncio.timeout(self._first_answer_timeout):
                version = await anext(versions)
            while True:
                changed = view.changes_since(seen) if seen is not None else None
                seen = version
                if changed is None or target.server in changed:
                    try:
                        active = desired(view, target) > 0
                    except RequestError as exc:
                        await context.abort(exc.code, exc.message)
                    if active != sent:
                        await self._write(context, active)
                        sent = active
                version = await anext(versions)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the load view has no rows yet; try again"
            )
        finally:
            await versions.aclose()  # type: ignore[attr-defined]

    async def _write(self, context: grpc.aio.ServicerContext, active: bool) -> None:
        """Write one answer; cut the stream if it waits ``write_timeout`` (a client that
        stopped reading filled its flow-control window)."""
        try:
            async with asyncio.timeout(self.write_timeout):
                await context.write(externalscaler_pb2.IsActiveResponse(result=active))
        except TimeoutError:
            log.warning("keda_stream_stalled", write_timeout=self.write_timeout)
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the client stopped reading; reconnect"
            )


def add_to(server: grpc.aio.Server, scaler: KedaScaler) -> None:
    """Serve ``scaler`` on ``server``."""
    externalscaler_pb2_grpc.add_ExternalScalerServicer_to_server(scaler, server)

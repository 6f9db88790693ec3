"""ORCA for grpc.aio servers: the per-call ``endpoint-load-metrics-bin`` trailer
(``OrcaInterceptor``) and the out-of-band ``xds.service.orca.v3.OpenRcaService``
(``add_orca_service``).

The one module of ``control_plane.orca`` that imports grpc; no generated code and no protobuf:
requests are decoded by hand (``decode_request``), reports are ``LoadReport.to_bytes``. Imports
nothing from ``control_plane`` but ``control_plane.orca``; never logs.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc
import grpc.aio

from control_plane.orca import BINARY_HEADER, LoadReport, Reporter, ReportSource

SERVICE: Final = "xds.service.orca.v3.OpenRcaService"
METHOD: Final = f"/{SERVICE}/StreamCoreMetrics"
DEFAULT_MIN_INTERVAL: Final = 1.0
"""Seconds; gRPC's own ORCA services (Java, Go) never report faster than this by default."""
DEFAULT_MAX_STREAMS: Final = 1000
MAX_INTERVAL: Final = 86_400.0
MAX_REQUEST_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRequest:
    """An ``OrcaLoadReportRequest``: the interval asked for (seconds; 0 when unset) and the
    request-cost names (ignored by this server, which sends what the report holds)."""

    report_interval: float = 0.0
    request_cost_names: tuple[str, ...] = ()


def decode_request(data: bytes) -> ReportRequest:
    """Decode an ``OrcaLoadReportRequest``; ValueError on malformed or oversized input.
    Unknown fields are skipped, as protobuf does."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(
            f"OrcaLoadReportRequest of {len(data)} bytes (at most {MAX_REQUEST_BYTES})"
        )
    interval, names = 0.0, []
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == 2:
            assert isinstance(value, bytes)
            interval = _duration(value)
        elif number == 2 and wire_type == 2:
            assert isinstance(value, bytes)
            names.append(value.decode("utf-8", "replace"))
    return ReportRequest(report_interval=interval, request_cost_names=tuple(names))


class OrcaInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Adds the ``endpoint-load-metrics-bin`` trailer (a serialized OrcaLoadReport) to every
    call that completes without an error, unary or streaming; ``report()`` is called once per
    call, as it ends. None (or an empty report) adds nothing; a callback that raises or returns
    garbage adds nothing and the call goes on (``failures`` counts them). The OpenRcaService's
    own stream is left alone."""

    def __init__(self, report: LoadReport | ReportSource) -> None:
        self._reporter = Reporter(report, binary=True)

    @property
    def failures(self) -> int:
        return self._reporter.failures

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method == METHOD:
            return handler
        if handler.response_streaming:
            inner = handler.unary_stream or handler.stream_stream
            wrapped_stream = self._streaming(inner)
            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(
                wrapped_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner = handler.unary_unary or handler.stream_unary
        wrapped_unary = self._unary(inner)
        make = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make(
            wrapped_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
            self._add_trailer(context)
            return result

        return call

    def _streaming(self, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):  # a handler that writes with context.write
                await result
            elif result is not None:
                for item in result:
                    yield item
            self._add_trailer(context)

        return call

    def _add_trailer(self, context: grpc.aio.ServicerContext) -> None:
        report = self._reporter.report()
        if report is None:
            return
        existing = tuple(context.trailing_metadata() or ())
        context.set_trailing_metadata((*existing, (BINARY_HEADER, report.to_bytes())))


class _OpenRcaService:
    def __init__(
        self, report: LoadReport | ReportSource, *, min_interval: float, max_streams: int
    ) -> None:
        self._reporter = Reporter(report, binary=True)
        self.min_interval = min_interval
        self.max_streams = max_streams
        self.open_streams = 0

    async def stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            asked = decode_request(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"OrcaLoadReportRequest: {exc}")
            return
        if self.open_streams >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.open_streams} ORCA streams open (at most {self.max_streams})",
            )
            return
        interval = min(max(asked.report_interval, self.min_interval), MAX_INTERVAL)
        self.open_streams += 1
        try:
            while True:
                report = self._reporter.report()
                if report is not None:
                    yield report.to_bytes()
                await asyncio.sleep(interval)
        finally:
            self.open_streams -= 1


class OrcaService:
    """What ``add_orca_service`` registered: ``open_streams`` now, ``failures`` of the callback."""

    def __init__(self, service: _OpenRcaService) -> None:
        self._service = service

    @property
    def open_streams(self) -> int:
        return self._service.open_streams

    @property
    def failures(self) -> int:
        return self._service._reporter.failures


def add_orca_service(
    server: grpc.aio.Server,
    report: LoadReport | ReportSource,
    *,
    min_interval: float = DEFAULT_MIN_INTERVAL,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> OrcaService:
    """Register ``OpenRcaService/StreamCoreMetrics`` on a grpc.aio server (before it starts).
    Each stream sends ``report()`` at the interval its request asks for, never faster than
    ``min_interval`` seconds (a tick whose report is None sends nothing); beyond
    ``max_streams`` open streams a new one ends with RESOURCE_EXHAUSTED."""
    if not min_interval > 0:
        raise ValueError(f"min_interval: {min_interval!r} is not a number of seconds > 0")
    if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
        raise ValueError(f"max_streams: {max_streams!r} is not a whole number >= 1")
    service = _OpenRcaService(report, min_interval=min_interval, max_streams=max_streams)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE, {"StreamCoreMetrics": grpc.unary_stream_rpc_method_handler(service.stream)}
            )
        ]
    )
    return OrcaService(service)


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    out: list[tuple[int, int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            value, at = _read_varint(data, at)
            out.append((number, 0, value))
        elif wire_type == 1 or wire_type == 5:
            size = 8 if wire_type == 1 else 4
            if at + size > len(data):
                raise ValueError("truncated fixed-width field")
            out.append((number, wire_type, data[at : at + size]))
            at += size
        elif wire_type == 2:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise ValueError("truncated length-delimited field")
            out.append((number, 2, data[at : at + size]))
            at += size
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    return out


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value & 0xFFFF_FFFF_FFFF_FFFF, at


def _duration(data: bytes) -> float:
    seconds = nanos = 0
    for number, wire_type, value in _fields(data):
        if wire_type != 0:
            continue
        assert isinstance(value, int)
        signed = value - (1 << 64) if value >= 1 << 63 else value
        if number == 1:
            seconds = signed
        elif number == 2:
            nanos = signed
    return max(0.0, seconds + nanos / 1e9)

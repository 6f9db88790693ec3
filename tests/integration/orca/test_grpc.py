"""ORCA on a real grpc.aio server called by a real grpc.aio client: the
``endpoint-load-metrics-bin`` trailer on unary and streaming calls, and the out-of-band
``OpenRcaService`` stream (its interval floor, its stream bound, bad requests), decoded with
xds-protos.

grpc core treats ``endpoint-load-metrics-bin`` as its own metadata (the weighted round robin
policy reads it): a Python client never sees it among the trailers, while other trailers pass.
So the trailer is read on the server, by an interceptor outside OrcaInterceptor, after the
call; that it crosses the wire is proven by Envoy's weighted split (``test_envoy_split``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2
from xds.data.orca.v3 import orca_load_report_pb2
from xds.service.orca.v3 import orca_pb2

from control_plane.orca import LoadReport
from control_plane.orca.grpc import METHOD, OrcaInterceptor, add_orca_service, decode_request

Report = orca_load_report_pb2.OrcaLoadReport
Start = Callable[..., Awaitable[tuple[grpc.aio.Channel, Any]]]


def echo_handlers() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-app", "kept"),))
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"%d" % i

    def sync_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request.upper()

    async def fails(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
        return b""

    return grpc.method_handlers_generic_handler(
        "t.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "SyncUnary": grpc.unary_unary_rpc_method_handler(sync_unary),
            "Fails": grpc.unary_unary_rpc_method_handler(fails),
        },
    )


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def make(
        *, interceptor: Any = None, oob: dict[str, Any] | None = None, seen: Seen | None = None
    ) -> Any:
        interceptors = [seen] if seen else []
        server = grpc.aio.server(
            interceptors=[*interceptors, *([interceptor] if interceptor else [])]
        )
        server.add_generic_rpc_handlers([echo_handlers()])
        service = add_orca_service(server, **oob) if oob is not None else None
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return channel, service

    try:
        yield make
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(grace=None)


class Seen(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The trailers each call ended with, as the server is about to send them."""

    def __init__(self) -> None:
        self.trailers: list[Any] = []
        self.added = asyncio.Event()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: bytes, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_unary(request, context)
                finally:
                    self.trailers.append(tuple(context.trailing_metadata() or ()))
                    self.added.set()

            return grpc.unary_unary_rpc_method_handler(unary)
        inner_stream = handler.unary_stream

        async def stream(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            async for item in inner_stream(request, context):
                yield item
            self.trailers.append(tuple(context.trailing_metadata() or ()))
            self.added.set()

        return grpc.unary_stream_rpc_method_handler(stream)


async def recorded(seen: Seen, count: int) -> None:
    """The server records a call's trailers as it ends, maybe after the client has its answer."""
    async with asyncio.timeout(10):
        while True:
            seen.added.clear()
            if len(seen.trailers) >= count:
                return
            await seen.added.wait()


def orca_trailer(metadata: Any) -> Report | None:
    values = [value for key, value in metadata or () if key == "endpoint-load-metrics-bin"]
    assert len(values) <= 1
    return Report.FromString(values[0]) if values else None


async def test_the_trailer_rides_on_unary_and_streaming_calls(start: Start) -> None:
    calls = 0

    def report() -> LoadReport:
        nonlocal calls
        calls += 1
        return LoadReport(application_utilization=0.9, named_metrics={"kv_cache": calls / 10})

    seen = Seen()
    channel, _ = await start(interceptor=OrcaInterceptor(report), seen=seen)
    call = channel.unary_unary("/t.Echo/Unary")(b"hi")
    assert await call == b"hi"
    assert tuple(await call.trailing_metadata()) == (("x-app", "kept"),)  # see the docstring
    stream = channel.unary_stream("/t.Echo/Stream")(b"")
    assert [item async for item in stream] == [b"0", b"1", b"2"]
    sync = channel.unary_unary("/t.Echo/SyncUnary")(b"a")
    assert await sync == b"A"

    await recorded(seen, 3)
    assert calls == 3
    assert ("x-app", "kept") in seen.trailers[0]
    reports = [orca_trailer(trailers) for trailers in seen.trailers]
    assert [report and dict(report.named_metrics) for report in reports] == [
        {"kv_cache": 0.1},
        {"kv_cache": 0.2},
        {"kv_cache": 0.3},
    ]
    assert reports[0] is not None
    assert reports[0].application_utilization == 0.9


async def test_a_failing_callback_or_a_failed_call_adds_no_trailer(start: Start) -> None:
    def broken() -> LoadReport:
        raise RuntimeError("no gpu")

    seen = Seen()
    interceptor = OrcaInterceptor(broken)
    channel, _ = await start(interceptor=interceptor, seen=seen)
    call = channel.unary_unary("/t.Echo/Unary")(b"hi")
    assert await call == b"hi"
    assert interceptor.failures == 1

    channel, _ = await start(interceptor=OrcaInterceptor(LoadReport(eps=1)), seen=seen)
    failed = channel.unary_unary("/t.Echo/Fails")(b"")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await failed
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await recorded(seen, 2)
    assert [orca_trailer(trailers) for trailers in seen.trailers] == [None, None]


def oob_request(seconds: int = 0, nanos: int = 0) -> bytes:
    request = orca_pb2.OrcaLoadReportRequest(request_cost_names=["tokens"])
    if seconds or nanos:
        request.report_interval.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    return bytes(request.SerializeToString())


async def test_the_out_of_band_stream_sends_the_current_report_at_the_floor(
    start: Start,
) -> None:
    current = [LoadReport(cpu_utilization=0.9)]
    channel, service = await start(oob={"report": lambda: current[0], "min_interval": 0.05})
    # Asked for 1 ns: the floor (50 ms here, 1 s by default) wins.
    stream = channel.unary_stream(METHOD)(oob_request(nanos=1))
    reports = aiter(stream)
    first = Report.FromString(await anext(reports))
    assert first.cpu_utilization == 0.9
    assert service.open_streams == 1
    current[0] = LoadReport(cpu_utilization=0.1, named_metrics={"q": 7})

    async def until_changed() -> Report:
        while True:
            report = Report.FromString(await anext(reports))
            if report.cpu_utilization == 0.1:
                return report

    changed = await asyncio.wait_for(until_changed(), timeout=10)
    assert dict(changed.named_metrics) == {"q": 7}
    stream.cancel()


async def test_out_of_band_streams_are_bounded_and_bad_requests_refused(start: Start) -> None:
    channel, service = await start(
        interceptor=OrcaInterceptor(LoadReport(eps=1)),
        oob={"report": LoadReport(eps=1), "min_interval": 0.05, "max_streams": 1},
    )
    first = channel.unary_stream(METHOD)(oob_request(seconds=30))
    # Its first report arrives at once; the stream holds its slot while it waits 30 s.
    assert Report.FromString(await anext(aiter(first))).eps == 1
    extra = channel.unary_stream(METHOD)(oob_request())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await anext(aiter(extra))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    bad = channel.unary_stream(METHOD)(b"\x0a\xff")  # a length running past the end
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await anext(aiter(bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "OrcaLoadReportRequest" in (info.value.details() or "")
    first.cancel()
    assert service.open_streams <= 1


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [(0, 0, 0.0), (1, 500_000_000, 1.5), (-5, 0, 0.0), (10**12, 0, 1e12), (0, 1, 1e-9)],
)
def test_decode_request_reads_the_interval_protobuf_wrote(
    seconds: int, nanos: int, expected: float
) -> None:
    decoded = decode_request(oob_request(seconds, nanos))
    assert decoded.report_interval == pytest.approx(expected)
    assert decoded.request_cost_names == ("tokens",)


@pytest.mark.parametrize(
    "data",
    [b"\x0a", b"\x0a\x05\x08", b"\xff" * 11, b"\x0b", b"\x00", b"\x08" + b"\x80" * 12],
    ids=repr,
)
def test_decode_request_refuses_malformed_bytes(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"truncated|varint|wire type|field number 0"):
        decode_request(data)
    with pytest.raises(ValueError, match="at most"):
        decode_request(b"\x12\x00" * 40_000)

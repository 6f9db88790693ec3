"""KEDA's external scaler over a load view, through a real gRPC server and KEDA's own stubs
(``control_plane/keda/pb``) on loopback. The view is a ``LoadSum`` (the supervisor's view),
fed totals as its workers would send them; what a real client cannot do on demand (stop
reading) is a fake context.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from control_plane.group.admin import LoadSum
from control_plane.keda import service
from control_plane.keda.pb import externalscaler_pb2, externalscaler_pb2_grpc
from control_plane.keda.service import METRIC, KedaScaler
from control_plane.load.totals import LoadSpec, LoadTotals, RegionTotals, ServerTotals, millionths
from control_plane.registry.spec import Autoscaling

RULE = Autoscaling(target_concurrency=2, min_replicas=0, max_replicas=10, scale_down_window=60)


class View:
    """A ``LoadSum`` and the versions iterator a watcher follows, moved by ``put``."""

    def __init__(self) -> None:
        self.sum = LoadSum(1)
        self.changed = asyncio.Condition()
        self.now = 0.0

    async def put(
        self, *servers: ServerTotals, specs: dict[str, LoadSpec], advance: float = 1.0
    ) -> None:
        self.now += advance
        self.sum.take_specs(0, specs)
        self.sum.take(0, LoadTotals(servers=servers, proxies=1, interval=1.0, at=self.now))
        self.sum.sum(now=self.now)
        async with self.changed:
            self.changed.notify_all()

    async def versions(self) -> AsyncIterator[int]:
        seen = -1
        while True:
            if self.sum.version != seen:
                seen = self.sum.version
                yield seen
            async with self.changed:
                await self.changed.wait()


def server(
    name: str,
    *,
    in_flight: float = 0,
    ready: int = 0,
    woken_at: float = -math.inf,
    cold_starts: int = 0,
) -> ServerTotals:
    regions = (
        RegionTotals(region="*", in_flight=millionths(in_flight), ready=ready),
        RegionTotals(region="us-west", in_flight=millionths(in_flight), ready=ready),
    )
    return ServerTotals(server=name, regions=regions, cold_starts=cold_starts, woken_at=woken_at)


SPECS = {
    "echo": LoadSpec(autoscaling=RULE, regions=("us-west",)),
    "gpu": LoadSpec(autoscaling=RULE),
    "plain": LoadSpec(),
}


def ref(**metadata: str) -> Any:
    return externalscaler_pb2.ScaledObjectRef(name="so", namespace="ns", scalerMetadata=metadata)


class Keda:
    """The view served by a real gRPC server on loopback, and a KEDA stub to it."""

    def __init__(self, view: View, scaler: KedaScaler, server: grpc.aio.Server, port: int):
        self.view, self.scaler, self.server = view, scaler, server
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = externalscaler_pb2_grpc.ExternalScalerStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)


async def start(**options: Any) -> Keda:
    view = View()
    await view.put(server("echo", ready=1), server("gpu"), server("plain", ready=1), specs=SPECS)
    scaler = KedaScaler(view=view.sum, versions=view.versions, **options)
    grpc_server = grpc.aio.server()
    service.add_to(grpc_server, scaler)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    return Keda(view, scaler, grpc_server, port)


async def until(condition: Callable[[], bool], *, what: str) -> None:
    """Wait for ``condition`` with a 5 s deadline (the event loop keeps running meanwhile)."""
    async with asyncio.timeout(5):
        # A counter the scaler keeps has no event to wait on: polled, with the deadline above.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert condition(), what


async def error_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.mark.parametrize(
    ("metadata", "code", "named"),
    [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "scalerMetadata server is missing"),
        ({"server": "  "}, grpc.StatusCode.INVALID_ARGUMENT, "scalerMetadata server is missing"),
        ({"server": "nope"}, grpc.StatusCode.NOT_FOUND, "scalerMetadata server 'nope'"),
        (
            {"server": "echo", "region": "mars"},
            grpc.StatusCode.NOT_FOUND,
            "scalerMetadata region 'mars'",
        ),
        ({"server": "plain"}, grpc.StatusCode.FAILED_PRECONDITION, "no autoscaling rule"),
        (
            {"server": "gpu", "region": "us-west"},
            grpc.StatusCode.FAILED_PRECONDITION,
            "lists no regions",
        ),
        ({"server": "x\n"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid scalerMetadata server"),
        (
            {"server": "echo", "region": "r" * 100_000},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid scalerMetadata region 'rrrr",
        ),
        (
            {f"k{i}": "v" for i in range(65)} | {"server": "echo"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "scalerMetadata has 66 entries: at most 64",
        ),
    ],
    ids=[
        "no-server",
        "blank-server",
        "unknown-server",
        "unknown-region",
        "no-rule",
        "region-not-listed",
        "control-character",
        "huge-region",
        "too-many-entries",
    ],
)
async def test_bad_metadata_is_an_error_naming_the_key_and_value_on_every_call(
    metadata: dict[str, str], code: grpc.StatusCode, named: str
) -> None:
    keda = await start()
    try:
        request = ref(**metadata)
        calls = [
            keda.stub.IsActive(request),
            keda.stub.GetMetricSpec(request),
            keda.stub.GetMetrics(
                externalscaler_pb2.GetMetricsRequest(scaledObjectRef=request, metricName=METRIC)
            ),
        ]
        stream = keda.stub.StreamIsActive(request)
        for error in [*[await error_of(c) for c in calls], await error_of(stream.read())]:
            assert error.code() == code, error.details()
            assert named in error.details()
            assert len(error.details()) < 400  # a huge value is echoed cut
    finally:
        await keda.close()


async def test_a_metric_it_does_not_serve_is_not_found() -> None:
    keda = await start()
    try:
        error = await error_of(
            keda.stub.GetMetrics(
                externalscaler_pb2.GetMetricsRequest(
                    scaledObjectRef=ref(server="echo"), metricName="cpu"
                )
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "metricName 'cpu'" in error.details()
    finally:
        await keda.close()


@pytest.mark.parametrize("in_flight", [0, 1, 2, 3, 7, 19, 40], ids=lambda n: f"in-flight-{n}")
async def test_ceil_of_metric_over_target_is_the_desired_replicas(in_flight: int) -> None:
    keda = await start()
    try:
        await keda.view.put(server("echo", in_flight=in_flight, ready=1), specs=SPECS)
        rows = {row.region: row for row in keda.view.sum.rows_of("echo")}
        for region in ("*", "us-west"):
            spec = await keda.stub.GetMetricSpec(ref(server="echo", region=region))
            (metric_spec,) = spec.metricSpecs
            value = await keda.stub.GetMetrics(
                externalscaler_pb2.GetMetricsRequest(
                    scaledObjectRef=ref(server="echo", region=region),
                    metricName=metric_spec.metricName,
                )
            )
            (metric,) = value.metricValues
            assert metric.metricValue == metric.metricValueFloat  # both fields, KEDA reads either
            hpa = math.ceil(metric.metricValueFloat / metric_spec.targetSizeFloat)
            assert hpa == rows[region].desired_replicas
            # From 1 ready, up at once (scale-up window 0), at most max_replicas.
            assert hpa == min(10, max(1, math.ceil(in_flight / 2)))
    finally:
        await keda.close()


async def test_the_stream_says_true_at_a_cold_start_once_and_is_active_agrees() -> None:
    keda = await start()
    try:
        stream = keda.stub.StreamIsActive(ref(server="gpu"))
        first = await stream.read()
        assert first.result is False
        assert (await keda.stub.IsActive(ref(server="gpu"))).result is False
        # Another server's load moves the view: nothing is sent on gpu's stream.
        await keda.view.put(server("echo", in_flight=5, ready=1), server("gpu"), specs=SPECS)
        # gpu's first cold start: a request met no replica.
        now = keda.view.now + 1
        await keda.view.put(
            server("echo", in_flight=5, ready=1),
            server("gpu", cold_starts=1, woken_at=now),
            specs=SPECS,
        )
        second = await asyncio.wait_for(stream.read(), 5)
        assert second.result is True
        assert (await keda.stub.IsActive(ref(server="gpu"))).result is True
        # More load, still active: no push (on change only). Quiet past the scale-down
        # window: false.
        await keda.view.put(
            server("gpu", in_flight=3, ready=1, cold_starts=1, woken_at=now),
            server("echo", ready=1),
            specs=SPECS,
        )
        await keda.view.put(
            server("gpu", ready=1, cold_starts=1, woken_at=now),
            server("echo", ready=1),
            specs=SPECS,
        )
        await keda.view.put(
            server("gpu", ready=1, cold_starts=1, woken_at=now),
            server("echo", ready=1),
            specs=SPECS,
            advance=62,
        )
        third = await asyncio.wait_for(stream.read(), 5)
        assert third.result is False
        assert (await keda.stub.IsActive(ref(server="gpu"))).result is False
        stream.cancel()
    finally:
        await keda.close()


async def test_a_stream_past_the_bound_is_refused_and_a_closed_one_frees_its_place() -> None:
    keda = await start(max_streams=2)
    try:
        streams = [keda.stub.StreamIsActive(ref(server="gpu")) for _ in range(2)]
        for stream in streams:
            assert (await stream.read()).result is False
        refused = await error_of(keda.stub.StreamIsActive(ref(server="gpu")).read())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2" in refused.details()
        streams[0].cancel()
        await until(lambda: keda.scaler.streams == 1, what="the cancelled stream closed")
        again = keda.stub.StreamIsActive(ref(server="gpu"))
        assert (await again.read()).result is False
        again.cancel()
        streams[1].cancel()
    finally:
        await keda.close()


class Aborted(Exception):
    pass


class StalledContext:
    """A stream whose client stopped reading: every write waits forever."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.writing = asyncio.Event()

    async def write(self, message: Any) -> None:
        self.writing.set()
        await asyncio.Event().wait()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


async def test_a_client_that_stops_reading_is_cut_after_the_write_timeout() -> None:
    view = View()
    await view.put(server("gpu"), specs=SPECS)
    scaler = KedaScaler(view=view.sum, versions=view.versions, write_timeout=0.05)
    context = StalledContext()
    with pytest.raises(Aborted):
        await asyncio.wait_for(scaler.StreamIsActive(ref(server="gpu"), context), 5)
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert scaler.streams == 0


async def test_a_cancel_while_writing_is_not_swallowed() -> None:
    view = View()
    await view.put(server("gpu"), specs=SPECS)
    scaler = KedaScaler(view=view.sum, versions=view.versions, write_timeout=60)
    context = StalledContext()
    task = asyncio.create_task(scaler.StreamIsActive(ref(server="gpu"), context))
    await asyncio.wait_for(context.writing.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert context.aborted is None
    assert scaler.streams == 0


async def test_a_stream_whose_server_goes_ends_with_not_found() -> None:
    keda = await start()
    try:
        stream = keda.stub.StreamIsActive(ref(server="gpu"))
        assert (await stream.read()).result is False
        # A whole update without gpu: the server went.
        await keda.view.put(server("echo", ready=1), server("plain", ready=1), specs=SPECS)
        error = await error_of(stream.read())
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "scalerMetadata server 'gpu'" in error.details()
        await until(lambda: keda.scaler.streams == 0, what="the stream's place freed")
    finally:
        await keda.close()

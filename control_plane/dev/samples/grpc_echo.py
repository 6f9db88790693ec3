"""A gRPC sample service that names the replica, in the shape of LLM token streaming.

``/routeplane.sample.Echo/Unary``: request bytes -> ``<name>:<request>``.
``/routeplane.sample.Echo/Stream``: request ``"<count>:<interval_ms>"`` -> ``count`` messages
``<name>:<i>``, one every ``interval_ms``. Raw bytes, no generated code needed on either side.
A grpc.aio server on its own event loop in a thread, so tests can run it beside their own loop.

With ``report`` (a ``LoadReport`` or a callable, ``reporting.sample_source``) every call ends
with the ORCA ``endpoint-load-metrics-bin`` trailer (``orca.grpc.OrcaInterceptor``) and the
server also serves ``xds.service.orca.v3.OpenRcaService`` (out-of-band reports, never faster
than ``orca_min_interval`` seconds).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from control_plane.dev.samples.reporting import SampleReport, sample_source
from control_plane.orca.grpc import DEFAULT_MIN_INTERVAL, OrcaInterceptor, add_orca_service

SERVICE = "routeplane.sample.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"


def handlers(name: str) -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return f"{name}:".encode() + request

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        count_text, _, interval_text = request.decode().partition(":")
        interval = int(interval_text or "0") / 1000
        for i in range(int(count_text or "1")):
            if i and interval:
                await asyncio.sleep(interval)  # the sample's pace (a token stream), not a wait
            yield f"{name}:{i}".encode()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


class GrpcEchoThread:
    """The sample service on a loopback port (free unless ``port``), on its own loop in a
    daemon thread; ``stop()`` ends it. ``orca_interceptor`` and ``orca_service`` are there
    when it reports (their ``failures`` count a failing report callback)."""

    def __init__(
        self,
        *,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        report: SampleReport = None,
        orca_min_interval: float = DEFAULT_MIN_INTERVAL,
    ) -> None:
        self.name = name
        source = sample_source(report)
        self.orca_interceptor = OrcaInterceptor(source) if source is not None else None
        self.orca_service = None
        self._loop = asyncio.new_event_loop()
        self._stopped = asyncio.Event()
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                interceptors = [self.orca_interceptor] if self.orca_interceptor else []
                server = grpc.aio.server(interceptors=interceptors)
                server.add_generic_rpc_handlers([handlers(name)])
                if source is not None:
                    self.orca_service = add_orca_service(
                        server, source, min_interval=orca_min_interval
                    )
                self.port = server.add_insecure_port(f"{host}:{port}")
                await server.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                raise
            started.set()
            try:
                await self._stopped.wait()
            finally:
                await server.stop(grace=1)

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(main())
            except BaseException:  # noqa: BLE001 -- reported to the constructor through failure
                pass
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"grpc-echo-{name}")
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        if not self.port:
            self.stop()
            raise OSError(f"gRPC echo {name}: could not listen on {host}:{port}")
        self.address = f"{host}:{self.port}"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=5)

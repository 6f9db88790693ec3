"""A gRPC sample service that names the replica, in the shape of LLM token streaming.

``/routeplane.sample.Echo/Unary``: request bytes -> ``<name>:<request>``.
``/routeplane.sample.Echo/Stream``: request ``"<count>:<interval_ms>"`` -> ``count`` messages
``<name>:<i>``, one every ``interval_ms``. Raw bytes, no generated code needed on either side.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc

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
                await asyncio.sleep(interval)
            yield f"{name}:{i}".encode()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


async def run(*, name: str, host: str, port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handlers(name)])
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


class GrpcEchoThread:
    """The sample service on a free loopback port, in a daemon thread with its own loop."""

    def __init__(self, *, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        holder: dict[str, object] = {}

        def main() -> None:
            asyncio.set_event_loop(self._loop)

            async def go() -> None:
                server = grpc.aio.server()
                server.add_generic_rpc_handlers([handlers(name)])
                holder["port"] = server.add_insecure_port(f"{host}:0")
                holder["server"] = server
                await server.start()
                started.set()
                await server.wait_for_termination()

            self._loop.run_until_complete(go())

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        started.wait(10)
        self.port = int(holder["port"])  # type: ignore[call-overload]
        self.address = f"{host}:{self.port}"
        self._server = holder["server"]

    def stop(self) -> None:
        server = self._server
        asyncio.run_coroutine_threadsafe(server.stop(0), self._loop).result(10)  # type: ignore[attr-defined]
        self._thread.join(timeout=5)

"""A gRPC sample service that names the replica, in the shape of LLM token streaming.

``/routeplane.sample.Echo/Unary``: request bytes -> ``<name>:<request>``.
``/routeplane.sample.Echo/Stream``: request ``"<count>:<interval_ms>"`` -> ``count`` messages
``<name>:<i>``, one every ``interval_ms``. Raw bytes, no generated code needed on either side.
A thread-pool server, so tests can run it beside their own event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "routeplane.sample.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"


def handlers(name: str) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return f"{name}:".encode() + request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        count_text, _, interval_text = request.decode().partition(":")
        interval = int(interval_text or "0") / 1000
        stop = threading.Event()
        context.add_callback(stop.set)
        for i in range(int(count_text or "1")):
            if i and interval and stop.wait(interval):
                return
            yield f"{name}:{i}".encode()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


def make_server(*, name: str, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers([handlers(name)])
    bound = server.add_insecure_port(f"{host}:{port}")
    return server, bound


class GrpcEchoThread:
    """The sample service on a free loopback port (its own thread pool)."""

    def __init__(self, *, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self._server, self.port = make_server(name=name, host=host)
        self.address = f"{host}:{self.port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)

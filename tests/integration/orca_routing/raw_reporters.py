"""Replicas that send ORCA reports exactly as told, garbage included, for the hostile-report
tests (routeplane's own reporting, ``control_plane.orca``, refuses to build a bad report).

``RawHttpEcho``: an HTTP/1.1 echo that answers its name and adds ``headers`` (name, value
pairs, settable while it runs) to every response. ``RawGrpcEcho``: the gRPC Echo sample's
Unary method, adding ``trailers`` to every reply, plus ``OpenRcaService/StreamCoreMetrics``
sending ``oob`` (serialized ``OrcaLoadReport`` bytes) every requested interval.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from xds.data.orca.v3 import orca_load_report_pb2
from xds.service.orca.v3 import orca_pb2

from control_plane.dev.samples.grpc_echo import SERVICE

ORCA_SERVICE = "xds.service.orca.v3.OpenRcaService"


def binary(report: orca_load_report_pb2.OrcaLoadReport) -> str:
    """``endpoint-load-metrics-bin`` as an HTTP header value (base64)."""
    return base64.b64encode(report.SerializeToString()).decode()


class RawHttpEcho:
    def __init__(self, *, name: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.name = name
        self.headers = headers
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                body = f"{echo.name}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                for key, value in echo.headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class RawGrpcEcho:
    def __init__(
        self,
        *,
        name: str,
        trailers: tuple[tuple[str, bytes | str], ...] = (),
        oob: bytes | None = None,
    ) -> None:
        self.name = name
        self.trailers = trailers
        self.oob = oob
        self._stopped = threading.Event()
        echo = self

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            if echo.trailers:
                context.set_trailing_metadata(echo.trailers)
            return f"{echo.name}:".encode() + request

        def stream_core_metrics(
            request: orca_pb2.OrcaLoadReportRequest, context: grpc.ServicerContext
        ) -> Iterator[orca_load_report_pb2.OrcaLoadReport]:
            period = max(0.1, request.report_interval.ToNanoseconds() / 1e9 or 1.0)
            done = threading.Event()
            context.add_callback(done.set)
            while not done.is_set() and not echo._stopped.is_set():
                if echo.oob is not None:
                    yield orca_load_report_pb2.OrcaLoadReport.FromString(echo.oob)
                done.wait(period)

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
                ),
                grpc.method_handlers_generic_handler(
                    ORCA_SERVICE,
                    {
                        "StreamCoreMetrics": grpc.unary_stream_rpc_method_handler(
                            stream_core_metrics,
                            request_deserializer=orca_pb2.OrcaLoadReportRequest.FromString,
                            response_serializer=orca_load_report_pb2.OrcaLoadReport.SerializeToString,
                        )
                    },
                ),
            ]
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self._server.start()

    def stop(self) -> None:
        self._stopped.set()
        self._server.stop(grace=None)

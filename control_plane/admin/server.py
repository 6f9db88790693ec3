"""The admin address: the admin gRPC API and plain HTTP (``/metrics``, ``/healthz``,
``/readyz`` and the status page, ``admin/page/``) on one port.

A connection that opens with the HTTP/2 preface is spliced to the admin gRPC server (bound to
an ephemeral loopback port); anything else is served as HTTP/1.1. Extra gRPC services (CSDS)
can be served next to the admin API, behind the same token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from control_plane.admin.http import AdminHttp, Ready
from control_plane.admin.page import StatusPage
from control_plane.admin.pb import admin_pb2_grpc
from control_plane.admin.service import AdminService

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PREFACE_TIMEOUT = 5.0  # seconds for a connection's first bytes (the HTTP/2 preface or not)


class BearerToken(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every admin call must carry ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        metadata = dict(details.invocation_metadata or ())
        if hmac.compare_digest(str(metadata.get("authorization", "")), self._expected):
            return await continuation(details)

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid admin token is needed")

        return grpc.unary_unary_rpc_method_handler(deny)


class AdminServer:
    def __init__(
        self,
        *,
        service: admin_pb2_grpc.AdminServicer,
        ready: Ready,
        token: str = "",
        metrics: Callable[[], Awaitable[bytes]] | None = None,
        handlers: Sequence[grpc.GenericRpcHandler] = (),
    ) -> None:
        self._service = service
        self._handlers = list(handlers)
        self._token = token
        # The status page reads what the admin API answers; a service that keeps a routing
        # table (one process) adds each server's registry fields, and its load view lists
        # the servers (``load_view``: this process's, or a supervisor's summed view).
        view = getattr(service, "load_view", None)
        page = StatusPage(
            service=service,
            table=service.table if isinstance(service, AdminService) else None,
            names=view.servers if view is not None else None,
            fields=getattr(service, "servers_page", None),  # serve --workers: a worker's
            token=token,
        )
        self._http = AdminHttp(ready=ready, token=token, metrics=metrics, page=page)
        self._grpc: grpc.aio.Server | None = None
        self._grpc_port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        interceptors = [BearerToken(self._token)] if self._token else []
        self._grpc = grpc.aio.server(interceptors=interceptors)
        admin_pb2_grpc.add_AdminServicer_to_server(self._service, self._grpc)
        if self._handlers:
            self._grpc.add_generic_rpc_handlers(self._handlers)
        self._grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        await self._grpc.start()
        try:
            self._server = await asyncio.start_server(self._accept, host, port)
        except OSError:
            await self.stop()  # nothing left running when the address is taken
            raise

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._grpc is not None:
            await self._grpc.stop(1)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # One deadline for the whole preface: a client sending it a byte at a time would
            # otherwise hold the connection for as long as it likes (issue 23: ~240 s).
            async with asyncio.timeout(PREFACE_TIMEOUT):
                head = await reader.read(len(PREFACE))
                while head and len(head) < len(PREFACE) and PREFACE.startswith(head):
                    more = await reader.read(len(PREFACE) - len(head))
                    if not more:
                        break
                    head += more
        except (TimeoutError, ConnectionError):
            writer.close()
            return
        if head == PREFACE:
            await self._splice(head, reader, writer)
        else:
            await self._http.handle(head, reader, writer)

    async def _splice(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._grpc_port)
        except OSError:
            writer.close()
            return
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
            finally:  # a cancel goes on up (the server is stopping)
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

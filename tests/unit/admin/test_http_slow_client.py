"""A client that asks for a large answer and never reads it holds only its own connection,
and only until ``WRITE_TIMEOUT`` (real sockets on loopback, the admin HTTP server in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from control_plane.admin import http
from control_plane.admin.http import AdminHttp


def handling(task: asyncio.Task[object]) -> bool:
    return getattr(task.get_coro(), "__qualname__", "") == "AdminHttp.handle"


BIG = b"x" * (64 * 1024 * 1024)  # far more than loopback's socket buffers hold


async def test_a_client_that_never_reads_does_not_block_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "WRITE_TIMEOUT", 1.0)

    async def metrics() -> bytes:
        return BIG

    server = await AdminHttp(ready=lambda: (True, "ok"), metrics=metrics).start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stuck.connect(("127.0.0.1", port))
        stuck.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")  # and never reads
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.endswith(b"ok\n")
        # The stuck connection is dropped once its answer waits WRITE_TIMEOUT (its handler
        # ends); the client then reads what was buffered, well short of the whole answer.
        handlers = [task for task in asyncio.all_tasks() if handling(task)]
        await asyncio.wait_for(asyncio.gather(*handlers), timeout=10)
        stuck.setblocking(False)
        loop = asyncio.get_running_loop()
        received = 0
        async with asyncio.timeout(20):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await loop.sock_recv(stuck, 1 << 20):
                    received += len(chunk)
        assert received < len(BIG)
    finally:
        stuck.close()
        server.close()
        await server.wait_closed()

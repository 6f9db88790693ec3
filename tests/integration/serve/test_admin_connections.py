"""The admin address bounds how long a connection may take to say what it is (issue 23: an
HTTP/2 preface sent a byte at a time held a connection for about 240 s), and keeps answering
everyone else meanwhile. A real ``AdminServer`` on loopback, real sockets."""

from __future__ import annotations

import asyncio
import time

from control_plane.admin.pb import admin_pb2_grpc
from control_plane.admin.server import PREFACE, PREFACE_TIMEOUT, AdminServer
from harness.waiting import free_port

BYTE_EVERY = 0.4  # seconds between the slow client's bytes: the preface takes 9.6 s this way


async def _healthz(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await reader.read()
    writer.close()
    return answer


def test_a_preface_sent_a_byte_at_a_time_is_cut_at_the_bound() -> None:
    async def scenario() -> None:
        port = free_port()
        admin = AdminServer(service=admin_pb2_grpc.AdminServicer(), ready=lambda: (True, "ok"))
        await admin.start("127.0.0.1", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            sent = 0
            closed = False
            for byte in PREFACE:
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                sent += 1
                # The server cut us when a read sees the end of the stream.
                try:
                    async with asyncio.timeout(BYTE_EVERY):
                        closed = await reader.read(1) == b""
                except TimeoutError:
                    pass
                except ConnectionError:
                    closed = True
                if closed:
                    break
                # Meanwhile everyone else is answered.
                assert b"200 OK" in await _healthz(port)
            held = time.monotonic() - started
            assert closed, f"the whole preface went through a byte at a time in {held:.1f} s"
            assert sent < len(PREFACE)
            # Not before the bound: a slow but honest client gets its PREFACE_TIMEOUT.
            assert held >= PREFACE_TIMEOUT * 0.9, held
            writer.close()
        finally:
            await admin.stop()

    asyncio.run(scenario())

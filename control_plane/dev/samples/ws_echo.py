"""A WebSocket echo server that names the replica: every message comes back as ``<name>:<msg>``."""

from __future__ import annotations

import asyncio
import threading

from websockets.asyncio.server import ServerConnection, serve


def handler_for(name: str):  # type: ignore[no-untyped-def]
    async def handler(connection: ServerConnection) -> None:
        async for message in connection:
            text = message.decode() if isinstance(message, bytes) else message
            await connection.send(f"{name}:{text}")

    return handler


async def run(*, name: str, host: str, port: int, stop: asyncio.Event | None = None) -> None:
    async with serve(handler_for(name), host, port) as server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()


class WsEchoThread:
    """A WebSocket echo on a free loopback port, in a daemon thread with its own loop."""

    def __init__(self, *, name: str, host: str = "127.0.0.1") -> None:
        import socket

        with socket.socket() as sock:
            sock.bind((host, 0))
            self.port = sock.getsockname()[1]
        self.name = name
        self.address = f"{host}:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self._loop)

            async def go() -> None:
                async with serve(handler_for(name), host, self.port):
                    ready.set()
                    await self._stop.wait()

            self._loop.run_until_complete(go())

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)

"""A minimal HTTP/1.1 endpoint on the admin address: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Route = Callable[[], tuple[int, str, bytes]]


class AdminHttp:
    def __init__(self, *, ready: Callable[[], tuple[bool, str]]) -> None:
        self._ready = ready
        self._routes: dict[str, Route] = {
            "/healthz": lambda: (200, "text/plain", b"ok\n"),
            "/readyz": self._readyz,
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest()),
        }

    def _readyz(self) -> tuple[int, str, bytes]:
        ready, reason = self._ready()
        return (200 if ready else 503), "text/plain", (reason + "\n").encode()

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(lambda r, w: self.handle(b"", r, w), host, port)

    async def handle(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one HTTP/1.1 request; ``head`` is what was already read from the socket."""
        try:
            request_line = head + await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            route = self._routes.get(path)
            status, content_type, body = route() if route else (404, "text/plain", b"not found\n")
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

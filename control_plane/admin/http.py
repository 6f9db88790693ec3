"""A minimal HTTP/1.1 endpoint on the admin address: ``/healthz``, ``/readyz``, ``/metrics``.

``ready`` may be a coroutine function and ``metrics`` replaces this process's exposition (the
``serve --workers`` supervisor asks its workers, see ``group/admin.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Answer = tuple[int, str, bytes]
Route = Callable[[], Answer | Awaitable[Answer]]
Ready = Callable[[], tuple[bool, str] | Awaitable[tuple[bool, str]]]

HEAD_TIMEOUT = 5.0  # seconds for a request's whole head, however slowly it trickles in


class AdminHttp:
    def __init__(
        self,
        *,
        ready: Ready,
        token: str = "",
        metrics: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self._ready = ready
        self._token = token
        self._metrics = metrics
        self._routes: dict[str, Route] = {
            "/healthz": lambda: (200, "text/plain", b"ok\n"),
            "/readyz": self._readyz,
            "/metrics": self._exposition,
            "/unauthorized": lambda: (401, "text/plain", b"a valid admin token is needed\n"),
        }

    async def _readyz(self) -> Answer:
        answer = self._ready()
        ready, reason = await answer if inspect.isawaitable(answer) else answer
        return (200 if ready else 503), "text/plain", (reason + "\n").encode()

    async def _exposition(self) -> Answer:
        body = await self._metrics() if self._metrics is not None else generate_latest()
        return 200, CONTENT_TYPE_LATEST, body

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(lambda r, w: self.handle(b"", r, w), host, port)

    async def handle(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one HTTP/1.1 request; ``head`` is what was already read from the socket."""
        try:
            data = head
            if b"\r\n\r\n" not in data:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    data += await reader.readuntil(b"\r\n\r\n")
            lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            parts = lines[0].split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            if (
                self._token
                and path not in ("/healthz", "/readyz")
                and not hmac.compare_digest(
                    headers.get("authorization", ""), f"Bearer {self._token}"
                )
            ):
                path = "/unauthorized"
            route = self._routes.get(path)
            answer = route() if route else (404, "text/plain", b"not found\n")
            status, content_type, body = await answer if inspect.isawaitable(answer) else answer
            reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 503: "Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()

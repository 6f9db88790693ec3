"""A minimal HTTP/1.1 endpoint on the admin address: ``/healthz``, ``/readyz``, ``/metrics``
and, when given one, the status page (``admin/page/``: ``/``, its files and ``/api/...``).

``ready`` may be a coroutine function and ``metrics`` replaces this process's exposition (the
``serve --workers`` supervisor asks its workers, see ``group/admin.py``).

Token rules (when a token is set): every path but ``/healthz`` and ``/readyz`` needs
``Authorization: Bearer <token>``, or the page's cookie, which ``/?token=<token>`` sets (a
browser cannot send a header when it navigates). Tokens are compared in constant time and
never logged (this module logs nothing). One request per connection; its head must arrive
within ``HEAD_TIMEOUT`` and its answer be taken within ``WRITE_TIMEOUT``, so a client that
never reads holds only its own connection.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from control_plane.admin.page import StatusPage

Answer = tuple[int, str, bytes]
Route = Callable[[], Answer | Awaitable[Answer]]
Ready = Callable[[], tuple[bool, str] | Awaitable[tuple[bool, str]]]

HEAD_TIMEOUT = 5.0  # seconds for a request's whole head, however slowly it trickles in
WRITE_TIMEOUT = 10.0  # seconds for a client to take an answer; then its connection is closed
MAX_QUERY_FIELDS = 16
OPEN = ("/healthz", "/readyz")
REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Unavailable",
}


def parse_query(query: str) -> dict[str, str]:
    """A query string's fields, the last value of each; bounded, never raises."""
    try:
        fields = parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        return {"": ""}  # too many fields: a field the page never accepts, so a 400
    return {name: values[-1] for name, values in fields.items()}


class AdminHttp:
    def __init__(
        self,
        *,
        ready: Ready,
        token: str = "",
        metrics: Callable[[], Awaitable[bytes]] | None = None,
        page: StatusPage | None = None,
    ) -> None:
        self._ready = ready
        self._token = token
        self._metrics = metrics
        self._page = page
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

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if not self._token:
            return True
        if hmac.compare_digest(headers.get("authorization", ""), f"Bearer {self._token}"):
            return True
        return self._page is not None and self._page.has_cookie(headers.get("cookie", ""))

    async def _answer(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[Answer, tuple[tuple[str, str], ...]]:
        page = self._page
        if (
            page is not None
            and path == "/"
            and self._token
            and "token" in query
            and hmac.compare_digest(query["token"], self._token)
        ):
            return (303, "text/plain", b"see /\n"), page.login_headers()
        if path not in OPEN and not self._authorized(headers):
            path = "/unauthorized"
        if page is not None and page.serves(path):
            if method not in ("GET", "HEAD"):
                return (405, "text/plain", b"the status page is read-only\n"), page.headers()
            return await page.answer(path, query), page.headers()
        route = self._routes.get(path)
        answer = route() if route else (404, "text/plain", b"not found\n")
        return (await answer if inspect.isawaitable(answer) else answer), ()

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
            method = parts[0] if parts else "GET"
            path, _, query = (parts[1] if len(parts) >= 2 else "/").partition("?")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            (status, content_type, body), extra = await self._answer(
                method, path, parse_query(query), headers
            )
            more = "".join(f"{name}: {value}\r\n" for name, value in extra)
            writer.write(
                f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n{more}Connection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body)
            )
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.drain()
            except TimeoutError:
                writer.transport.abort()  # close() would keep the unsent answer, and flush it
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()

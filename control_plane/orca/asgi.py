"""An ASGI middleware that adds the ORCA ``endpoint-load-metrics`` header to every HTTP
response (``http.response.start``); other scopes (websocket, lifespan) pass through untouched.

Stdlib only; imports nothing from ``control_plane`` but ``control_plane.orca``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from control_plane.orca import LoadReport, Reporter, ReportSource

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class OrcaMiddleware:
    """``OrcaMiddleware(app, report=callback)``: ``callback()`` is called once per HTTP
    response, as it starts, and its report becomes the header (TEXT, or the ``-bin`` header's
    base64 with ``binary=True``); None adds nothing. The callback runs on the event loop: keep
    it cheap (read a value others keep up to date). A callback that raises or returns garbage
    adds nothing and the response goes on: ``failures`` counts them (``last_error`` says why).
    """

    def __init__(
        self, app: AsgiApp, report: LoadReport | ReportSource, *, binary: bool = False
    ) -> None:
        self.app = app
        self._reporter = Reporter(report, binary=binary)

    @property
    def failures(self) -> int:
        return self._reporter.failures

    @property
    def last_error(self) -> str:
        return self._reporter.last_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_report(message: Message) -> None:
            if message.get("type") == "http.response.start":
                header = self._reporter.header()
                if header is not None:
                    name, value = header
                    message = dict(message)
                    message["headers"] = [
                        *message.get("headers", ()),
                        (name.encode("latin-1"), value.encode("latin-1")),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_report)

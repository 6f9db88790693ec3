"""A WSGI middleware that adds the ORCA ``endpoint-load-metrics`` header to every response.

Stdlib only; imports nothing from ``control_plane`` but ``control_plane.orca``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from control_plane.orca import LoadReport, Reporter, ReportSource

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class OrcaMiddleware:
    """``OrcaMiddleware(app, report=callback)``: ``callback()`` is called once per response,
    when the app starts it, and its report becomes the header (TEXT, or the ``-bin`` header's
    base64 with ``binary=True``); None adds nothing. A callback that raises or returns garbage
    adds nothing and the response goes on: ``failures`` counts them (``last_error`` says why).
    """

    def __init__(
        self, app: WsgiApp, report: LoadReport | ReportSource, *, binary: bool = False
    ) -> None:
        self.app = app
        self._reporter = Reporter(report, binary=binary)

    @property
    def failures(self) -> int:
        return self._reporter.failures

    @property
    def last_error(self) -> str:
        return self._reporter.last_error

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            header = self._reporter.header()
            if header is not None:
                headers = [*headers, header]
            return start_response(status, headers, *exc_info)

        return self.app(environ, start)

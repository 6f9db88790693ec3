"""The WSGI middleware on a real ``wsgiref`` server with a real HTTP client, and the ASGI one
driven through the ASGI protocol itself (the stdlib has no ASGI server, and routeplane installs
none: the middleware is exercised as a server would call it)."""

from __future__ import annotations

import base64
import http.client
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from xds.data.orca.v3 import orca_load_report_pb2

from control_plane.orca import LoadReport
from control_plane.orca import asgi as orca_asgi
from control_plane.orca import wsgi as orca_wsgi


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    status = "404 Not Found" if environ["PATH_INFO"] == "/missing" else "200 OK"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def serve() -> Iterator[Callable[[Any], int]]:
    servers: list[WSGIServer] = []

    def start(app: Any) -> int:
        server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return int(server.server_port)

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def get(port: int, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_wsgi_adds_the_text_header_to_every_response_calling_back_once_each(
    serve: Callable[[Any], int],
) -> None:
    counter = itertools.count(1)

    def report() -> LoadReport:
        return LoadReport(application_utilization=next(counter) / 10, named_metrics={"q": 3})

    port = serve(orca_wsgi.OrcaMiddleware(hello, report=report))
    first, second, missing = get(port), get(port), get(port, "/missing")
    assert first[1]["endpoint-load-metrics"] == (
        "TEXT application_utilization=0.1, named_metrics.q=3"
    )
    assert second[1]["endpoint-load-metrics"].startswith("TEXT application_utilization=0.2,")
    assert missing[0] == 404
    assert missing[1]["endpoint-load-metrics"].startswith("TEXT application_utilization=0.3,")
    assert first[2] == b"ok"


def test_wsgi_binary_header_decodes_as_an_orca_load_report(serve: Callable[[Any], int]) -> None:
    report = LoadReport(cpu_utilization=0.25, request_cost={"tokens": 512})
    port = serve(orca_wsgi.OrcaMiddleware(hello, report=lambda: report, binary=True))
    _, headers, _ = get(port)
    assert "endpoint-load-metrics" not in headers
    decoded = orca_load_report_pb2.OrcaLoadReport.FromString(
        base64.b64decode(headers["endpoint-load-metrics-bin"])
    )
    assert decoded.cpu_utilization == 0.25
    assert dict(decoded.request_cost) == {"tokens": 512}


def test_wsgi_a_failing_or_silent_callback_adds_nothing_and_never_breaks_the_response(
    serve: Callable[[Any], int],
) -> None:
    answers: list[object] = [None, "0.9", LoadReport(), RuntimeError("gpu sensor down")]

    def report() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    middleware = orca_wsgi.OrcaMiddleware(hello, report=report)
    port = serve(middleware)
    for _ in range(4):
        status, headers, body = get(port)
        assert (status, body) == (200, b"ok")
        assert "endpoint-load-metrics" not in headers
    assert middleware.failures == 2
    assert "gpu sensor down" in middleware.last_error


async def call_asgi(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def asgi_hello(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


HTTP_SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def test_asgi_adds_the_header_to_the_response_start_only() -> None:
    calls = 0

    def report() -> LoadReport:
        nonlocal calls
        calls += 1
        return LoadReport(named_metrics={"kv_cache": 0.5}, rps_fractional=12.5)

    app = orca_asgi.OrcaMiddleware(asgi_hello, report=report)
    start, body = await call_asgi(app, dict(HTTP_SCOPE))
    assert start["headers"] == [
        (b"content-type", b"text/plain"),
        (b"endpoint-load-metrics", b"TEXT rps_fractional=12.5, named_metrics.kv_cache=0.5"),
    ]
    assert body == {"type": "http.response.body", "body": b"ok"}
    assert calls == 1


async def test_asgi_binary_and_failures_and_other_scopes() -> None:
    binary = orca_asgi.OrcaMiddleware(asgi_hello, report=LoadReport(eps=2), binary=True)
    start, _ = await call_asgi(binary, dict(HTTP_SCOPE))
    name, value = start["headers"][-1]
    assert name == b"endpoint-load-metrics-bin"
    assert orca_load_report_pb2.OrcaLoadReport.FromString(base64.b64decode(value)).eps == 2

    def broken() -> LoadReport:
        raise ZeroDivisionError("no requests yet")

    failing = orca_asgi.OrcaMiddleware(asgi_hello, report=broken)
    start, body = await call_asgi(failing, dict(HTTP_SCOPE))
    assert start["headers"] == [(b"content-type", b"text/plain")]
    assert body["body"] == b"ok"
    assert failing.failures == 1

    seen: list[str] = []

    async def websocket_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        await send({"type": "websocket.accept", "headers": []})

    ws = orca_asgi.OrcaMiddleware(websocket_app, report=broken)
    sent = await call_asgi(ws, {"type": "websocket", "path": "/"})
    assert sent == [{"type": "websocket.accept", "headers": []}]
    assert seen == ["websocket"]
    assert ws.failures == 0

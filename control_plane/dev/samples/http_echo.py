"""An HTTP/1.1 echo server that names the replica that answered.

``GET /`` answers ``<name>\\n``; ``GET /slow?ms=N`` answers after N milliseconds (to hold a
request in flight during a drain); ``GET /stream?chunks=N&ms=M`` sends N server-sent events M
milliseconds apart (a token stream), and ``GET /stall?ms=M`` sends one event and then nothing
for M milliseconds before the rest; ``POST`` answers ``<name> <length> <sha256 of the body>``.
A GET's ``?status=N`` (200-599) answers with that status (a failing replica on demand).
Runs in a thread (tests) or as ``routeplane samples http-echo``.

``error_percent`` P (0-100) makes it a failing version on demand: it answers ``500`` with
``<name> error`` to P% of its requests, whatever their method or path, evenly spread: request
number n (counted from 1, across connections) fails when ``n * P // 100`` passes a whole number
(P=20: the 5th, 10th, 15th, ...), so no run of failures is longer than it must be (a proxy's
outlier detection, which ejects on consecutive 5xx, does not hide it) and any 100 requests in a
row hold exactly P failures. A failed request with a body closes its connection (the body is
not read).

``report`` (a ``LoadReport`` or a callable, ``reporting.sample_source``) adds the ORCA
``endpoint-load-metrics`` header (TEXT; the ``-bin`` header with ``report_binary``) to every
response, failures included; a report callback that fails adds nothing (``server.orca``
counts it).
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from control_plane.dev.samples.reporting import SampleReport, sample_source
from control_plane.orca import Reporter


class EchoServer(ThreadingHTTPServer):
    orca: Reporter | None = None


def make_server(
    *,
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    error_percent: int = 0,
    report: SampleReport = None,
    report_binary: bool = False,
) -> EchoServer:
    failing = Failures(error_percent)
    source = sample_source(report)
    orca = Reporter(source, binary=report_binary) if source is not None else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are written separately: with Nagle's algorithm on, a response on a
        # reused connection (Envoy keeps them) waited ~40 ms for the peer's delayed ACK.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path in ("/stream", "/stall"):
                self._events(url.path, query)
                return
            if url.path == "/slow":
                delay_ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
                time.sleep(delay_ms / 1000)
            status = query.get("status", ["200"])[0]
            code = int(status) if status.isdigit() and 200 <= int(status) <= 599 else 200
            self._text(f"{name}\n", status=code)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            digest, left = hashlib.sha256(), length
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            self._text(f"{name} {length - left} {digest.hexdigest()}\n")

        def _text(self, text: str, *, status: int = 200) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Replica", name)
            self.end_headers()
            self.wfile.write(body)

        def _events(self, path: str, query: dict[str, list[str]]) -> None:
            chunks = int(query.get("chunks", ["10"])[0])
            gap = int(query.get("ms", ["200"])[0]) / 1000
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Replica", name)
            self.end_headers()
            try:
                for i in range(chunks):
                    if i and path == "/stream":
                        time.sleep(gap)
                    if i == 1 and path == "/stall":
                        time.sleep(gap)
                    event = f"data: {name} {i}\n\n".encode()
                    self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                return  # the proxy cut the stream

        def log_message(self, format: str, *args: object) -> None:
            return

        def end_headers(self) -> None:
            if orca is not None:
                header = orca.header()
                if header is not None:
                    self.send_header(*header)
            super().end_headers()

        def parse_request(self) -> bool:
            """A request picked to fail is answered here, before its ``do_*`` method runs."""
            if not super().parse_request():
                return False
            if not failing.next():
                return True
            # A body it does not read (any length but 0, or chunked): the connection ends here.
            length = (self.headers.get("Content-Length") or "0").strip()
            if length != "0" or self.headers.get("Transfer-Encoding"):
                self.close_connection = True
            body = f"{name} error\n".encode()
            self.send_response(500)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Replica", name)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            return False

    server = EchoServer((host, port), Handler)
    server.daemon_threads = True
    server.orca = orca
    return server


class Failures:
    """Which requests fail, evenly spread (see the module docstring); thread safe."""

    def __init__(self, percent: int) -> None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValueError(f"error_percent must be a whole number from 0 to 100, not {percent!r}")
        self.percent = percent
        self._count = 0
        self._lock = threading.Lock()

    def next(self) -> bool:
        """Count one request; True when it is to fail."""
        if self.percent == 0:
            return False
        with self._lock:
            self._count += 1
            n = self._count
        return n * self.percent // 100 > (n - 1) * self.percent // 100


class EchoThread:
    """An echo server on a free loopback port, in a daemon thread; ``stop()`` ends it."""

    def __init__(
        self,
        *,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        error_percent: int = 0,
        report: SampleReport = None,
        report_binary: bool = False,
    ) -> None:
        self.name = name
        self.server = make_server(
            name=name,
            host=host,
            port=port,
            error_percent=error_percent,
            report=report,
            report_binary=report_binary,
        )
        self.port = self.server.server_address[1]
        self.address = f"{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

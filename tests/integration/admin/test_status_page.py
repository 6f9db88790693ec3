"""The status page on a real ``serve``: its JSON is what ``routeplane load --json``,
``proxies --json`` and ``problems --json`` print, it follows the registry, it needs the admin
token when one is set, a client that never reads blocks no one, and under ``--workers`` the
supervisor's page shows the group. (A real browser drives the page in a later test; here the
JSON and the headers.)"""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy
from harness.waiting import wait_until

HOSTILE = "<img src=x onerror=alert(1)>"


def get(
    admin: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = admin.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def api(admin: str, path: str) -> Any:
    status, _, body = get(admin, path)
    assert status == 200, body
    return json.loads(body)


def cli_json(*args: str, admin: str) -> Any:
    done = subprocess.run(
        [ROUTEPLANE, *args, "--json", "--admin", admin],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def started(cp: ControlPlane) -> ControlPlane:
    cp.start()
    cp.wait_ready()
    return cp


@pytest.fixture
def hostile_cp(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane whose registry holds ``echo`` and a row no client could write: a
    server whose hostname is markup (written to the database directly, before it starts).
    Two workers: the supervisor's page shows the group (its servers' fields from a worker)."""
    cp = ControlPlane.create(tmp_path, extra=["--workers", "2"])
    registry = open_registry(cp.registry)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.create_server(name="bad", hostnames=["bad.local"], protocol="http")
    registry.close()
    with sqlite3.connect(cp.registry.removeprefix("sqlite://")) as db:
        db.execute("UPDATE servers SET hostnames = ? WHERE name = 'bad'", (json.dumps([HOSTILE]),))
    try:
        yield started(cp)
    finally:
        cp.stop()


@pytest.mark.envoy
def test_the_page_shows_what_the_cli_prints_and_follows_the_registry(
    hostile_cp: ControlPlane, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    cp = hostile_cp
    admin = cp.admin
    envoy = Envoy.create(tmp_path, node_id="edge-0", region="us-west", xds=[cp.xds])
    registry = open_registry(cp.registry)
    try:
        envoy.start()
        envoy.wait_live()
        registry.register_replica(
            server="echo", address=echo_factory("a").address, region="us-west"
        )

        def echo() -> dict[str, Any]:
            servers = api(admin, "/api/servers")["servers"]
            return next(s for s in servers if s["name"] == "echo")

        wait_until(
            lambda: echo().get("replicas") == {"us-west": {"ready": 1, "draining": 0}},
            timeout=15,
            what="the page shows echo's replica",
        )
        shown = echo()
        assert shown["hostnames"] == ["echo.local"]
        assert shown["protocol"] == "http"
        assert shown["cold_start"]["mode"] == "reject"
        # The same rows as `routeplane load --json`, and the same nodes as `proxies --json`
        # (waited for: a push between the two reads would move a counter).
        wait_until(
            lambda: echo()["load"] == cli_json("load", "--server", "echo", admin=admin),
            timeout=15,
            what="the page's load rows equal routeplane load --json",
        )

        def page_proxies() -> Any:
            return api(admin, "/api/proxies")

        wait_until(
            lambda: page_proxies()["convergence"] == {"nodes": 1, "synced": 1},
            timeout=15,
            what="the Envoy synced, on the page",
        )
        wait_until(
            lambda: page_proxies()["proxies"] == cli_json("proxies", admin=admin),
            timeout=15,
            what="the page's proxies equal routeplane proxies --json",
        )
        # A second replica, in another region: the page follows.
        registry.register_replica(
            server="echo", address=echo_factory("b").address, region="us-east"
        )
        wait_until(
            lambda: (
                echo()["replicas"]
                == {"us-east": {"ready": 1, "draining": 0}, "us-west": {"ready": 1, "draining": 0}}
            ),
            timeout=15,
            what="the page shows the second replica",
        )
        # The hostile row: a problem whose value is the markup, as a JSON string, escaped.
        status, headers, body = get(admin, "/api/problems")
        assert status == 200
        assert b"<img" not in body
        problems = json.loads(body)["problems"]
        assert problems == cli_json("problems", admin=admin)
        assert any(HOSTILE in p["value"] for p in problems), problems
        assert headers["X-Content-Type-Options"] == "nosniff"
    finally:
        registry.close()
        envoy.stop()


def test_the_page_and_its_json_need_the_token_when_one_is_set(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    cp = ControlPlane.create(tmp_path, extra=["--admin-token-file", str(token_file)])
    try:
        admin = started(cp).admin
        for path in ("/", "/page.js", "/api/servers", "/api/proxies", "/api/problems"):
            assert get(admin, path)[0] == 401, path
            assert get(admin, path, {"Authorization": "Bearer s3cret"})[0] == 200, path
        assert get(admin, "/?token=wrong")[0] == 401
        assert get(admin, "/api/servers?token=s3cret")[0] == 401  # only / takes it
        # A browser: /?token= once, then the cookie (not the token) carries it.
        status, headers, _ = get(admin, "/?token=s3cret")
        assert status == 303
        assert headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert "s3cret" not in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        jar = {"Cookie": cookie.split(";")[0]}
        status, headers, body = get(admin, "/", jar)
        assert status == 200
        assert b'<script src="/page.js"' in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert get(admin, "/api/servers", jar)[0] == 200
        assert get(admin, "/metrics", jar)[0] == 200
        assert "s3cret" not in cp.log()
    finally:
        cp.stop()


def test_a_client_that_never_reads_blocks_no_other(
    control_plane: ControlPlane, echo_factory: Callable[[str], EchoThread]
) -> None:
    admin = control_plane.admin
    registry = open_registry(control_plane.registry)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.close()
    host, port = admin.rsplit(":", 1)
    stuck = []
    try:
        for index in range(8):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect((host, int(port)))
            # Half of them ask and never read; half never finish asking.
            sock.sendall(
                b"GET /api/servers?limit=500 HTTP/1.1\r\nHost: x\r\n\r\n"
                if index % 2
                else b"GET /api/servers HTTP/1.1\r\n"
            )
            stuck.append(sock)
        wait_until(
            lambda: [s["name"] for s in api(admin, "/api/servers")["servers"]] == ["echo"],
            timeout=10,
            what="a reader's answer while eight clients hang",
        )
        assert get(admin, "/readyz")[0] == 200
    finally:
        for sock in stuck:
            sock.close()


@pytest.mark.envoy
def test_one_process_serves_the_page_from_its_own_table(tmp_path: Path) -> None:
    cp = ControlPlane.create(tmp_path, extra=["--workers", "1"])
    registry = open_registry(cp.registry)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    envoy = Envoy.create(tmp_path, node_id="edge-w", region="us-west", xds=[cp.xds])
    try:
        admin = started(cp).admin
        envoy.start()
        envoy.wait_live()
        wait_until(
            lambda: [p["node_id"] for p in api(admin, "/api/proxies")["proxies"]] == ["edge-w"],
            timeout=15,
            what="the proxy on the page",
        )
        assert api(admin, "/api/proxies")["proxies"] == cli_json("proxies", admin=admin)
        wait_until(
            lambda: (
                api(admin, "/api/servers")["servers"][0]["load"]
                == cli_json("load", "--server", "echo", admin=admin)
            ),
            timeout=15,
            what="the load rows on the page equal routeplane load --json",
        )
        [echo] = api(admin, "/api/servers")["servers"]
        assert echo["hostnames"] == ["echo.local"]
        assert api(admin, "/api/problems")["problems"] == cli_json("problems", admin=admin)
    finally:
        envoy.stop()
        registry.close()
        cp.stop()

"""The status page's pure parts: paging bounds, the token cookie, escaping, the static files."""

from __future__ import annotations

import json
import re
import time
from importlib import resources
from typing import Any

import pytest

from control_plane.admin.page import (
    COOKIE,
    MAX_LIMIT,
    PageError,
    StatusPage,
    page_of,
)
from control_plane.admin.pb import admin_pb2
from control_plane.routing.model import Endpoint, RoutedServer, RoutingTable

HOSTILE = "<img src=x onerror=alert(1)>"


class Service:
    """The three admin API methods the page reads, answering from fixed messages."""

    def __init__(self, problems: tuple[tuple[str, str, str, str, str], ...] = ()) -> None:
        self.problems = problems

    async def GetLoad(self, request: Any, context: Any) -> Any:
        response = admin_pb2.LoadResponse()
        response.servers.add(server=request.server, region="*", ready_replicas=1)
        return response

    async def ListProxies(self, request: Any, context: Any) -> Any:
        return admin_pb2.ListProxiesResponse()

    async def ListProblems(self, request: Any, context: Any) -> Any:
        response = admin_pb2.ListProblemsResponse()
        for kind, name, field, value, message in self.problems:
            response.problems.add(kind=kind, name=name, field=field, value=value, message=message)
        return response


def fleet(count: int) -> RoutingTable:
    servers = tuple(
        RoutedServer(
            name=f"server-{i:05d}",
            workspace="default",
            hostnames=(f"server-{i:05d}.example.com",),
            protocol="http",
            endpoints=(
                Endpoint(
                    replica_id=f"r-{i}",
                    host="10.0.0.1",
                    port=8080,
                    region="us-west",
                    zone="",
                    weight=1,
                    draining=False,
                ),
            ),
        )
        for i in range(count)
    )
    return RoutingTable(servers=servers, problems=(), revision=7, committed_at=0.0)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"offset": "-1"}, "offset must be a whole number, got '-1'"),
        ({"limit": "ten"}, "limit must be a whole number, got 'ten'"),
        ({"limit": "0"}, "limit must be 1 or more, got '0'"),
        ({"limit": "9" * 40}, "limit must be a whole number"),
        ({"sort": "x"}, "unknown query field 'sort'"),
    ],
)
def test_bad_paging_names_the_field_and_value(query: dict[str, str], message: str) -> None:
    with pytest.raises(PageError, match=re.escape(message)):
        page_of(query)


def test_limit_is_capped() -> None:
    assert page_of({"limit": "100000"}).limit == MAX_LIMIT


async def test_ten_thousand_servers_are_a_bounded_page() -> None:
    table = fleet(10_000)
    page = StatusPage(service=Service(), table=lambda: table)
    started = time.perf_counter()
    status, kind, body = await page.answer("/api/servers", {"offset": "9900", "limit": "100000"})
    took = time.perf_counter() - started
    answer = json.loads(body)
    assert (status, kind) == (200, "application/json")
    assert answer["total"] == 10_000
    assert answer["limit"] == MAX_LIMIT
    assert [s["name"] for s in answer["servers"]] == [
        f"server-{i:05d}" for i in range(9900, 10_000)
    ]
    status, _, body = await page.answer("/api/servers", {"limit": str(MAX_LIMIT)})
    assert len(json.loads(body)["servers"]) == MAX_LIMIT
    assert len(body) < 512 * 1024  # a full page; the whole fleet would be ~20x this
    print(f"\n10,000 servers: a page of {MAX_LIMIT} is {len(body)} bytes; 100 took {took:.3f}s")


async def test_a_bad_page_is_a_400_naming_it() -> None:
    page = StatusPage(service=Service(), table=lambda: fleet(1))
    status, _, body = await page.answer("/api/proxies", {"limit": "-5"})
    assert status == 400
    assert json.loads(body) == {"error": "limit must be a whole number, got '-5'"}


async def test_registry_text_travels_as_an_escaped_json_string() -> None:
    page = StatusPage(service=Service((("server", "echo", "hostnames", HOSTILE, HOSTILE),)))
    _, _, body = await page.answer("/api/problems", {})
    assert b"<" not in body
    assert b">" not in body
    [problem] = json.loads(body)["problems"]
    assert problem["value"] == HOSTILE


def test_the_cookie_is_a_digest_of_the_token_and_needs_one() -> None:
    page = StatusPage(service=Service(), token="s3cret")
    headers = dict(page.login_headers())
    cookie = headers["Set-Cookie"]
    assert "s3cret" not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    value = cookie.split(";")[0]
    assert page.has_cookie(f"other=1; {value}")
    assert not page.has_cookie(f"{COOKIE}=0000")
    assert not StatusPage(service=Service()).has_cookie(f"{COOKIE}=")
    assert headers["Location"] == "/"


def static(name: str) -> str:
    return resources.files("control_plane.admin.page").joinpath("static", name).read_text()


def test_the_script_puts_data_in_as_text_only() -> None:
    script = static("page.js")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script


def test_the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere() -> None:
    html = static("index.html")
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/page.js" defer>']
    assert "<style" not in html
    assert "style=" not in html
    assert not re.search(r"\son[a-z]+=", html, re.IGNORECASE)
    assert "http://" not in html
    assert "https://" not in html
    assert "http" not in static("page.css")

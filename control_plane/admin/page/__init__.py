"""The live status page: ``/`` (``static/index.html``), its script and style, and the JSON it
polls, read-only:

- ``/api/servers``: servers (hostnames, protocol, regions, cold-start mode, autoscaling), their
  replicas by region and state, and each one's ``routeplane load --json`` rows;
- ``/api/proxies``: ``routeplane proxies --json``'s nodes, and convergence (nodes whose every
  type is SYNCED);
- ``/api/problems``: ``routeplane problems --json``.

Each is paged (``?offset=&limit=``, ``limit`` at most ``MAX_LIMIT``, ``total`` given), so a
fleet of 10,000 servers is never one document. Answers come from the admin API's own
methods (``GetLoad``, ``ListProxies``, ``ListProblems`` of ``AdminService`` or of the ``serve
--workers`` supervisor's ``AggregateService``) shaped by ``admin/views.py``, as the CLI shapes
them. Each answer is built from the values those methods hand back (new messages, never
shared state) and encoded before the first byte is written, so a client that reads slowly
holds nothing but its own connection (``admin/http.py`` closes it after ``WRITE_TIMEOUT``).

Imports ``admin.views`` and the admin API's messages; never the registry, the group, the CLI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import grpc

from control_plane.admin.pb import admin_pb2
from control_plane.admin.views import JsonObject, by_node, load_rows, node_json, problem_json
from control_plane.routing.model import RoutingTable

Answer = tuple[int, str, bytes]

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_OFFSET = 10_000_000
COOKIE = "routeplane_page"
SYNCED = "SYNCED"
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
    # Browsers ask for /favicon.ico whatever the page names: both answer (no 404 logged).
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = (
    # Only this origin's files; no inline script or style, no frames, no plugins.
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


class PageError(Exception):
    """An answer the page cannot give: ``status`` and a message naming the field and value."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Servicer(Protocol):
    """The admin API methods the page reads (``AdminService`` or ``AggregateService``)."""

    async def GetLoad(self, request: Any, context: Any) -> Any: ...
    async def ListProxies(self, request: Any, context: Any) -> Any: ...
    async def ListProblems(self, request: Any, context: Any) -> Any: ...


class _Context:
    """What a servicer method is handed in place of a gRPC context: an abort is an error."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise PageError(503, f"{code.name}: {details}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    offset: int
    limit: int


def page_of(query: Mapping[str, str]) -> Page:
    """``?offset=&limit=``; bad values are a ``PageError`` naming the field and the value."""
    values = {}
    for field, default, most in (("offset", 0, MAX_OFFSET), ("limit", DEFAULT_LIMIT, MAX_LIMIT)):
        text = query.get(field, "")
        if text == "":
            values[field] = default
            continue
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise PageError(400, f"{field} must be a whole number, got {text[:40]!r}")
        values[field] = min(int(text), most)
    unknown = sorted(set(query) - {"offset", "limit"})
    if unknown:
        raise PageError(400, f"unknown query field {unknown[0][:40]!r}: expected offset, limit")
    if values["limit"] == 0:
        raise PageError(400, "limit must be 1 or more, got '0'")
    return Page(offset=values["offset"], limit=values["limit"])


def paged(kind: str, items: Sequence[Any], page: Page, **more: Any) -> JsonObject:
    return {
        "total": len(items),
        "offset": page.offset,
        "limit": page.limit,
        kind: list(items[page.offset : page.offset + page.limit]),
        **more,
    }


def server_entry(server: Any) -> JsonObject:
    """A routed server as the page shows it: its registry fields and replicas by region."""
    spec = server.spec
    replicas: dict[str, dict[str, int]] = {}
    for endpoint in server.endpoints:
        counts = replicas.setdefault(endpoint.region, {"ready": 0, "draining": 0})
        counts["draining" if endpoint.draining else "ready"] += 1
    scaling = spec.autoscaling
    return {
        "name": server.name,
        "workspace": server.workspace,
        "hostnames": list(server.hostnames),
        "protocol": server.protocol,
        "regions": list(spec.regions),
        "cold_start": {"mode": spec.cold_start.mode, "timeout": spec.cold_start.timeout},
        "autoscaling": None
        if scaling is None
        else {
            "target_concurrency": scaling.target_concurrency,
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
        },
        "replicas": dict(sorted(replicas.items())),
    }


class StatusPage:
    """The page over ``service``; ``table`` (one process: the routing table) adds each
    server's hostnames, protocol and replicas; ``names`` lists the servers with load rows
    (the load view's order); ``fields`` (``serve --workers``: the supervisor has no table)
    gives a page of ``/api/servers`` from a worker, whose load rows are replaced by the
    group's from ``service``; ``token``: the admin token, or "" for none."""

    def __init__(
        self,
        *,
        service: Servicer,
        table: Callable[[], RoutingTable | None] | None = None,
        names: Callable[[], Sequence[str]] | None = None,
        fields: Callable[[int, int], Awaitable[Any]] | None = None,
        token: str = "",
    ) -> None:
        self._service = service
        self._fields = fields
        self._table = table
        self._names = names
        # The cookie carries a digest of the token, not the token (it never leaves the server).
        self._cookie = hmac.new(token.encode(), b"routeplane status page", hashlib.sha256)
        self._cookie_value = self._cookie.hexdigest() if token else ""
        folder = resources.files(__package__).joinpath("static")
        self._files = {
            path: (folder.joinpath(name).read_bytes(), kind) for path, (name, kind) in FILES.items()
        }
        self._api = {
            "/api/servers": self._servers,
            "/api/proxies": self._proxies,
            "/api/problems": self._problems,
        }

    def serves(self, path: str) -> bool:
        return path in self._files or path in self._api

    def headers(self) -> tuple[tuple[str, str], ...]:
        return SECURITY_HEADERS

    def login_headers(self) -> tuple[tuple[str, str], ...]:
        """After ``/?token=``: the cookie, and back to ``/`` so the token leaves the URL."""
        return (
            *SECURITY_HEADERS,
            ("Location", "/"),
            ("Set-Cookie", f"{COOKIE}={self._cookie_value}; HttpOnly; SameSite=Strict; Path=/"),
        )

    def has_cookie(self, header: str) -> bool:
        if not self._cookie_value:
            return False
        for part in header.split(";")[:32]:
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value, self._cookie_value):
                return True
        return False

    async def answer(self, path: str, query: Mapping[str, str]) -> Answer:
        if path in self._files:
            body, kind = self._files[path]
            return 200, kind, body
        try:
            value = await self._api[path](page_of(query))
        except PageError as exc:
            return exc.status, "application/json", _encode({"error": str(exc)})
        return 200, "application/json", _encode(value)

    async def _load_of(self, name: str) -> list[JsonObject]:
        request = admin_pb2.GetLoadRequest(server=name)
        return load_rows(await self._service.GetLoad(request, _Context()))

    async def _servers(self, page: Page) -> JsonObject:
        if self._fields is not None:
            return await self._group_servers(page)
        table = self._table() if self._table is not None else None
        routed = {s.name: s for s in table.servers} if table is not None else {}
        names = list(self._names()) if self._names is not None else []
        known = set(names)
        names.extend(name for name in routed if name not in known)
        names.sort()
        items = []
        for name in names[page.offset : page.offset + page.limit]:
            server = routed.get(name)
            entry = server_entry(server) if server is not None else {"name": name}
            items.append({**entry, "load": await self._load_of(name)})
        return {
            "total": len(names),
            "offset": page.offset,
            "limit": page.limit,
            "servers": items,
            "revision": table.revision if table is not None else None,
        }

    async def _group_servers(self, page: Page) -> JsonObject:
        """A worker's page of servers (every worker reads the one registry) with the group's
        load rows in place of the worker's share."""
        assert self._fields is not None
        try:
            answer = await self._fields(page.offset, page.limit)
            servers = answer["servers"]
            if not isinstance(servers, list) or not all(
                isinstance(s, dict) and isinstance(s.get("name"), str) for s in servers
            ):
                raise TypeError("servers is not a list of objects with a name")
        except (OSError, LookupError, TypeError, ValueError) as exc:
            raise PageError(503, f"no worker gave its servers: {exc}") from None
        for server in servers:
            server["load"] = await self._load_of(server["name"])
        return {**answer, "servers": servers}

    async def _proxies(self, page: Page) -> JsonObject:
        response = await self._service.ListProxies(admin_pb2.ListProxiesRequest(), _Context())
        nodes = [node_json(main, others) for main, others in by_node(response.proxies)]
        synced = sum(
            all(t["state"] == SYNCED for s in n["streams"] for t in s["types"].values())
            for n in nodes
        )
        return paged(
            "proxies",
            nodes,
            page,
            convergence={"nodes": len(nodes), "synced": synced},
            unanswered=list(response.unanswered),
        )

    async def _problems(self, page: Page) -> JsonObject:
        response = await self._service.ListProblems(admin_pb2.ListProblemsRequest(), _Context())
        return paged("problems", [problem_json(p) for p in response.problems], page)


def _encode(value: JsonObject) -> bytes:
    """Compact JSON, all ASCII; ``<``, ``>`` and ``&`` (only ever inside strings) escaped too,
    so no registry text reads as markup to anything that sniffs."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    return text.translate(ESCAPES).encode()


ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})

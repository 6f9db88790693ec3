"""The admin gRPC API (``protos/routeplane/admin/v1/admin.proto``) over the running state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc
from envoy.config.core.v3 import health_check_pb2
from google.protobuf import json_format

from control_plane.admin.loadview import LoadAnswers
from control_plane.admin.loadwire import TotalsFeed
from control_plane.admin.pb import admin_pb2, admin_pb2_grpc
from control_plane.admin.rollouts import answer as rollouts_answer
from control_plane.load.server import LoadService
from control_plane.rollout.rules import Rollout
from control_plane.routing.model import RoutingTable
from control_plane.xds.cache import Published, SnapshotCache
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SHORT_NAMES,
    TYPE_BY_SHORT_NAME,
    Resource,
)
from control_plane.xds.server import XdsServer, shorten
from control_plane.xds.snapshot import Snapshot

MISSING_SHOWN = 10


def summary(resource: Resource) -> str:
    """One line a person can read about a resource."""
    message = resource.message
    if resource.type_url == CLUSTER:
        policies = message.load_balancing_policy.policies
        lb = (
            "/".join(p.typed_extension_config.name.rsplit(".", 1)[-1] for p in policies)
            if policies
            else message.LbPolicy.Name(message.lb_policy).lower()
        )
        h2 = "http2" if message.typed_extension_protocol_options else "http1"
        timeout = message.connect_timeout.ToMilliseconds()
        return f"eds, {lb}, {h2} upstream, connect {timeout}ms"
    if resource.type_url == ENDPOINT:
        total = draining = 0
        priorities = set()
        for locality in message.endpoints:
            priorities.add(locality.priority)
            for lb in locality.lb_endpoints:
                total += 1
                draining += lb.health_status == health_check_pb2.HealthStatus.DRAINING
        plural = "" if total == 1 else "s"
        return (
            f"{total} endpoint{plural} ({draining} draining), "
            f"{len(priorities)} priorit{'y' if len(priorities) == 1 else 'ies'}"
        )
    if resource.type_url == LISTENER and message.HasField("api_listener"):
        return "API listener (gRPC clients)"
    if resource.type_url == LISTENER:
        socket = message.address.socket_address
        return f"listens on {socket.address}:{socket.port_value}"
    if resource.type_url == ROUTE:
        routes = sum(len(host.routes) for host in message.virtual_hosts)
        return f"{len(message.virtual_hosts)} virtual hosts, {routes} routes"
    return ""


class AdminService(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        xds: XdsServer,
        cache: SnapshotCache,
        table: Callable[[], RoutingTable | None],
        load: LoadService | None = None,
        more_problems: Callable[[], Iterable[tuple[str, str, str, str, str]]] = tuple,
        rollouts: Callable[[], Iterable[Rollout]] = tuple,
    ) -> None:
        self.xds = xds
        self.cache = cache
        self.table = table
        self.load = load
        # Problems beyond the routing table's, as (kind, name, field, value, message): the
        # fleet's ignored load records (``control_plane/fleet/``).
        self.more_problems = more_problems
        # The rollout records this process's driver last read (``control_plane/rollout/``).
        self.rollouts = rollouts
        self._load_answers = LoadAnswers(load) if load is not None else None

    @property
    def load_view(self) -> LoadService | None:
        """This process's load view (``admin/loadview.py``), if load reporting is on."""
        return self.load

    async def GetLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self._load_answers is None:
            return admin_pb2.LoadResponse()
        return self._load_answers.get(request)

    async def WatchLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.load is None or self._load_answers is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "load reporting is off")
        assert self.load is not None
        assert self._load_answers is not None
        async for response in self._load_answers.watch(request, self.load.watch()):
            await context.write(response)

    async def WatchLoadTotals(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """This process's load totals (``load/totals.py``), now and after every tick that
        moved a row: the first with every server, later ones only the servers that changed
        and those that went; before them, every server's spec whenever the specs changed.
        Internal: what a ``serve --workers`` supervisor merges."""
        load = self.load
        if load is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "load reporting is off")
        assert load is not None
        feed = TotalsFeed(load)
        async for _ in load.watch():
            for update in feed.updates():
                await context.write(update)

    async def ListProxies(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = admin_pb2.ListProxiesResponse()
        for proxy in sorted(self.xds.proxies.values(), key=lambda p: (p.node_id, p.stream_id)):
            item = response.proxies.add(
                node_id=proxy.node_id,
                group=proxy.group.key,
                address=proxy.peer,
                connected_since=proxy.connected_at,
                protocol="delta" if proxy.delta else "sotw",
                service=SHORT_NAMES.get(proxy.only_type, "ads"),
                client=proxy.group.kind,
                user_agent=proxy.user_agent,
            )
            for type_url in PUSH_ORDER:
                status = proxy.protocol.status.get(type_url)
                if status is None or not status.subscribed:
                    continue
                item.types.add(
                    type=SHORT_NAMES[type_url],
                    sent_version=status.sent_version,
                    acked_version=status.acked_version,
                    state=status.state,
                    last_error=status.last_nack.message if status.last_nack else "",
                    pushes=status.pushes,
                    resources_sent=status.resources_sent,
                    acks=status.acks,
                    nacks=status.nacks,
                    missing=len(status.missing),
                    missing_names=[shorten(n) for n in sorted(status.missing)[:MISSING_SHOWN]],
                )
        return response

    def _group(self, request: Any, context: grpc.aio.ServicerContext) -> NodeGroup:
        if request.node_id:
            for proxy in self.xds.proxies.values():
                if proxy.node_id == request.node_id:
                    return proxy.group
            raise LookupError(f"no connected proxy with node id {shorten(request.node_id)!r}")
        if request.node_group:
            return self._named_group(request.node_group)
        groups = self.cache.groups()
        if len(groups) == 1:
            return groups[0]
        keys = ", ".join(g.key for g in groups)
        raise LookupError(f"name a node group, one of: {keys or '(none yet)'}")

    def _named_group(self, key: str) -> NodeGroup:
        group = self.cache.group(key)
        if group is None:
            raise LookupError(f"no snapshot for group {shorten(key)!r}")
        return group

    async def GetSnapshot(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            group = self._group(request, context)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        history = self.cache.history(group)
        if not history:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no snapshot for group {group.key!r}")
        wanted = TYPE_BY_SHORT_NAME.get(request.type) if request.type else None
        if request.type and wanted is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown type {shorten(request.type)!r}: expected cds, eds, lds or rds",
            )
        return _snapshot_message(group.key, history[-1], wanted, with_json=request.include_json)

    async def DiffSnapshots(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        group = self.cache.group(request.node_group)
        history = self.cache.history(group) if group is not None else []
        if not history:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no snapshot for group {shorten(request.node_group)!r}"
            )
        old = _find(history, request.from_version)
        new = _find(history, request.to_version) if request.to_version else history[-1]
        for label, found, version in (
            ("from", old, request.from_version),
            ("to", new, request.to_version),
        ):
            if found is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"--{label} {shorten(version)!r} is not in the last {len(history)} versions",
                )
        assert old is not None
        assert new is not None
        diff = admin_pb2.SnapshotDiff(
            node_group=request.node_group,
            from_version=old.snapshot.version,
            to_version=new.snapshot.version,
        )
        for type_url in PUSH_ORDER:
            before, after = old.snapshot.of_type(type_url), new.snapshot.of_type(type_url)
            for name in sorted(set(before) | set(after)):
                a, b = before.get(name), after.get(name)
                if a is not None and b is not None and a.version == b.version:
                    continue
                diff.changes.add(
                    type=SHORT_NAMES[type_url],
                    name=name,
                    change="added" if a is None else "removed" if b is None else "changed",
                    from_version=a.version if a else "",
                    to_version=b.version if b else "",
                )
        return diff

    async def SnapshotHistory(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = admin_pb2.SnapshotHistoryResponse()
        if request.node_group:
            named = self.cache.group(request.node_group)
            groups = [named] if named is not None else []
        else:
            groups = self.cache.groups()
        for group in groups:
            for published in self.cache.history(group):
                snap = published.snapshot
                changed = (
                    sum(len(names) for names in snap.changed.values())
                    if snap.changed is not None
                    else sum(len(snap.of_type(t)) for t in PUSH_ORDER)
                )
                response.entries.add(
                    node_group=group.key,
                    version=snap.version,
                    published_at=published.published_at,
                    revision=snap.revision,
                    cause=snap.cause,
                    changed_resources=changed,
                )
        return response

    async def GetRollouts(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return rollouts_answer(self.rollouts(), request)

    async def ListProblems(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = admin_pb2.ListProblemsResponse()
        table = self.table()
        for problem in table.problems if table is not None else ():
            response.problems.add(
                kind=problem.kind,
                name=problem.name,
                field=problem.field,
                value=problem.value,
                message=problem.message,
            )
        for kind, name, field, value, message in self.more_problems():
            response.problems.add(kind=kind, name=name, field=field, value=value, message=message)
        return response


def _find(history: list[Published], version: str) -> Published | None:
    for published in reversed(history):
        if version and published.snapshot.version.startswith(version):
            return published
    return None


def _snapshot_message(
    group: str, published: Published, wanted: str | None, *, with_json: bool
) -> Any:
    snap: Snapshot = published.snapshot
    message = admin_pb2.Snapshot(
        node_group=group,
        version=snap.version,
        published_at=published.published_at,
        revision=snap.revision,
        cause=snap.cause,
    )
    for type_url, version in snap.versions.items():
        message.type_versions[SHORT_NAMES[type_url]] = version
    for type_url in PUSH_ORDER:
        if wanted is not None and type_url != wanted:
            continue
        for name in sorted(snap.of_type(type_url)):
            resource = snap.of_type(type_url)[name]
            message.resources.add(
                type=SHORT_NAMES[type_url],
                name=name,
                version=resource.version,
                bytes=resource.size,
                summary=summary(resource),
                json=json_format.MessageToJson(resource.message) if with_json else "",
            )
    return message

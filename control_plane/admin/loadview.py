"""``GetLoad`` and ``WatchLoad`` answers from a load view: a worker's ``LoadService`` or the
supervisor's ``LoadSum``, whose rows are ``load/totals.py``'s ``LoadRow``. Every row, or
(``changes_only``) only the servers that changed since the answer before on that stream. The
answer with every row is built once per version and shared by every caller; one server's is
built from its rows alone.

Imports the admin protos and the load row only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Protocol

from control_plane.admin.loadwire import rule_message
from control_plane.admin.pb import admin_pb2
from control_plane.load.totals import MILLION, LoadRow


class LoadView(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def reporting_proxies(self) -> int: ...

    @property
    def report_interval(self) -> float: ...

    @property
    def partial(self) -> bool:
        """The fleet's load could not be read: the rows are this control plane's own."""
        ...

    def servers(self) -> Sequence[str]: ...

    def rows_of(self, server: str) -> Sequence[LoadRow]: ...

    def changes_since(self, version: int) -> frozenset[str] | None: ...


def add_rows(response: Any, rows: Iterable[LoadRow]) -> None:
    """Append load rows to a ``LoadResponse``."""
    for row in rows:
        item = response.servers.add(
            server=row.server,
            region=row.region,
            ready_replicas=row.ready_replicas,
            in_flight=row.in_flight,
            requests_per_second=row.requests_per_second,
            errors_per_second=row.errors_per_second,
            dropped_per_second=row.dropped_per_second,
            desired_replicas=-1 if row.desired_replicas is None else row.desired_replicas,
            cold_starts=row.cold_starts,
            cold_start_mode=row.cold_start_mode,
            scale_down_candidates=row.scale_down_candidates,
        )
        if row.utilization is not None:
            item.utilization = row.utilization
        for replica in row.replicas:
            entry = item.replicas.add(
                replica=replica.replica,
                in_flight=replica.in_flight / MILLION,
                requests_per_second=replica.requests / MILLION,
                errors_per_second=replica.errors / MILLION,
                revision=replica.revision,
            )
            utilization = replica.utilization
            if utilization is not None:
                entry.utilization = round(utilization, 6)
        for revision in row.revisions:
            item.revisions.add(
                revision=revision.revision,
                ready_replicas=revision.ready_replicas,
                in_flight=revision.in_flight,
                requests_per_second=revision.requests_per_second,
                errors_per_second=revision.errors_per_second,
            )
        if row.autoscaling is not None:
            item.autoscaling.CopyFrom(rule_message(row.autoscaling))


class LoadAnswers:
    """Answers from ``view``."""

    def __init__(self, view: LoadView) -> None:
        self._view = view
        self._everything: tuple[tuple[int, int, bool], Any] | None = None

    def _response(self) -> Any:
        return admin_pb2.LoadResponse(
            reporting_proxies=self._view.reporting_proxies,
            report_interval_seconds=self._view.report_interval,
            partial=self._view.partial,
        )

    def everything(self) -> Any:
        """Every server's rows (built once per version and proxy count; do not alter it)."""
        view = self._view
        key = (view.version, view.reporting_proxies, view.partial)
        if self._everything is None or self._everything[0] != key:
            response = self._response()
            for name in view.servers():
                add_rows(response, view.rows_of(name))
            self._everything = (key, response)
        return self._everything[1]

    def of(self, server: str) -> Any:
        """One server's rows (none: no such server)."""
        response = self._response()
        add_rows(response, self._view.rows_of(server))
        return response

    def get(self, request: Any) -> Any:
        return self.of(request.server) if request.server else self.everything()

    def since(self, request: Any, sent: int | None) -> tuple[Any | None, int]:
        """The answer for a stream last sent version ``sent`` (None: nothing sent yet), or
        None when nothing it sees moved; and the version it brings the stream to."""
        view = self._view
        version = view.version
        if version == sent:
            return None, version
        changed = view.changes_since(sent) if request.changes_only and sent is not None else None
        if changed is None:
            return self.get(request), version
        if request.server:
            changed = changed & {request.server}
        if not changed:
            return None, version
        response = self._response()
        response.changes_only = True
        for name in sorted(changed):
            rows = view.rows_of(name)
            if rows:
                add_rows(response, rows)
            else:
                response.removed_servers.append(name)
        return response, version

    async def watch(self, request: Any, versions: AsyncIterator[int]) -> AsyncIterator[Any]:
        """The answer now, then one after every version (``versions``) that moved a row the
        request sees: with ``changes_only``, only what changed."""
        sent: int | None = None
        async for _ in versions:
            response, sent = self.since(request, sent)
            if response is not None:
                yield response

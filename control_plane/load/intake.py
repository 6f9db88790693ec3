"""The Load Reporting Service (``envoy.service.load_stats.v3.LoadReportingService``) on the xDS
port: the intake of the load view (``load.server``).

Each proxy opens one stream; routeplane answers its first request by asking for every cluster
(``send_all_clusters``) at ``--load-report-interval`` and takes each report into
the :class:`~control_plane.load.reports.LoadBook`, as that stream's report. A stream is let in
by the xDS streams' admission, up to ``MAX_LOAD_STREAMS``; under mTLS the same node
authorization as xDS applies, and a node id this process serves over xDS reports only as that
node's cluster. A malformed request ends that stream with INVALID_ARGUMENT, a report past a
bound (the first one too) with RESOURCE_EXHAUSTED. Endpoint entries are asked for only while
some server reads its replicas (``Catalog.granular``; asked again on the stream when that
changes). Reports arrive as bytes and are parsed only when taken, without the node Envoy
repeats in each: one at a time, at most one per half interval per stream, within ``LOOP_SHARE`` of
the event loop, in slices, so a flood of big reports never freezes the loop or xDS pushes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

import grpc
import structlog
from envoy.service.load_stats.v3 import lrs_pb2
from google.protobuf.message import DecodeError

from control_plane import metrics
from control_plane.identity import certificate_clusters
from control_plane.load.reports import Catalog, Draft, LoadBook
from control_plane.xds.nodes import DEFAULT_CLUSTER
from control_plane.xds.server import shorten

log = structlog.get_logger("routeplane.load")

SERVICE = "envoy.service.load_stats.v3.LoadReportingService"
MAX_CLUSTER_STATS = 10_000
MAX_NODE_ID = 256
MAX_LOAD_STREAMS = 20_000  # load-report streams at once, per process
# At most this share of the event loop goes to taking reports (over any second); past it a
# report is dropped unparsed, unless its stream's report in force would otherwise go stale.
LOOP_SHARE = 0.5
REPORT_SLICE = 500  # cluster stats read between two turns of the loop
# Localities and endpoints in one report (an honest proxy: each cluster's regions and, with
# endpoint granularity, each endpoint once); counted before anything is read.
MAX_REPORT_ENTRIES = 200_000
SLICE_ENTRIES = 20_000  # ... and at most about this many read between two turns of the loop
# Envoy's first LoadStatsRequest carries its node (~77 KB with every extension listed) and no
# report: a bigger one is refused before it is parsed (a first request is parsed before the
# loop budget is asked, since the node must be known).
MAX_FIRST_BYTES = 512 * 1024
DUE_BYTES = 256 * 1024  # a report this small is taken past the budget when its stream's is due


class ReportIntake:
    """The LRS streams of one process, feeding ``book``. ``catalog`` says what the routing
    table serves now; ``on_cold_start`` is called when a report noted a cold start."""

    def __init__(
        self,
        *,
        book: LoadBook,
        catalog: Callable[[], Catalog],
        on_cold_start: Callable[[], None],
        interval: float = 1.0,
        require_identity: bool = False,
        clock: Callable[[], float] = time.monotonic,
        admit: Callable[[], bool] = lambda: True,
        xds_nodes: Callable[[], Iterable[tuple[str, str]]] = tuple,
    ) -> None:
        self.book = book
        self._catalog = catalog
        self._on_cold_start = on_cold_start
        self.interval = interval
        self.require_identity = require_identity
        self._clock = clock
        # A new stream is let in by the xDS streams' admission (``admit``), and its node id
        # must match the fleet its xDS streams in this process are of (``xds_nodes``: (node id,
        # node cluster) per live xDS stream).
        self._admit = admit
        self._node_fleets = NodeFleets(xds_nodes)
        self._live: set[int] = set()
        self._budget = LoopBudget(LOOP_SHARE)
        self._taking = asyncio.Lock()  # one report taken at a time
        self._logged: dict[tuple[str, str], float] = {}
        self._streams = itertools.count(1)
        # Per stream: when the report before the one in force was taken.
        self._before: dict[int, float] = {}

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamLoadStats": grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    # Raw bytes: a report dropped by the per-stream rate or the loop budget is
                    # never parsed.
                    request_deserializer=None,
                    response_serializer=lrs_pb2.LoadStatsResponse.SerializeToString,
                )
            },
        )

    async def _stream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            raw = await anext(requests)
        except StopAsyncIteration:
            return
        if len(self._live) >= MAX_LOAD_STREAMS:
            self._refuse(
                context,
                "streams",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{MAX_LOAD_STREAMS} load-report streams already; retry later",
            )
            return
        if not self._admit():
            self._refuse(
                context,
                "admission",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many new streams right now; retry with backoff",
            )
            return
        if len(raw) > MAX_FIRST_BYTES:
            self._refuse(
                context,
                "size",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the first LoadStatsRequest is {len(raw):,} bytes; at most {MAX_FIRST_BYTES:,}",
            )
            return
        first = _parse(raw)
        del raw  # not kept for the stream's life
        if first is None:
            self._refuse(
                context,
                "malformed",
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first LoadStatsRequest does not parse",
            )
            return
        node_id = first.node.id
        if not node_id or len(node_id) > MAX_NODE_ID:
            self._refuse(
                context,
                "node",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first LoadStatsRequest needs a node id of 1-{MAX_NODE_ID} characters",
            )
            return
        denied = self._authorize(first.node, context)
        if denied:
            self._refuse(context, "identity", grpc.StatusCode.PERMISSION_DENIED, denied)
            return
        stream = next(self._streams)
        self._live.add(stream)  # counted from here: the streams cap has no window to slip by
        try:
            granular = self._catalog().granular
            yield self._response(granular=granular)
            log.info("load_reporter_connected", node_id=node_id, interval=self.interval)
            # The first report is taken as every other: every bound applies to it.
            refusal = await self._report(node_id, first, stream)
            del first  # nor is a report, between two of them
            if refusal is None:
                async for message in requests:
                    refusal = await self._report(node_id, message, stream)
                    del message
                    if refusal is not None:
                        break
                    # A server that reads replicas came or went: asked again, with or
                    # without endpoint entries (Envoy sends its next report that way).
                    if self._catalog().granular != granular:
                        granular = not granular
                        yield self._response(granular=granular)
            if refusal is not None:
                self._refuse(context, *refusal)
        finally:
            self._live.discard(stream)
            self._before.pop(stream, None)
            self.book.forget(stream)
            log.info("load_reporter_disconnected", node_id=node_id)

    @property
    def live(self) -> AbstractSet[int]:
        """The streams let in and not ended (a view: not to be changed)."""
        return self._live

    def _response(self, *, granular: bool) -> Any:
        """Every cluster, at the interval; per endpoint only if some server reads replicas
        (``Catalog.granular``): endpoint entries are most of a report's bytes and parsing."""
        response = lrs_pb2.LoadStatsResponse(
            send_all_clusters=True, report_endpoint_granularity=granular
        )
        response.load_reporting_interval.FromNanoseconds(int(self.interval * 1e9))
        return response

    def _authorize(self, node: Any, context: grpc.aio.ServicerContext) -> str:
        """Why this node may not report on this stream ("" if it may): under mTLS, the same
        node authorization as xDS (the certificate must allow the node's cluster); and a node
        id this process serves over xDS reports only as that node's fleet."""
        cluster = node.cluster or DEFAULT_CLUSTER
        if self.require_identity:
            allowed = certificate_clusters(context.auth_context())
            if cluster not in allowed:
                return (
                    f"the client certificate allows node cluster(s) "
                    f"{shorten(str(sorted(allowed)))}, not {shorten(cluster)!r}"
                )
        fleets = self._node_fleets.of(node.id)
        if fleets and cluster not in fleets:
            return (
                f"node {shorten(node.id)!r} is connected over xDS as node cluster(s) "
                f"{shorten(str(sorted(fleets)))}, not {shorten(cluster)!r}"
            )
        return ""

    def _refuse(
        self, context: grpc.aio.ServicerContext, reason: str, code: grpc.StatusCode, details: str
    ) -> None:
        """End the stream with ``code`` once the handler returns (not ``context.abort``, see
        ``xds.server._end``); counted by reason, logged at most once a second per reason."""
        metrics.LOAD_REPORTS_REJECTED.labels(reason).inc()
        self._log_once("load_stream_refused", reason, error=details)
        context.set_code(code)
        context.set_details(details)

    def _log_once(self, event: str, reason: str, **fields: Any) -> None:
        """``event`` at most once a second per (event, reason): a flood is not a flood of logs."""
        now = time.monotonic()
        key = (event, reason)
        if now - self._logged.get(key, -1.0) >= 1.0:
            self._logged[key] = now
            log.warning(event, reason=reason, **fields)

    async def _report(
        self, node_id: str, message: Any, stream: int
    ) -> tuple[str, grpc.StatusCode, str] | None:
        """Take one report (raw bytes, or the parsed first request) unless its stream reports
        far more often than asked or the loop's budget for reports is spent. A report is read
        in slices with a turn of the loop between them, so a big one never freezes it. Returns
        the status that ends the stream, if the report is past a bound."""
        now = self._clock()
        last = self.book.last_report(stream)
        if last is not None and now - last < self.interval / 2:
            # Far more often than asked, unless the report in force came late (the loop was
            # busy): then this one is on time, and dropping it would lose its counts (drops
            # and requests are counted per report). So at most two reports in an interval.
            before = self._before.get(stream)
            if before is None or now - before < self.interval:
                metrics.LOAD_REPORTS_REJECTED.labels("rate").inc()
                self._log_once("load_report_dropped", "rate", node_id=shorten(node_id))
                return None
        # One report is taken at a time, so one parsed report at most is in memory. Past the
        # loop budget, or while another is being taken, a report is dropped unparsed, unless it
        # is small and its stream's report in force would otherwise go stale: a flood never
        # makes a quiet honest proxy stop counting, and what passes that way is small.
        size = len(message) if isinstance(message, bytes) else message.ByteSize()
        due = size <= DUE_BYTES and (last is None or now - last >= 2 * self.interval)
        if not due and (self._taking.locked() or not self._budget.take(0.0)):
            metrics.LOAD_REPORTS_REJECTED.labels("busy").inc()
            self._log_once("load_report_dropped", "busy", node_id=shorten(node_id))
            return None
        async with self._taking:
            refusal = await self._read(node_id, message, stream)
        if last is not None and self.book.last_report(stream) != last:
            self._before[stream] = last  # the report before the one now in force
        return refusal

    async def _read(
        self, node_id: str, message: Any, stream: int
    ) -> tuple[str, grpc.StatusCode, str] | None:
        """Parse (if need be), check and take one report, in slices."""
        started = time.perf_counter()
        if isinstance(message, bytes):
            parsed, size = _parse_report(message)
            if parsed is None:
                return (
                    "malformed",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a LoadStatsRequest does not parse",
                )
            message = parsed
        else:
            size = message.ByteSize()
        cluster_stats = message.cluster_stats
        if len(cluster_stats) > MAX_CLUSTER_STATS:
            return (
                "size",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(cluster_stats)} cluster stats in one report; at most {MAX_CLUSTER_STATS}",
            )
        if not cluster_stats:
            self._budget.spend(time.perf_counter() - started)
            return None
        cuts = _slices(cluster_stats, size)
        if cuts is None:
            self._budget.spend(time.perf_counter() - started)
            return (
                "size",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {MAX_REPORT_ENTRIES:,} locality and endpoint stats in one report",
            )
        read_from = self._clock()  # read with the catalog of then
        draft = Draft(self._catalog())
        cost = 0.0
        for begin, end in itertools.pairwise(cuts):
            if begin:
                cost += time.perf_counter() - started
                await asyncio.sleep(0)  # let the loop answer between slices
                started = time.perf_counter()
            draft.add(cluster_stats[begin:end])
        self._commit(node_id, draft, stream, read_from=read_from)
        cost += time.perf_counter() - started
        self._budget.spend(cost)
        metrics.LOAD_REPORT_SECONDS.observe(cost)
        return None

    def _take(self, node_id: str, request: Any, stream: int) -> None:
        """Take one parsed request at once (a bench measures this)."""
        if not request.cluster_stats:
            return
        started = time.perf_counter()
        draft = Draft(self._catalog())
        draft.add(request.cluster_stats)
        self._commit(node_id, draft, stream)
        metrics.LOAD_REPORT_SECONDS.observe(time.perf_counter() - started)

    def _commit(
        self, node_id: str, draft: Draft, stream: int, *, read_from: float | None = None
    ) -> None:
        events = self.book.cold_start_events
        ignored = self.book.commit(
            draft,
            node_id=node_id,
            stream=stream,
            now=self._clock(),
            asked_interval=self.interval,
            read_from=read_from,
        )
        if self.book.cold_start_events != events:
            self._on_cold_start()
        metrics.LOAD_REPORTS.inc()
        for reason, count in ignored.items():
            metrics.LOAD_REPORT_ITEMS_IGNORED.labels(reason).inc(count)
            self._log_once(
                "load_report_items_ignored", reason, count=count, node_id=shorten(node_id)
            )


def _slices(cluster_stats: Any, size: int) -> list[int] | None:
    """Where to cut ``cluster_stats`` (parsed from ``size`` bytes) so that each slice holds at
    most ``REPORT_SLICE`` clusters and about ``SLICE_ENTRIES`` localities and endpoints (a
    cluster is never cut); None past ``MAX_REPORT_ENTRIES`` in all. Counting stops at the
    bound, so a report of millions of empty entries costs the bound, not its size. An entry
    takes at least 2 bytes (its tag and length), so a report of at most ``REPORT_SLICE``
    clusters in under ``2 * SLICE_ENTRIES`` bytes is one slice, within every bound, uncounted
    (an honest proxy's usual report)."""
    if len(cluster_stats) <= REPORT_SLICE and size < 2 * SLICE_ENTRIES:
        return [0, len(cluster_stats)]
    cuts = [0]
    total = in_slice = 0
    for index, stats in enumerate(cluster_stats):
        if index - cuts[-1] >= REPORT_SLICE or in_slice >= SLICE_ENTRIES:
            cuts.append(index)
            in_slice = 0
        localities = stats.upstream_locality_stats
        entries = len(localities)
        for locality in localities:
            entries += len(locality.upstream_endpoint_stats)
            if total + entries > MAX_REPORT_ENTRIES:
                return None
        total += entries
        in_slice += entries
        if total > MAX_REPORT_ENTRIES:
            return None
    cuts.append(len(cluster_stats))
    return cuts


def _parse(raw: bytes) -> Any:
    """A LoadStatsRequest, or None if ``raw`` does not parse."""
    try:
        return lrs_pb2.LoadStatsRequest.FromString(raw)
    except DecodeError:
        return None


def _parse_report(raw: bytes) -> tuple[Any, int]:
    """A report after the first, its node left unparsed (None if it does not parse), and the
    bytes parsed. Envoy sends its whole node (~61 KB with every extension listed) in every
    LoadStatsRequest, first, and only a first request's is read: the leading node fields are
    skipped by their length prefix, and what follows is parsed as the same message."""
    start = _after_node(raw)
    try:
        body = memoryview(raw)[start:] if start else raw
        return lrs_pb2.LoadStatsRequest.FromString(body), len(raw) - start
    except DecodeError:
        return None, 0


NODE_TAG = 0x0A  # field 1 (node), length-delimited


def _after_node(raw: bytes) -> int:
    """Where ``raw`` goes on after its leading node fields (0: none, or a length prefix that
    does not hold, and the whole message is parsed, and refused, as it is)."""
    at, size = 0, len(raw)
    while at < size and raw[at] == NODE_TAG:
        length = shift = 0
        index = at + 1
        while True:
            if index >= size or shift > 63:
                return 0
            byte = raw[index]
            index += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if index + length > size:
            return 0
        at = index + length
    return at


class NodeFleets:
    """Node id -> the node clusters (fleets) it is connected as over xDS in this process, from
    ``streams`` ((node id, node cluster) per live xDS stream). Rebuilt at most once a second:
    a storm of new load-report streams costs one pass over the xDS streams a second, not one
    each. A node not (yet) seen over xDS has no fleets: nothing to compare with."""

    def __init__(
        self,
        streams: Callable[[], Iterable[tuple[str, str]]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._streams = streams
        self._clock = clock
        self._at = -math.inf
        self._fleets: dict[str, frozenset[str]] = {}

    def of(self, node_id: str) -> frozenset[str]:
        now = self._clock()
        if now - self._at >= 1.0:
            fleets: dict[str, set[str]] = {}
            for node, cluster in self._streams():
                fleets.setdefault(node, set()).add(cluster)
            self._fleets = {node: frozenset(clusters) for node, clusters in fleets.items()}
            self._at = now
        return self._fleets.get(node_id, frozenset())


class LoopBudget:
    """The share of the event loop that taking reports may use: ``share`` seconds of work per
    second, at most one second's worth saved up. ``take`` is True while any is left (the work
    is paid for after, with ``spend``: the budget can go below zero by one report)."""

    def __init__(self, share: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self._clock = clock
        self._left = share
        self._at = clock()

    def take(self, cost: float) -> bool:
        now = self._clock()
        self._left = min(self.share, self._left + (now - self._at) * self.share)
        self._at = now
        return self._left > cost

    def spend(self, cost: float) -> None:
        self._left -= cost

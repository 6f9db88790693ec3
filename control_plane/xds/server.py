"""The xDS gRPC services: ADS and per-type CDS/EDS/LDS/RDS, state-of-the-world and delta.

Every stream follows the same shape: read the first request (it carries the node), find the
node group, watch that group in the cache, then run a reader (requests -> protocol state) and
a writer (latest snapshot -> responses) until either side ends. Responses are assembled from
pre-encoded bytes (``response_serializer`` is the identity), so a push never re-serializes a
resource. The status every xDS stream ends with is set here (``xds.stream`` and the protocols
raise; the CSDS, load-report and admin services set their own).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import discovery_pb2

from control_plane import metrics
from control_plane.identity import certificate_clusters
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.delta import DeltaStream
from control_plane.xds.nodes import NodeGroup, to_node_group
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT_NAMES
from control_plane.xds.sotw import SotwStream
from control_plane.xds.stream import (
    DEFAULT_LIMITS,
    LimitExceededError,
    Limits,
    Outgoing,
    RequestOutcome,
)

log = structlog.get_logger("routeplane.xds")

_SERVICES: dict[str, dict[str, tuple[bool, str]]] = {
    # service -> method -> (delta, the one type it serves or "" for all)
    "envoy.service.discovery.v3.AggregatedDiscoveryService": {
        "StreamAggregatedResources": (False, ""),
        "DeltaAggregatedResources": (True, ""),
    },
    "envoy.service.cluster.v3.ClusterDiscoveryService": {
        "StreamClusters": (False, CLUSTER),
        "DeltaClusters": (True, CLUSTER),
    },
    "envoy.service.endpoint.v3.EndpointDiscoveryService": {
        "StreamEndpoints": (False, ENDPOINT),
        "DeltaEndpoints": (True, ENDPOINT),
    },
    "envoy.service.listener.v3.ListenerDiscoveryService": {
        "StreamListeners": (False, LISTENER),
        "DeltaListeners": (True, LISTENER),
    },
    "envoy.service.route.v3.RouteDiscoveryService": {
        "StreamRoutes": (False, ROUTE),
        "DeltaRoutes": (True, ROUTE),
    },
}


@dataclass(slots=True, kw_only=True)
class Proxy:
    """One connected xDS stream, as the admin API and tests see it."""

    stream_id: int
    node_id: str
    group: NodeGroup
    peer: str
    delta: bool
    only_type: str
    connected_at: float
    protocol: SotwStream | DeltaStream
    # The node's user_agent_name (shortened): "envoy", "gRPC C-core ...".
    user_agent: str = ""
    acked_at: dict[str, float] = field(default_factory=dict)
    # Per type: the newest source commit time already counted in the convergence histogram.
    observed: dict[str, float] = field(default_factory=dict)
    # Set when a request went past the stream's limits: the stream ends with this message.
    refusal: str = ""


AckListener = Callable[[Proxy, str, str], None]
# (proxy, type_url, names it newly subscribed to)
SubscribeListener = Callable[[Proxy, str, frozenset[str]], None]


class XdsServer:
    """Serves snapshots from ``cache`` to every proxy that connects."""

    def __init__(
        self,
        *,
        cache: SnapshotCache,
        control_plane_id: str,
        new_streams_per_second: float = 500.0,
        max_concurrent_pushes: int = 256,
        require_identity: bool = False,
        write_timeout: float = 10.0,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.limits = limits
        # With mTLS: a proxy gets only the node group its client certificate allows.
        self.require_identity = require_identity
        self.control_plane_id = control_plane_id
        self.proxies: dict[int, Proxy] = {}
        self._ids = itertools.count(1)
        self._ack_listeners: list[AckListener] = []
        self._subscribe_listeners: list[SubscribeListener] = []
        # Admission control: a reconnect storm is let in at a steady rate (refused streams are
        # told to retry; Envoy backs off and comes back), and at most this many pushes run at
        # once so the loop keeps answering ACKs, the admin API and /metrics.
        self._admission = TokenBucket(
            rate=new_streams_per_second, burst=max(1.0, new_streams_per_second)
        )
        self._pushes = PushSlots(max_concurrent_pushes)
        # A proxy that stops reading fills its flow-control window and its writes stall; after
        # this long it is disconnected, so it holds no push slot and no memory for long.
        self.write_timeout = write_timeout
        # The pushes being written, each with the loop time it began, and one watchdog timer
        # for all of them (not a timer per push: a wave to a thousand streams made a thousand).
        self._writes: dict[asyncio.Task[Any], float] = {}
        # Pushes the watchdog cancelled, until their ``_push`` has seen it.
        self._stalled: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        # Per refusal reason, when ``stream_refused`` was last logged (``clock``'s time).
        self._refusal_logged: dict[str, float] = {}
        self._clock = clock

    def _refuse(
        self,
        context: grpc.aio.ServicerContext,
        reason: str,
        code: grpc.StatusCode,
        message: str,
        *,
        logged: str = "",
    ) -> None:
        """End a stream refused for ``reason`` with ``code`` and ``message``: counted every
        time, logged (``logged``, or the message) at most once a second per reason, so a flood
        of refusals is not a flood of logs."""
        metrics.STREAMS_REFUSED.labels(reason).inc()
        now = self._clock()
        last = self._refusal_logged.get(reason)
        if last is None or now - last >= 1.0:
            self._refusal_logged[reason] = now
            log.warning("stream_refused", reason=reason, error=logged or message)
        _end(context, code, message)

    def add_ack_listener(self, listener: AckListener) -> None:
        self._ack_listeners.append(listener)

    def add_subscribe_listener(self, listener: SubscribeListener) -> None:
        """Called with the names a request subscribes to that its stream had not (bounded by
        the stream's name limit); e.g. an on-demand cluster asked for by a held request."""
        self._subscribe_listeners.append(listener)

    def admit(self) -> bool:
        """Let one new stream in, by the same admission as xDS streams (load-report streams
        share it); False: refuse it, the client retries with backoff."""
        return self._admission.take()

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        handlers = []
        for service, methods in _SERVICES.items():
            table = {}
            for method, (delta, only_type) in methods.items():
                table[method] = grpc.stream_stream_rpc_method_handler(
                    self._behaviour(delta=delta, only_type=only_type),
                    request_deserializer=(
                        discovery_pb2.DeltaDiscoveryRequest.FromString
                        if delta
                        else discovery_pb2.DiscoveryRequest.FromString
                    ),
                    response_serializer=None,
                )
            handlers.append(grpc.method_handlers_generic_handler(service, table))
        return handlers

    def _behaviour(
        self, *, delta: bool, only_type: str
    ) -> Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], Any]:
        async def behaviour(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> None:
            await self._serve_stream(requests, context, delta=delta, only_type=only_type)

        return behaviour

    async def _serve_stream(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        *,
        delta: bool,
        only_type: str,
    ) -> None:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if not self._admission.take():
            # Refused after the first request is read, so the client gets a clean status.
            self._refuse(
                context,
                "rate",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many new xDS streams right now; retry with backoff",
            )
            return
        if only_type and first.type_url and first.type_url != only_type:
            _end(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"type_url {shorten(first.type_url)!r} is not served by this service "
                f"(expects {only_type})",
            )
            return
        protocol: SotwStream | DeltaStream = (
            DeltaStream(
                control_plane_id=self.control_plane_id, only_type=only_type, limits=self.limits
            )
            if delta
            else SotwStream(
                control_plane_id=self.control_plane_id, only_type=only_type, limits=self.limits
            )
        )
        try:
            group = to_node_group(first.node)
        except ValueError as exc:
            self._refuse(context, "node", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        refusal = self.cache.refusal(group)
        if refusal:
            self._refuse(
                context,
                "groups",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"no room for a new node group: {refusal}; retry later",
                logged=refusal,
            )
            return
        if self.require_identity:
            allowed = certificate_clusters(context.auth_context())
            if group.cluster not in allowed:
                self._refuse(
                    context,
                    "identity",
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the client certificate allows node cluster(s) "
                    f"{shorten(str(sorted(allowed)))}, not {shorten(group.cluster)!r}",
                )
                return
        proxy = Proxy(
            stream_id=next(self._ids),
            node_id=shorten(first.node.id, MAX_NODE_ID),
            group=group,
            peer=context.peer(),
            delta=delta,
            only_type=only_type,
            connected_at=time.time(),
            protocol=protocol,
            user_agent=shorten(first.node.user_agent_name, 64),
        )
        bound = log.bind(node_id=proxy.node_id, group=group.key, stream_id=proxy.stream_id)
        self.proxies[proxy.stream_id] = proxy
        wake = Wake(self._pushes)
        cancel_watch = self.cache.watch(group, wake.set)
        bound.info(
            "proxy_connected",
            peer=proxy.peer,
            delta=delta,
            type_url=only_type or "ads",
            client=group.kind,
        )
        reader: asyncio.Task[None] | None = None
        task = asyncio.current_task()  # (the watchdog cancels it if a push stalls)
        assert task is not None
        try:
            try:
                self._handle(proxy, first, wake, bound)
            except LimitExceededError as exc:
                proxy.refusal = str(exc)
            reader = asyncio.create_task(self._read(proxy, requests, wake, bound))
            finished = False
            while not finished:
                if proxy.refusal:
                    self._refuse(
                        context, "limits", grpc.StatusCode.RESOURCE_EXHAUSTED, proxy.refusal
                    )
                    return
                # One wait for both: something to push (a snapshot, a request) and a push slot.
                await wake.wait()
                try:
                    if proxy.refusal:
                        continue  # refused at the top of the loop, the slot given back
                    # A client that half-closed still gets what its requests asked for.
                    finished = reader.done()
                    if finished and (reader.cancelled() or reader.exception() is not None):
                        break
                    await self._push(
                        context, protocol.responses(self.cache.get(group)), bound, task
                    )
                finally:
                    self._pushes.release()
            if not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            cancel_watch()
            if reader is not None:
                reader.cancel()
            del self.proxies[proxy.stream_id]
            bound.info("proxy_disconnected")

    async def _push(
        self,
        context: grpc.aio.ServicerContext,
        responses: list[Outgoing],
        bound: Any,
        task: asyncio.Task[Any],
    ) -> None:
        """Write one push's responses. Its own frame, so the payloads are released when it
        returns: a stream waiting for the next change holds none of the last push's bytes (it
        did, as a loop variable: ~60 KB per stream at 100 clusters)."""
        if not responses:
            return
        # No deadline object and no timer per push: the push is entered in ``_writes`` with the
        # loop time it began, and the one watchdog cancels it once it has been writing for
        # ``write_timeout`` (a proxy that stops reading is cut off alike). ``task`` is the
        # stream's, which runs this push.
        writes = self._writes
        loop = asyncio.get_running_loop()
        writes[task] = loop.time()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.write_timeout, self._check_writes)
        try:
            for outgoing in responses:
                await context.write(outgoing.payload)
                self._log_push(bound, outgoing)
        except asyncio.CancelledError:
            # The watchdog's cancellation, and no other (a stream torn down meanwhile is
            # cancelled again): the stream is cut as stalled, as a deadline would.
            if task not in self._stalled or task.uncancel() > 0:
                raise
        else:
            return
        finally:
            writes.pop(task, None)
            self._stalled.discard(task)
        metrics.STREAMS_REFUSED.labels("stalled").inc()
        bound.warning("stream_stalled", write_timeout=self.write_timeout)
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the proxy stopped reading; reconnect"
        )

    def _check_writes(self) -> None:
        """The watchdog: cancel every push writing for ``write_timeout`` or longer, then wake
        again when the oldest of the others reaches it (not at all if none is left). Its cost
        is one pass over the pushes in flight, which the push slots bound."""
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = self.write_timeout
        oldest: float | None = None
        for task, began in list(self._writes.items()):
            if now - began >= limit:
                del self._writes[task]
                self._stalled.add(task)
                task.cancel()  # CancelledError in its write; ``_push`` turns it into the cut
            elif oldest is None or began < oldest:
                oldest = began
        if oldest is not None:
            self._watchdog = loop.call_at(oldest + limit, self._check_writes)

    async def _read(
        self,
        proxy: Proxy,
        requests: AsyncIterator[Any],
        wake: Wake,
        bound: Any,
    ) -> None:
        try:
            async for request in requests:
                self._handle(proxy, request, wake, bound)
        except LimitExceededError as exc:
            proxy.refusal = str(exc)
        finally:
            wake.set()

    def _handle(self, proxy: Proxy, request: Any, wake: Wake, bound: Any) -> None:
        outcome: RequestOutcome = proxy.protocol.on_request(request)
        # Metric labels and log fields take only the types we serve: a client's type_url is
        # not allowed to grow the metric's cardinality.
        short = SHORT_NAMES.get(outcome.type_url, "other")
        if outcome.stale:
            bound.debug("stale_nonce_ignored", type_url=short, nonce=shorten(_nonce_of(request)))
            return
        if outcome.nack is not None and outcome.repeated_nack:
            pass  # the same version NACKed again: counted and logged once
        elif outcome.nack is not None:
            metrics.NACKS.labels(short).inc()
            bound.warning(
                "nack_received",
                type_url=short,
                version=outcome.nack.version,
                error=outcome.nack.message,
            )
        elif outcome.ack is not None:
            now = time.time()
            proxy.acked_at[outcome.type_url] = now
            acks, convergence = _ack_metrics(short)
            _COUNTS.add(acks)
            if not outcome.first_ack and outcome.committed_at > proxy.observed.get(short, 0.0):
                convergence.observe(max(0.0, now - outcome.committed_at))
            if outcome.committed_at:
                proxy.observed[short] = max(proxy.observed.get(short, 0.0), outcome.committed_at)
            for listener in self._ack_listeners:
                listener(proxy, outcome.type_url, outcome.ack)
        if outcome.subscribed:
            for subscribed in self._subscribe_listeners:
                subscribed(proxy, outcome.type_url, outcome.subscribed)
        if outcome.resubscribed:
            wake.set()

    @staticmethod
    def _log_push(bound: Any, outgoing: Outgoing) -> None:
        pushes, push_bytes = _push_counters(outgoing.type_url)
        _COUNTS.add(pushes)
        _COUNTS.add(push_bytes, len(outgoing.payload))
        bound.debug(
            "response_sent",
            type_url=SHORT_NAMES.get(outgoing.type_url, outgoing.type_url),
            version=outgoing.version,
            nonce=outgoing.nonce,
            resources=len(outgoing.resource_names),
            removed=len(outgoing.removed),
            bytes=len(outgoing.payload),
        )


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` never waits."""

    def __init__(self, *, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class PushSlots:
    """At most ``size`` holders at once, admitted in the order they asked. Cheaper than
    ``asyncio.Semaphore`` for a wave of pushes that mostly wait: a release hands its slot
    straight to the first waiter (no scan past waiters already woken, no removal from the
    middle of the queue), and a waiter cancelled while queued is skipped when its turn comes."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free slot at once if there is one (and nobody queued before)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    def enqueue(self, waiter: asyncio.Future[None]) -> None:
        """Hand ``waiter`` a slot now if one is free, else when its turn comes; its owner
        releases the slot (or, cancelled after the handing, gives it back: :meth:`wait_for`)."""
        if self.take():
            waiter.set_result(None)
        else:
            self._waiters.append(waiter)

    async def wait_for(self, waiter: asyncio.Future[None]) -> None:
        """Await ``waiter`` (queued by :meth:`enqueue`, now or later); a cancellation after it
        was handed its slot gives the slot back."""
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before it could use it
            raise

    async def acquire(self) -> None:
        if self.take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await self.wait_for(waiter)

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class Wake:
    """A stream's wake-up and its push slot in one wait: :meth:`set` (the cache's notify, the
    stream's reader) makes the stream due; :meth:`wait` returns once it is due *and* holds one
    of ``slots``, no longer due, and the caller releases the slot. A due stream queues for a
    slot at once, from ``set``, so a wave of pushes costs each stream one future and one
    resumption; an ``asyncio.Event`` then ``PushSlots.acquire`` cost two for every stream
    queued behind the slots (most of a wave to a thousand streams). A ``set`` while the stream
    is already due (queued, or handed its slot and not yet running) adds nothing: what it
    pushes is read after ``wait`` returns, so it sees the newest state, as with an Event."""

    __slots__ = ("_due", "_slots", "_waiter")

    def __init__(self, slots: PushSlots) -> None:
        self._slots = slots
        self._due = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        if self._due:
            return
        self._due = True
        if self._waiter is not None:
            self._slots.enqueue(self._waiter)

    async def wait(self) -> None:
        slots = self._slots
        if self._due and slots.take():
            self._due = False
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        if self._due:
            slots.enqueue(waiter)
        try:
            await slots.wait_for(waiter)
        finally:
            self._waiter = None
        self._due = False


class _Counts:
    """Counter increments added up and applied once per event-loop iteration: a push to a
    thousand streams and their thousand ACKs make a few increments, not thousands (each takes
    the counter's lock). Read from ``/metrics`` (another iteration), the sums are all there."""

    def __init__(self) -> None:
        self._pending: dict[Any, float] = {}

    def add(self, counter: Any, amount: float = 1.0) -> None:
        pending = self._pending
        if not pending:
            asyncio.get_running_loop().call_soon(self._flush)
        pending[counter] = pending.get(counter, 0.0) + amount

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for counter, amount in pending.items():
            counter.inc(amount)


_COUNTS = _Counts()


@functools.cache
def _push_counters(type_url: str) -> tuple[Any, Any]:
    short = SHORT_NAMES.get(type_url, type_url)
    return metrics.PUSHES.labels(short), metrics.PUSH_BYTES.labels(short)


@functools.cache
def _ack_metrics(short: str) -> tuple[Any, Any]:
    return metrics.ACKS.labels(short), metrics.CONVERGENCE.labels(short)


MAX_NODE_ID = 256


def shorten(text: str, limit: int = 128) -> str:
    """A client-supplied string as it may appear in a status message, a log line or a table."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text) - limit} more)"


def _end(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """End the stream with ``code`` once the handler returns. Not ``context.abort``: its
    exception and the handler's frames make a reference cycle with the call (grpc.aio keeps
    the exception on the call), so every refused stream of a reconnect storm stayed in memory
    (~7 KB of resident memory each) until a full garbage collection, which serving processes
    run rarely (``app.tune_gc``)."""
    context.set_code(code)
    context.set_details(details)


def _nonce_of(request: Any) -> str:
    return str(request.response_nonce)

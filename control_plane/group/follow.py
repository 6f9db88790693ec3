"""A worker's registry states under ``serve --workers N``: from its host's watcher
(``group/watcher.py``) over a Unix socket, in place of its own registry watch.

``WatcherFeed.states()`` is what ``Reconciler(states=...)`` follows, like ``Registry.watch``:
it yields each state the :class:`~control_plane.group.handoff.Follower` hands on (in order, at
most once), and raises ``RegistryUnavailableError`` when the watcher reports the store's error
or cannot be reached for ``CONNECT_PATIENCE`` seconds (the worker then reports itself
degraded and retries with the reconciler's backoff). A watcher that dies is replaced by the
supervisor: the feed reconnects at once, without raising, and the new watcher's full state
hands on only what changed meanwhile (nothing when nothing did).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import structlog

from control_plane.group.handoff import HEADER as FRAME_HEADER
from control_plane.group.handoff import Follower, HandOffError, OutOfSync, decode, frame_length
from control_plane.registry.errors import RegistryUnavailableError
from control_plane.registry.model import RegistryState

log = structlog.get_logger("routeplane.workers")

CONNECT_PATIENCE = 10.0  # seconds without a watcher before the worker reports itself degraded
RETRY_EVERY = 0.02  # seconds between connection attempts while the watcher (re)starts


class WatcherFeed:
    """The states of the watcher listening on ``path``."""

    def __init__(self, path: str, *, patience: float = CONNECT_PATIENCE) -> None:
        self.path = path
        self.patience = patience
        self.follower = Follower()
        self._failed = False  # the last states() ended in an error

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
                writer.write(b"follow\n")
                return reader, writer
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise RegistryUnavailableError(
                        f"registry watcher at {self.path}: cannot connect for "
                        f"{self.patience:g} s: {exc.strerror or exc}"
                    ) from None
            await asyncio.sleep(RETRY_EVERY)

    async def states(self) -> AsyncIterator[RegistryState]:
        """Every new state, until the watcher reports an error (RegistryUnavailableError)."""
        while True:
            reader, writer = await self._connect()
            try:
                while True:
                    header = await reader.readexactly(FRAME_HEADER.size)
                    message = decode(await reader.readexactly(frame_length(header)))
                    if message.error:
                        self._failed = True
                        raise RegistryUnavailableError(message.error)
                    state = self.follower.take(message)
                    if state is None and self._failed and self.follower.delivered is not None:
                        state = self.follower.delivered  # the store is back: say so
                    self._failed = False
                    if state is not None:
                        yield state
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                log.info("watcher_disconnected", socket=self.path, error=str(exc) or "closed")
            except (HandOffError, OutOfSync) as exc:
                log.warning("watcher_resync", socket=self.path, error=str(exc))
            finally:
                writer.close()

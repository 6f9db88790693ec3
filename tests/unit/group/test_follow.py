"""The watcher (``group/watcher.py``) and a worker's feed (``group/follow.py``) over a real Unix
socket, in one process, with a registry whose watch the test drives (as go-control-plane tests
its server against a fake watcher): states flow in order, the store's error reaches the worker
as its own registry error would and clears when the store is back, and a new watcher hands on
only what changed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.group.follow import WatcherFeed
from control_plane.group.watcher import Watcher
from control_plane.registry.errors import RegistryUnavailableError
from control_plane.registry.model import RegistryState, Replica, Server
from tests.helpers import async_wait_until

TIMEOUT = 10.0


class DrivenRegistry:
    """A registry whose ``watch`` yields what the test puts in ``steps`` (a state, or an
    exception to raise)."""

    url = "driven://"
    default_poll_interval = 0.01

    def __init__(self) -> None:
        self.steps: asyncio.Queue[RegistryState | Exception] = asyncio.Queue()

    async def watch(self, *, poll_interval: float = 0.01) -> AsyncIterator[RegistryState]:
        while True:
            step = await self.steps.get()
            if isinstance(step, Exception):
                raise step
            yield step


def state(revision: int, *ports: int) -> RegistryState:
    return RegistryState.of(
        servers=[Server(name="echo", hostnames=("echo.local",), protocol="http")],
        replicas=[
            Replica(id=f"r{p}", server="echo", host="127.0.0.1", port=p, region="us-west")
            for p in ports
        ],
        revision=revision,
        committed_at=float(revision),
    )


@contextlib.asynccontextmanager
async def watching(registry: DrivenRegistry, path: Path) -> AsyncIterator[Watcher]:
    watcher = Watcher(registry, poll_interval=None)  # type: ignore[arg-type]
    server = await asyncio.start_unix_server(watcher.serve, path=str(path))
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        server.close()
        watcher.close()  # as when the watcher process dies: its followers' sockets close
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_of(states: AsyncIterator[RegistryState]) -> RegistryState:
    async with asyncio.timeout(TIMEOUT):
        return await anext(states)


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "watch.sock"


async def test_states_reach_the_worker_in_order(socket_path: Path) -> None:
    registry = DrivenRegistry()
    async with watching(registry, socket_path):
        feed = WatcherFeed(str(socket_path))
        states = feed.states()
        registry.steps.put_nowait(state(1, 80))
        assert (await next_of(states)).replicas_by_server["echo"][0].port == 80
        registry.steps.put_nowait(state(2, 80, 81))
        registry.steps.put_nowait(state(3, 81))
        second, third = await next_of(states), await next_of(states)
        assert [r.port for r in second.replicas_by_server["echo"]] == [80, 81]
        assert [r.port for r in third.replicas_by_server["echo"]] == [81]
        assert (second.revision, third.revision) == (2, 3)
        await states.aclose()


async def test_the_stores_error_reaches_the_worker_and_clears_when_it_is_back(
    socket_path: Path,
) -> None:
    registry = DrivenRegistry()
    async with watching(registry, socket_path) as watcher:
        feed = WatcherFeed(str(socket_path))
        states = feed.states()
        registry.steps.put_nowait(state(1, 80))
        first = await next_of(states)
        registry.steps.put_nowait(RegistryUnavailableError("registry 'driven://': unreachable"))
        with pytest.raises(RegistryUnavailableError, match="unreachable"):
            await next_of(states)
        # While the store is down, a reconnecting worker hears the error at once.
        with pytest.raises(RegistryUnavailableError, match="unreachable"):
            await next_of(feed.states())
        registry.steps.put_nowait(state(2, 80))  # back, nothing changed
        await async_wait_until(lambda: not watcher.error, what="the watcher's recovery")
        again = feed.states()
        # The same state again, once: the worker's reconciler learns the store is back.
        assert await next_of(again) is first
        await again.aclose()


async def test_a_new_watcher_hands_on_only_what_changed(socket_path: Path) -> None:
    registry = DrivenRegistry()
    feed = WatcherFeed(str(socket_path))
    states = feed.states()
    async with watching(registry, socket_path):
        registry.steps.put_nowait(state(1, 80))
        first = await next_of(states)
    replacement = DrivenRegistry()
    async with watching(replacement, socket_path):
        # A Spanner-like store numbers revisions per process: the new watcher starts at 1.
        replacement.steps.put_nowait(state(1, 80))
        replacement.steps.put_nowait(state(2, 80, 82))
        changed = await next_of(states)
        assert [r.port for r in changed.replicas_by_server["echo"]] == [80, 82]
        assert changed.revision > first.revision
        await states.aclose()


async def test_no_watcher_for_the_patience_is_a_registry_error(socket_path: Path) -> None:
    feed = WatcherFeed(str(socket_path), patience=0.05)
    with pytest.raises(RegistryUnavailableError, match=r"registry watcher at .*: cannot connect"):
        await next_of(feed.states())

"""Rollout rows (``control_plane/rollout/``) in every store: one per server, a second start of a
running one refused, the lease taken only when free, run out or already the taker's, a record
written only by its holder, ended by anyone (``servers rollback``); no write moves the revision,
so the routing watch never sees one."""

from __future__ import annotations

import time

import pytest

from control_plane.registry import Registry
from control_plane.registry.errors import ConflictError


def test_one_running_rollout_per_server_and_no_revision_moves(registry: Registry) -> None:
    now = time.time()
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    before = registry.read_state()
    registry.start_rollout(server="echo", body='{"a":1}', now=now)
    with pytest.raises(ConflictError, match="rollout running"):
        registry.start_rollout(server="echo", body='{"a":2}', now=now)
    [row] = registry.read_rollouts(max_rows=10, max_bytes=1000)
    assert (row.server, row.state, row.holder, row.body) == ("echo", "running", "", '{"a":1}')
    assert registry.end_rollout(server="echo", state="stopped", body='{"b":1}', now=now)
    assert not registry.end_rollout(server="echo", state="stopped", body='{"b":2}', now=now)
    registry.start_rollout(server="echo", body='{"c":1}', now=now)  # an ended one is replaced
    [row] = registry.read_rollouts(server="echo", max_rows=10, max_bytes=1000)
    assert (row.state, row.body) == ("running", '{"c":1}')
    after = registry.read_state()
    assert after.committed_at == before.committed_at
    if registry.url.startswith("sqlite"):
        assert after.revision == before.revision


def test_the_lease_is_taken_only_when_free_run_out_or_ours(registry: Registry) -> None:
    now = time.time()
    registry.start_rollout(server="echo", body="{}", now=now)
    assert registry.hold_rollout(server="echo", holder="a", now=now, lease_seconds=3)
    assert not registry.hold_rollout(server="echo", holder="b", now=now + 1, lease_seconds=3)
    assert registry.hold_rollout(server="echo", holder="a", now=now + 2, lease_seconds=3)
    # a's lease now ends at now + 5: b waits for it
    assert not registry.hold_rollout(server="echo", holder="b", now=now + 4.9, lease_seconds=3)
    assert not registry.write_rollout(
        server="echo", holder="b", state="running", body="{b}", now=now, lease_seconds=3
    )
    assert registry.write_rollout(
        server="echo", holder="a", state="running", body="{a}", now=now + 2, lease_seconds=3
    )
    assert registry.hold_rollout(server="echo", holder="b", now=now + 5.1, lease_seconds=3)
    assert not registry.write_rollout(
        server="echo", holder="a", state="running", body="{a2}", now=now + 5.2, lease_seconds=3
    )
    [row] = registry.read_rollouts(max_rows=10, max_bytes=1000)
    assert (row.holder, row.body) == ("b", "{a}")
    assert registry.write_rollout(
        server="echo", holder="b", state="succeeded", body="{done}", now=now + 6, lease_seconds=3
    )
    # ended: nobody holds or writes it any more
    assert not registry.hold_rollout(server="echo", holder="b", now=now + 6, lease_seconds=3)
    assert not registry.write_rollout(
        server="echo", holder="b", state="running", body="{x}", now=now + 6, lease_seconds=3
    )


def test_reads_are_bounded_running_first(registry: Registry) -> None:
    now = time.time()
    for name in ("a", "b", "c"):
        registry.start_rollout(server=name, body="x" * 50, now=now)
    registry.end_rollout(server="a", state="stopped", body="{}", now=now)
    rows = registry.read_rollouts(max_rows=2, max_bytes=10)
    assert [(r.server, r.state, r.body, r.size) for r in rows] == [
        ("b", "running", None, 50),
        ("c", "running", None, 50),
    ]

"""The replica agent against every registry: lifecycle and leases."""

from __future__ import annotations

import time

from control_plane.agent import ReplicaAgent
from control_plane.registry import Registry
from tests.helpers import wait_until


def test_agent_lifecycle(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    agent = ReplicaAgent(
        registry=registry,
        server="echo",
        address="127.0.0.1:8081",
        region="us-west",
        lease_seconds=30,
    )
    replica_id = agent.register(ready=False)
    assert [r.state for r in registry.list_replicas()] == ["STARTING"]
    agent.ready()
    assert [r.state for r in registry.list_replicas()] == ["READY"]
    agent.drain()
    assert [r.state for r in registry.list_replicas()] == ["DRAINING"]
    agent.deregister()
    assert registry.list_replicas() == []
    assert replica_id.startswith("r-")


def test_the_heartbeat_keeps_a_short_lease_alive_and_its_end_lets_it_expire(
    registry: Registry,
) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    agent = ReplicaAgent(
        registry=registry,
        server="echo",
        address="127.0.0.1:8081",
        region="us-west",
        lease_seconds=1.5,
    )
    agent.register()
    first = registry.list_replicas()[0].lease_expires_at
    assert first is not None
    wait_until(
        lambda: (registry.list_replicas()[0].lease_expires_at or 0) > first,
        timeout=5,
        what="a renewal",
    )
    agent.stop_heartbeat()
    lease_end = registry.list_replicas()[0].lease_expires_at or 0
    assert registry.remove_expired(now=time.time()) == []
    assert registry.remove_expired(now=lease_end + 0.01) == [agent.replica_id]

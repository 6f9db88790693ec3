"""The replica agent against every registry: lifecycle and leases."""

from __future__ import annotations

import pytest

from control_plane.agent import ReplicaAgent
from control_plane.registry import Registry
from control_plane.registry.errors import ValidationError
from harness.waiting import wait_until


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

    def new_agent(port: int) -> ReplicaAgent:
        return ReplicaAgent(
            registry=registry,
            server="echo",
            address=f"127.0.0.1:{port}",
            region="us-west",
            lease_seconds=1.5,
        )

    def lease_of(replica_id: str | None) -> float:
        [replica] = [r for r in registry.list_replicas() if r.id == replica_id]
        assert replica.lease_expires_at is not None
        return replica.lease_expires_at

    agent = new_agent(8081)
    agent.register()
    first = lease_of(agent.replica_id)
    wait_until(lambda: lease_of(agent.replica_id) > first, timeout=5, what="a renewal")
    agent.stop_heartbeat()
    lease_end = lease_of(agent.replica_id)
    # A witness with the same lease renews every 0.5 s: once it has renewed twice, the stopped
    # heartbeat would have renewed at least once.
    witness = new_agent(8082)
    witness.register()
    try:
        renewals: set[float] = set()

        def renewed_twice() -> bool:
            renewals.add(lease_of(witness.replica_id))  # the first lease and two renewals
            return len(renewals) >= 3

        wait_until(renewed_twice, timeout=10, what="two renewals of the witness")
        assert lease_of(agent.replica_id) == lease_end, "renewed after stop_heartbeat()"
        # Judged at explicit times, not the wall clock: the lease holds to its end, then goes.
        assert registry.remove_expired(now=lease_end - 0.01) == []
        assert registry.remove_expired(now=lease_end + 0.01) == [agent.replica_id]
    finally:
        witness.deregister()


def test_the_agent_registers_its_revision(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    agent = ReplicaAgent(
        registry=registry,
        server="echo",
        address="127.0.0.1:8081",
        region="us-west",
        lease_seconds=30,
        revision="v2",
    )
    assert agent.revision == "v2"
    agent.register()
    try:
        [replica] = registry.list_replicas()
        assert (replica.id, replica.revision) == (agent.replica_id, "v2")
        agent.drain()
        assert [r.revision for r in registry.list_replicas()] == ["v2"]
    finally:
        agent.deregister()


@pytest.mark.parametrize("revision", ["latest", "V2", "v2\n", "a" * 64])
def test_the_agent_refuses_a_bad_revision_when_made(registry: Registry, revision: str) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    with pytest.raises(ValidationError) as refused:
        ReplicaAgent(
            registry=registry,
            server="echo",
            address="127.0.0.1:8081",
            region="us-west",
            revision=revision,
        )
    assert refused.value.field == "revision"
    assert registry.list_replicas() == []

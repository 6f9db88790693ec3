"""The replica agent: what a replica process uses to take part in routing.

    agent = ReplicaAgent(registry_url=url, server="echo", address="10.0.0.7:8080",
                         region="us-west", lease_seconds=10, revision="v2")
    agent.register(ready=False)   # STARTING: no traffic yet
    ...                           # warm up (load weights, fill caches)
    agent.ready()                 # READY: traffic
    agent.drain()                 # DRAINING: no new requests; open streams finish
    agent.deregister()            # gone (also stops the heartbeat)

``revision`` names the version of the server this replica runs (``[a-z0-9-]``, at most 63
characters, not ``latest``; "" for none, the default): a server's traffic split (``traffic:``
in its spec) sends requests by revision, and ``latest`` is the newest revision with a READY
replica. It is checked when the agent is made (``ValidationError`` naming ``revision``) and
written once, at ``register()``; a replica never changes revision (a new version registers new
replicas).

While registered, a daemon thread renews the lease every third of its length; if the process
dies, the lease runs out and the control plane removes the replica. Each call is one registry
transaction and raises ``RegistryError`` subclasses with one-line messages.
"""

from __future__ import annotations

import threading

from control_plane.registry import Registry, ReplicaState, open_registry, validate
from control_plane.registry.errors import RegistryError


class ReplicaAgent:
    def __init__(
        self,
        *,
        registry_url: str | None = None,
        registry: Registry | None = None,
        server: str,
        address: str,
        region: str,
        zone: str = "",
        weight: int = 100,
        lease_seconds: float = 10.0,
        revision: str = "",
    ) -> None:
        revision = validate.revision("revision", revision)
        if registry is None:
            if registry_url is None:
                raise ValueError("give registry_url or registry")
            registry = open_registry(registry_url)
        self.registry = registry
        self.server = server
        self.address = address
        self.region = region
        self.zone = zone
        self.weight = weight
        self.lease_seconds = lease_seconds
        self.revision = revision
        self.replica_id: str | None = None
        self.heartbeat_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, *, ready: bool = True) -> str:
        replica = self.registry.register_replica(
            server=self.server,
            address=self.address,
            region=self.region,
            zone=self.zone,
            weight=self.weight,
            state=ReplicaState.READY if ready else ReplicaState.STARTING,
            lease_seconds=self.lease_seconds,
            revision=self.revision,
        )
        self.replica_id = replica.id
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease-{replica.id}", daemon=True
        )
        self._thread.start()
        return replica.id

    def ready(self) -> None:
        self.registry.set_replica_state(self._id(), ReplicaState.READY)

    def drain(self) -> None:
        self.registry.set_replica_state(self._id(), ReplicaState.DRAINING)

    def deregister(self) -> None:
        replica_id = self._id()
        self.stop_heartbeat()
        self.registry.deregister_replica(replica_id)
        self.replica_id = None

    def stop_heartbeat(self) -> None:
        """Stop renewing (the lease then runs out unless deregistered first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _id(self) -> str:
        if self.replica_id is None:
            raise RegistryError("the agent has no registered replica")
        return self.replica_id

    def _heartbeat(self) -> None:
        interval = self.lease_seconds / 3
        while not self._stop.wait(interval):
            try:
                self.registry.renew_lease(self._id(), lease_seconds=self.lease_seconds)
            except RegistryError:
                # Transient registry trouble: try again next interval; a lease is 3 intervals.
                self.heartbeat_errors += 1

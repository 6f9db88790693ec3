"""The floor of the serving stack: a bare grpc.aio delta-ADS server pushing pre-encoded bytes.

The fan-out baseline the fleet benchmark measures routeplane against, in the same run and with
the same simulated fleet (``bench.fleet``), which runs in its own process. It serves the same
resources routeplane would (built once at start from the same registry by routeplane's own
pipeline) and does the least any xDS server must: read every request (parse it: ACKs included),
answer a subscription with the pre-encoded response of what was asked, and on a push write one
pre-encoded response, identical bytes for every stream, to every stream. No per-stream version
bookkeeping, no NACK handling, no admission control, no metrics, no logs.

A push is asked for by the unary ``/routeplane.bench.Floor/Push`` (request: a cluster name as
UTF-8): the floor adds one endpoint to that cluster's ClusterLoadAssignment, encodes it once and
wakes every stream. Run: ``python -m bench.floor --listen 127.0.0.1:PORT --registry sqlite://...``
(prints ``ready`` once it serves).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control_plane.app import GRPC_OPTIONS
from control_plane.pipeline import Pipeline
from control_plane.registry import open_registry
from control_plane.xds.nodes import to_node_group
from control_plane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Resource,
    delta_response,
    to_resource,
)

PUSH_METHOD = "/routeplane.bench.Floor/Push"
NO_CONTROL_PLANE = b""


def fleet_node() -> Any:
    """The node every simulated proxy of ``bench.fleet`` sends (one node group)."""
    return base_pb2.Node(id="sim", cluster="fleet", locality=base_pb2.Locality(region="us-west"))


class Floor:
    def __init__(self, resources: dict[str, dict[str, Resource]]) -> None:
        self.resources = resources
        self.generation = 0
        self.pushed = b""
        self._wakes: set[asyncio.Event] = set()
        self._nonces = 0

    def _response(self, type_url: str, names: list[str] | None) -> bytes:
        available = self.resources.get(type_url, {})
        chosen = (
            list(available.values())
            if names is None
            else [available[n] for n in names if n in available]
        )
        self._nonces += 1
        return delta_response(
            system_version_info="",
            resources=chosen,
            removed=[],
            type_url=type_url,
            nonce=str(self._nonces),
            control_plane=NO_CONTROL_PLANE,
        )

    async def stream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        wake = asyncio.Event()
        outbox: list[bytes] = []
        seen = self.generation

        async def read() -> None:
            try:
                async for request in requests:
                    type_url = request.type_url
                    if request.resource_names_subscribe:
                        names = list(request.resource_names_subscribe)
                        outbox.append(self._response(type_url, names))
                        wake.set()
                    elif not request.response_nonce and type_url in (CLUSTER, LISTENER):
                        outbox.append(self._response(type_url, None))
                        wake.set()
                    # else: an ACK, read and dropped
            finally:
                wake.set()

        self._wakes.add(wake)
        reader = asyncio.create_task(read())
        try:
            while True:
                await wake.wait()
                wake.clear()
                if reader.done():
                    break
                if self.generation != seen:
                    seen = self.generation
                    outbox.append(self.pushed)
                while outbox:
                    await context.write(outbox.pop(0))
        finally:
            self._wakes.discard(wake)
            reader.cancel()

    async def push(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = request.decode()
        current = self.resources[ENDPOINT][name]
        message = endpoint_pb2.ClusterLoadAssignment()
        message.CopyFrom(current.message)
        endpoints = message.endpoints[0] if message.endpoints else message.endpoints.add()
        added = endpoints.lb_endpoints.add()
        address = added.endpoint.address.socket_address
        address.address = "127.0.0.3"
        address.port_value = 30000 + self.generation % 30000
        resource = to_resource(ENDPOINT, name, message)
        self.resources[ENDPOINT][name] = resource
        self._nonces += 1
        self.pushed = delta_response(
            system_version_info="",
            resources=[resource],
            removed=[],
            type_url=ENDPOINT,
            nonce=f"push-{self._nonces}",
            control_plane=NO_CONTROL_PLANE,
        )
        self.generation += 1
        for wake in self._wakes:
            wake.set()
        return b""

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        ads = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.stream,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=None,
                )
            },
        )
        control = grpc.method_handlers_generic_handler(
            "routeplane.bench.Floor",
            {"Push": grpc.unary_unary_rpc_method_handler(self.push)},
        )
        return [ads, control]


def resources_of(registry_url: str) -> dict[str, dict[str, Resource]]:
    """What routeplane would serve the fleet's node group: its pipeline, run once."""
    registry = open_registry(registry_url)
    try:
        state = registry.read_state()
    finally:
        registry.close()
    group = to_node_group(fleet_node())
    snapshot = Pipeline().step(state, [group]).snapshots[group]
    return {
        type_url: dict(snapshot.of_type(type_url))
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    }


async def serve(listen: str, registry_url: str) -> None:
    floor = Floor(resources_of(registry_url))
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers(floor.handlers())
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--registry", required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.registry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CSDS for the whole group: a worker's own proxies (none for the supervisor) and every other
worker's, asked through the one client (``group/client.py``), merged by node id.

A worker's xDS port answers with it (handed to ``app.serve`` by ``group/worker.py``), as does
the supervisor's public admin address. A worker that does not answer fails the call UNAVAILABLE
naming it, rather than hiding its proxies; the merged answer keeps the call's scope and bounds.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.status.v3 import csds_pb2

from control_plane.group.client import Workers, WorkerUnavailable
from control_plane.xds.csds import Answer, Scope, status_response
from control_plane.xds.server import XdsServer


def merged(xds: XdsServer | None, others: Workers) -> Answer:
    """The CSDS answer of ``xds``'s proxies and ``others``'."""

    async def answer(
        request: Any, scope: Scope | None, context: grpc.aio.ServicerContext, /
    ) -> csds_pb2.ClientStatusResponse:
        response = (
            status_response(xds, request, scope)
            if xds is not None
            else csds_pb2.ClientStatusResponse()
        )
        if not others.addresses:
            return response
        try:
            theirs = await others.client_status(request, scope)
        except WorkerUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise  # abort raised
        configs = [*response.config, *theirs]
        if scope is not None:
            scope.check(len(configs), sum(config.ByteSize() for config in configs))
        configs.sort(key=lambda config: config.node.id)
        del response.config[:]
        response.config.extend(configs)
        return response

    return answer

"""The CLI's side of the admin API: one call, one-line errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc

from control_plane.admin.pb import admin_pb2, admin_pb2_grpc

DEFAULT_ADMIN = "127.0.0.1:18001"


class AdminError(Exception):
    pass


def call(admin: str, method: str, request: Any, *, timeout: float = 10.0) -> Any:
    """One admin call; the bearer token comes from ROUTEPLANE_ADMIN_TOKEN when set."""
    token = os.environ.get("ROUTEPLANE_ADMIN_TOKEN", "")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(admin) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise AdminError(
                    f"no control plane answering at {admin} (is `routeplane serve` running?)"
                ) from None
            raise AdminError(str(exc.details())) from None


def stream(admin: str, method: str, request: Any) -> Iterator[Any]:
    """A server-streaming admin call, until the server ends it or the caller stops."""
    token = os.environ.get("ROUTEPLANE_ADMIN_TOKEN", "")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(admin) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            yield from getattr(stub, method)(request, metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise AdminError(
                    f"no control plane answering at {admin} (is `routeplane serve` running?)"
                ) from None
            raise AdminError(str(exc.details())) from None


__all__ = ["DEFAULT_ADMIN", "AdminError", "admin_pb2", "call", "stream"]

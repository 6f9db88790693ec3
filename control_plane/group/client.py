"""One client to the workers of a group, by their admin addresses (loopback, behind the admin
token if one is set): their admin API (gRPC), their plain HTTP (``/readyz``, ``/metrics``) and
their CSDS, with one error, :class:`WorkerUnavailable`, for a worker that does not answer.

The supervisor asks every worker through it (``group/admin.py``, the group's CSDS); a worker asks
its siblings for their proxies when CSDS on the xDS port is called (``group/csds.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
from envoy.service.status.v3 import csds_pb2

from control_plane.admin.pb import admin_pb2_grpc
from control_plane.xds.csds import SCOPE_HEADER, SERVICE, AnswerTooLarge, Scope

CALL_TIMEOUT = 10.0  # seconds a worker gets to answer a gRPC call (admin API, CSDS)
HTTP_TIMEOUT = 5.0
MAX_HTTP_BYTES = 64 * 1024 * 1024
# A whole worker's answer can be large (CSDS with resource contents: every resource of every
# proxy); past this the call fails and the answer names the worker, rather than holding
# without bound.
MAX_ANSWER_BYTES = 256 << 20


class WorkerUnavailable(Exception):
    """A worker did not answer (its message names the worker)."""


class Workers:
    """The workers at ``addresses``. Create it inside the event loop; ``close()`` at the end.

    ``stubs[i]`` is worker i's admin API, called with ``**call`` (the token, ``timeout``, and
    ``wait_for_ready``: a worker that just started may not have been reachable when the channel
    first tried; its call waits, up to the timeout, instead of failing at once)."""

    def __init__(
        self, addresses: Sequence[str], *, token: str = "", timeout: float = CALL_TIMEOUT
    ) -> None:
        self.addresses = list(addresses)
        self.timeout = timeout
        self._token = token
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.call: dict[str, Any] = {
            "timeout": timeout,
            "metadata": self.metadata,
            "wait_for_ready": True,
        }
        options = [("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]
        self._channels = [grpc.aio.insecure_channel(a, options=options) for a in self.addresses]
        self.stubs = [admin_pb2_grpc.AdminStub(channel) for channel in self._channels]
        self._client_status = [
            channel.unary_unary(
                f"/{SERVICE}/FetchClientStatus",
                request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                response_deserializer=csds_pb2.ClientStatusResponse.FromString,
            )
            for channel in self._channels
        ]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def get(
        self,
        address: str,
        path: str,
        *,
        timeout: float = HTTP_TIMEOUT,  # noqa: ASYNC109 - the whole exchange's bound, applied here
    ) -> tuple[int, bytes]:
        """``GET path`` on a worker's admin address -> (status, body); status 0 if the answer
        is not HTTP."""
        return split_http(await http_get(address, path, token=self._token, timeout=timeout))

    async def client_status(
        self, request: Any, scope: Scope | None = None
    ) -> list[csds_pb2.ClientConfig]:
        """Every worker's proxies matching the CSDS ``request`` (and ``scope``, sent along in
        ``SCOPE_HEADER``); WorkerUnavailable naming the first that did not answer (a partial
        answer would silently hide proxies), AnswerTooLarge if one went past ``scope``'s
        bounds."""
        metadata = self.metadata
        if scope is not None:
            metadata = (*metadata, (SCOPE_HEADER, scope.header()))
        answers = await asyncio.gather(
            *(
                call(request, timeout=self.timeout, metadata=metadata, wait_for_ready=True)
                for call in self._client_status
            ),
            return_exceptions=True,
        )
        configs: list[csds_pb2.ClientConfig] = []
        for address, answer in zip(self.addresses, answers, strict=True):
            if (
                isinstance(answer, grpc.aio.AioRpcError)
                and scope is not None
                and answer.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            ):
                raise AnswerTooLarge(answer.details() or "")
            if isinstance(answer, grpc.aio.AioRpcError):
                raise WorkerUnavailable(
                    f"worker at {address} did not answer: {answer.code().name} {answer.details()}"
                )
            if isinstance(answer, BaseException):
                raise answer
            configs.extend(answer.config)
        return configs


async def http_get(
    address: str,
    path: str,
    *,
    token: str = "",
    timeout: float = HTTP_TIMEOUT,  # noqa: ASYNC109 - the whole exchange's bound, applied here
) -> bytes:
    """``GET path`` on a worker's admin address -> the raw HTTP answer (see ``split_http``)."""
    host, _, port = address.rpartition(":")
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    silent = f"worker at {address}: no answer to {path} within {timeout:g} s"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, int(port))
    except TimeoutError:
        raise WorkerUnavailable(silent) from None
    except OSError as exc:
        raise WorkerUnavailable(f"worker at {address}: {exc}") from None
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n".encode()
        )
        data = bytearray()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
                if len(data) > MAX_HTTP_BYTES:
                    raise WorkerUnavailable(f"worker at {address}: over {MAX_HTTP_BYTES} bytes")
    except TimeoutError:
        raise WorkerUnavailable(silent) from None
    except OSError as exc:
        raise WorkerUnavailable(f"worker at {address}: {exc}") from None
    finally:
        writer.close()
    return bytes(data)


def split_http(data: bytes) -> tuple[int, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body

"""The Envoy-free routing model that ``translate`` turns into resources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from control_plane.registry.spec import DEFAULT as DEFAULT_SPEC
from control_plane.registry.spec import ServerSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    replica_id: str
    host: str
    port: int
    region: str
    zone: str
    weight: int
    draining: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutedServer:
    name: str
    workspace: str
    hostnames: tuple[str, ...]
    protocol: str
    endpoints: tuple[Endpoint, ...]
    spec: ServerSpec = DEFAULT_SPEC


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """A registry row left out of routing (or partly), and why."""

    kind: str  # "server" or "replica"
    name: str
    field: str
    value: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}: {self.field} {self.value!r}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerEval:
    """One server judged on its own (validation, endpoints); reused while it is unchanged."""

    protocol: str | None  # None: the server is left out (see problems)
    hostnames: tuple[str, ...]
    spec: ServerSpec
    problems: tuple[Problem, ...]
    endpoints: tuple[Endpoint, ...]
    replica_problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingTable:
    servers: tuple[RoutedServer, ...]
    problems: tuple[Problem, ...]
    revision: int
    committed_at: float
    # Per-server evaluations, kept for the next incremental pass; not part of the table's value.
    evals: Mapping[str, ServerEval] = field(default_factory=dict, compare=False, repr=False)

"""The Envoy-free routing model that ``translate`` turns into resources."""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    revision: str = ""  # the replica's revision (issue 26): "" for none
    # When the replica was first registered (unix seconds, 0 unknown): a split's ``latest``
    # is the revision whose replicas appeared last.
    registered_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutedServer:
    name: str
    workspace: str
    hostnames: tuple[str, ...]
    protocol: str
    endpoints: tuple[Endpoint, ...]
    spec: ServerSpec = DEFAULT_SPEC
    # Cold start in hold mode only (see ``translate.routes``): ``held`` while the server has no
    # replica at all, so its route waits for a cluster Envoy does not have yet; ``cold_epoch``
    # names that cluster, new for every cold period (0: the server was never seen held).
    held: bool = False
    cold_epoch: int = 0
    # Traffic splits (issue 26; ``routing.split``). ``revisions``: the revision of each of the
    # server's clusters, sorted ("" names the plain ``<workspace>_<server>`` cluster); empty
    # for a server whose replicas carry no revision and whose spec has no traffic block: one
    # plain cluster, as before revisions. ``split``: (revision, weight) pairs, weights whole
    # and above 0, adding up to 100 (empty: all to the plain cluster). ``tags``: (tag,
    # revision) pairs, sorted by tag: addresses that bypass the split.
    revisions: tuple[str, ...] = ()
    split: tuple[tuple[str, int], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()


def same_except_endpoints(a: RoutedServer, b: RoutedServer) -> bool:
    """Whether two routed servers differ at most in their endpoints: what a Cluster and the
    RouteConfiguration depend on. Written once, over every field, so a new field cannot be
    left out of the comparison."""
    return replace(a, endpoints=()) == replace(b, endpoints=())


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """What one server asks for in the hostname space."""

    server: str
    hostnames: tuple[str, ...]
    path_prefix: str
    # Who claimed first wins: earlier ``since`` (the server's creation), then name order.
    since: float = 0.0


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
    # The resolved traffic split (see ``RoutedServer``) and its problems (a revision with no
    # READY replica, or none at all): reported after ``replica_problems``.
    revisions: tuple[str, ...] = ()
    split: tuple[tuple[str, int], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    traffic_problems: tuple[Problem, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingTable:
    servers: tuple[RoutedServer, ...]
    problems: tuple[Problem, ...]
    revision: int
    committed_at: float

"""Which node group an Envoy belongs to, read from its ``Node`` message when its stream starts.

The default key is the node's ``cluster``, ``locality.region`` and (when set) ``locality.zone``,
since endpoint priorities follow the proxy's region and zone; the listen address the
bootstrap declares (metadata ``routeplane.listen``) is part of the group too, since the listener
that LDS sends binds to it. Proxies of one fleet share all three, so groups stay few. The
address is parsed into host and port once, when the group is made: a stream whose node gives
no ``HOST:PORT`` is refused at its start (:func:`to_node_group` raises), and the pipeline takes
the parsed parts as they are.

gRPC's own xDS client (proxyless gRPC) is told apart by the node's ``user_agent_name`` ("gRPC
C-core ...", "gRPC Go", "gRPC Java": it starts with "grpc"; Envoy's is "envoy"). A standard gRPC
bootstrap carries a node id, cluster and locality and no routeplane metadata: its group is
``kind`` "grpc" with its cluster, region and zone and no listen address (gRPC listens on
nothing; it gets API listeners instead), keyed ``cluster/region[/zone]@grpc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

LISTEN_METADATA_KEY: Final = "routeplane.listen"
DEFAULT_LISTEN: Final = "127.0.0.1:10000"
DEFAULT_LISTEN_PORT: Final = 10000
DEFAULT_CLUSTER: Final = "default"
ENVOY: Final = "envoy"
GRPC: Final = "grpc"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeGroup:
    cluster: str
    region: str
    zone: str = ""
    listen: str = DEFAULT_LISTEN
    # "envoy" or "grpc" (gRPC's own xDS client; its ``listen`` is "").
    kind: str = ENVOY
    # ``listen`` parsed, once, when the group is made (functions of ``listen`` and ``kind``, so
    # left out of equality): the host and port its listener binds ("" and 0 for gRPC), or why
    # ``listen`` is no address. Only a group made in-process can have a problem: a stream's is
    # refused at its start (:func:`to_node_group`).
    listen_host: str = field(init=False, repr=False, compare=False)
    listen_port: int = field(init=False, repr=False, compare=False)
    listen_problem: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host, port, problem = "", 0, ""
        if self.kind != GRPC:
            try:
                host, port = parse_listen(self.listen)
            except ValueError as exc:
                problem = str(exc)
        object.__setattr__(self, "listen_host", host)
        object.__setattr__(self, "listen_port", port)
        object.__setattr__(self, "listen_problem", problem)

    @property
    def key(self) -> str:
        """``cluster/region[/zone]@listen`` (``@grpc`` for gRPC clients): the group's name in
        the cache, logs and the CLI."""
        zone = f"/{self.zone}" if self.zone else ""
        where = GRPC if self.kind == GRPC else self.listen
        return f"{self.cluster}/{self.region}{zone}@{where}"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``; a bare host listens on port 10000) as host and port;
    ValueError naming the metadata field and the value when it is no address."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = listen, str(DEFAULT_LISTEN_PORT)
    host = host.strip("[]")
    what = f"node metadata {LISTEN_METADATA_KEY} {listen!r}"
    if not host:
        raise ValueError(f"{what}: no host")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{what}: port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise ValueError(f"{what}: port {number} is out of range")
    return host, number


def client_kind(node: Any) -> str:
    """ "grpc" for gRPC's xDS client (by its user agent), else "envoy"."""
    return GRPC if str(node.user_agent_name).lower().startswith("grpc") else ENVOY


MAX_FIELD = 128


def to_node_group(node: Any) -> NodeGroup:
    """The group of an ``envoy.config.core.v3.Node``; missing fields fall back to defaults.

    Raises ValueError naming the field when one is longer than 128 characters, and naming the
    field and the value when ``routeplane.listen`` is no ``HOST:PORT``."""
    listen = DEFAULT_LISTEN
    kind = client_kind(node)
    fields = node.metadata.fields
    if kind == GRPC:
        listen = ""
    elif LISTEN_METADATA_KEY in fields:
        listen = fields[LISTEN_METADATA_KEY].string_value or DEFAULT_LISTEN
    cluster = node.cluster or DEFAULT_CLUSTER
    region, zone = node.locality.region, node.locality.zone
    for name, value in (
        ("node.cluster", cluster),
        ("node.locality.region", region),
        ("node.locality.zone", zone),
        (f"node.metadata {LISTEN_METADATA_KEY}", listen),
    ):
        if len(value) > MAX_FIELD:
            raise ValueError(f"{name} of {len(value)} characters; at most {MAX_FIELD}")
    group = NodeGroup(cluster=cluster, region=region, zone=zone, listen=listen, kind=kind)
    if group.listen_problem:
        raise ValueError(group.listen_problem)
    return group

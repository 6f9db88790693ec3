"""Which node group an Envoy belongs to, read from its ``Node`` message.

The default key is the node's ``cluster``, ``locality.region`` and (when set) ``locality.zone``,
since endpoint priorities follow the proxy's region and zone; the listen address the
bootstrap declares (metadata ``routeplane.listen``) is part of the group too, since the listener
that LDS sends binds to it. Proxies of one fleet share all three, so groups stay few.

gRPC's own xDS client (proxyless gRPC) is told apart by the node's ``user_agent_name`` ("gRPC
C-core ...", "gRPC Go", "gRPC Java": it starts with "grpc"; Envoy's is "envoy"). A standard gRPC
bootstrap carries a node id, cluster and locality and no routeplane metadata: its group is
``kind`` "grpc" with its cluster, region and zone and no listen address (gRPC listens on
nothing; it gets API listeners instead), keyed ``cluster/region[/zone]@grpc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

LISTEN_METADATA_KEY: Final = "routeplane.listen"
DEFAULT_LISTEN: Final = "127.0.0.1:10000"
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

    @property
    def key(self) -> str:
        """``cluster/region[/zone]@listen`` (``@grpc`` for gRPC clients): the group's name in
        the cache, logs and the CLI."""
        zone = f"/{self.zone}" if self.zone else ""
        where = GRPC if self.kind == GRPC else self.listen
        return f"{self.cluster}/{self.region}{zone}@{where}"


def client_kind(node: Any) -> str:
    """ "grpc" for gRPC's xDS client (by its user agent), else "envoy"."""
    return GRPC if str(node.user_agent_name).lower().startswith("grpc") else ENVOY


MAX_FIELD = 128


def to_node_group(node: Any) -> NodeGroup:
    """The group of an ``envoy.config.core.v3.Node``; missing fields fall back to defaults.

    Raises ValueError naming the field when one is longer than 128 characters."""
    listen = DEFAULT_LISTEN
    kind = client_kind(node)
    fields = node.metadata.fields
    if kind == GRPC:
        listen = ""
    elif LISTEN_METADATA_KEY in fields:
        listen = fields[LISTEN_METADATA_KEY].string_value or DEFAULT_LISTEN
    group = NodeGroup(
        cluster=node.cluster or DEFAULT_CLUSTER,
        region=node.locality.region,
        zone=node.locality.zone,
        listen=listen,
        kind=kind,
    )
    for name, value in (
        ("node.cluster", group.cluster),
        ("node.locality.region", group.region),
        ("node.locality.zone", group.zone),
        (f"node.metadata {LISTEN_METADATA_KEY}", group.listen),
    ):
        if len(value) > MAX_FIELD:
            raise ValueError(f"{name} of {len(value)} characters; at most {MAX_FIELD}")
    return group

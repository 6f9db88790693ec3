"""Which node group an Envoy belongs to, read from its ``Node`` message.

The default key is the node's ``cluster``, ``locality.region`` and (when set) ``locality.zone``,
since endpoint priorities follow the proxy's region and zone; the listen address the
bootstrap declares (metadata ``routeplane.listen``) is part of the group too, since the listener
that LDS sends binds to it. Proxies of one fleet share all three, so groups stay few.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

LISTEN_METADATA_KEY: Final = "routeplane.listen"
DEFAULT_LISTEN: Final = "127.0.0.1:10000"
DEFAULT_CLUSTER: Final = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeGroup:
    cluster: str
    region: str
    zone: str = ""
    listen: str = DEFAULT_LISTEN

    @property
    def key(self) -> str:
        """``cluster/region[/zone]@listen``: the group's name in the cache, logs and the CLI."""
        zone = f"/{self.zone}" if self.zone else ""
        return f"{self.cluster}/{self.region}{zone}@{self.listen}"


MAX_FIELD = 128


def to_node_group(node: Any) -> NodeGroup:
    """The group of an ``envoy.config.core.v3.Node``; missing fields fall back to defaults.

    Raises ValueError naming the field when one is longer than 128 characters."""
    listen = DEFAULT_LISTEN
    fields = node.metadata.fields
    if LISTEN_METADATA_KEY in fields:
        listen = fields[LISTEN_METADATA_KEY].string_value or DEFAULT_LISTEN
    group = NodeGroup(
        cluster=node.cluster or DEFAULT_CLUSTER,
        region=node.locality.region,
        zone=node.locality.zone,
        listen=listen,
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

"""The replica registry: schema, reads, writes and the watch.

``open_registry(url)`` returns the implementation for a URL (``sqlite:///path`` or
``spanner://projects/P/instances/I/databases/D``); only ``open`` imports a store (an
import-linter contract). Only the ``registry/spanner`` package imports ``google.cloud.spanner``.
Never imports ``routing``, ``translate``, ``xds``, the CLI or the dev tooling.
"""

from control_plane.registry.errors import (
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    ValidationError,
)
from control_plane.registry.model import (
    Registry,
    RegistryState,
    Replica,
    ReplicaState,
    Server,
    ServerProtocol,
)
from control_plane.registry.open import open_registry

__all__ = [
    "NotFoundError",
    "Registry",
    "RegistryError",
    "RegistryState",
    "RegistryUnavailableError",
    "Replica",
    "ReplicaState",
    "Server",
    "ServerProtocol",
    "ValidationError",
    "open_registry",
]

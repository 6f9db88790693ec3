"""The replica registry: schema, reads, writes and the watch.

``open_registry(url)`` returns the implementation for a URL (``sqlite:///path``; ``spanner://``
later). Only the ``registry/spanner`` package may import ``google.cloud.spanner``. Never imports
``routing``, ``translate`` or ``xds``.
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

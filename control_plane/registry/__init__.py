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
    Protocol,
    Registry,
    RegistryState,
    Replica,
    ReplicaState,
    Server,
)
from control_plane.registry.open import open_registry

__all__ = [
    "NotFoundError",
    "Protocol",
    "Registry",
    "RegistryError",
    "RegistryState",
    "RegistryUnavailableError",
    "Replica",
    "ReplicaState",
    "Server",
    "ValidationError",
    "open_registry",
]

"""The Cloud Spanner registry: the production store. Only the modules of this package import
``google.cloud.spanner`` or ``google.api_core``; nothing here imports ``routing``, ``translate``
or ``xds``. Importing it has no side effects (the one process-wide setting the client needs is
made when a ``SpannerRegistry`` creates its client; see ``connection.new_client``).

- ``store``: ``SpannerRegistry`` (writes, lists, state reads, the watch loop);
- ``connection``: URL, client creation, reconnecting, client errors -> ``RegistryError``;
- ``schema``: ``init`` and the migrations;
- ``reads``: raw strong reads with deadlines, row decoding, timestamps;
- ``follow``: the watch's incremental follower (its design is in that module's docstring).

Imports point one way: ``store`` uses ``connection``, ``schema`` and ``follow``; ``connection``
and ``follow`` use ``reads``; ``schema`` and ``reads`` use none of the others.
"""

from control_plane.registry.spanner.connection import (
    TRANSACTION_TIMEOUT,
    URL_RE,
    parse_url,
)
from control_plane.registry.spanner.follow import FULL_RECONCILE_EVERY, TOMBSTONE_RETENTION
from control_plane.registry.spanner.reads import READ_TIMEOUT, TableRead
from control_plane.registry.spanner.schema import RPC_TIMEOUT
from control_plane.registry.spanner.store import SpannerRegistry

__all__ = [
    "FULL_RECONCILE_EVERY",
    "READ_TIMEOUT",
    "RPC_TIMEOUT",
    "TOMBSTONE_RETENTION",
    "TRANSACTION_TIMEOUT",
    "URL_RE",
    "SpannerRegistry",
    "TableRead",
    "parse_url",
]

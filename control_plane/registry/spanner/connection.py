"""The connection to one Spanner database: URL parsing, client creation, reconnecting, and the
mapping of client errors to ``RegistryError``s (the "run `routeplane registry init`" hint only
when the instance, database or a table, column or index really is missing).

Owns ``parse_url``, ``new_client`` (the one place a ``spanner.Client`` is created, and the one
place the process-wide multiplexed-sessions switch is set), and ``Connection``: the client,
instance and database handles, the ``reads.Reader``s bound to them (one for the watch and
the other reads, one for the lease sweep), ``call`` (retry once after reconnecting, then
classify) and ``transact`` (one read-write transaction with a deadline, aborts retried promptly
on the emulator).

May import ``google.cloud.spanner`` and ``google.api_core`` (only modules inside
``registry/spanner`` may). From this package it imports only ``reads``; never ``store``,
``routing``, ``translate`` or ``xds``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import spanner

from control_plane.registry.errors import RegistryError, RegistryUnavailableError
from control_plane.registry.spanner.reads import Reader

# The emulator runs one read-write transaction at a time and aborts any other at once, without
# the retry delay Spanner sends with an abort; the client then sleeps 2^n + rand seconds (2, 4,
# 8...). Replicas renewing leases and deregistering at once then wait long enough for a 5 s lease
# to run out. On the emulator an aborted transaction is retried after a few tens of ms instead;
# Spanner's own delay (RetryInfo) always takes precedence over this default.
EMULATOR_RETRY_DELAY = (0.01, 0.05)
URL_RE = re.compile(r"^spanner://projects/([^/]+)/instances/([^/]+)/databases/([^/]+)$")
TRANSACTION_TIMEOUT = 15.0
MULTIPLEXED_SESSIONS_FOR_RW = "GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS_FOR_RW"
T = TypeVar("T")


def parse_url(url: str) -> tuple[str, str, str]:
    match = URL_RE.match(url)
    if not match:
        raise RegistryError(
            f"registry {url!r}: expected spanner://projects/P/instances/I/databases/D"
        )
    project, instance, database = match.groups()
    return project, instance, database


def new_client(project: str) -> Any:
    """A ``spanner.Client`` whose read-write transactions use regular (pooled) sessions.

    The emulator allows one read-write transaction at a time; with multiplexed sessions,
    concurrent read-write transactions in one process fail with "Invalid transaction ID".
    google-cloud-spanner 3.71 offers no client, instance or database option for this: its
    ``DatabaseSessionsManager._use_multiplexed`` reads this environment variable (default
    "true") each time it hands out a session for a read-write transaction. So it is set here,
    right before the client is created (never at import); ``setdefault`` leaves an operator's
    explicit value alone. Like the library's switch, it is process-wide.
    """
    os.environ.setdefault(MULTIPLEXED_SESSIONS_FOR_RW, "false")
    return spanner.Client(project=project)


# What `routeplane registry init` creates: an instance (on the emulator), the database, its
# tables, columns and indexes. A transaction or session that is not found is none of these.
_SCHEMA_MISSING = re.compile(
    r"^(Instance|Database|Table|Column) not found\b|^No index '", re.IGNORECASE
)


def schema_missing(exc: gexc.GoogleAPICallError) -> bool:
    """Does ``exc`` say that something `registry init` creates is missing?"""
    return bool(_SCHEMA_MISSING.match(str(exc.message)))


class Connection:
    """The handles for the database at ``url``, replaced when its sessions are gone."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.project, self.instance_id, self.database_id = parse_url(url)
        self.emulator = bool(os.environ.get("SPANNER_EMULATOR_HOST"))
        try:
            self.client: Any = new_client(self.project)
        except Exception as exc:
            raise RegistryUnavailableError(f"registry {url!r}: {exc}") from exc
        self.reader = Reader(lambda: self.database)
        # The lease sweep reads on a session of its own, so it never waits for the watch's
        # reads (nor they for it): one session runs one transaction at a time.
        self.sweep_reader = Reader(lambda: self.database)
        # The published load (control_plane/fleet/) is read on a third, for the same reason.
        self.load_reader = Reader(lambda: self.database)
        self.instance: Any = None
        self.database: Any = None
        self.connect()

    def connect(self) -> None:
        """Fresh instance and database handles (and so fresh sessions)."""
        self.instance = self.client.instance(self.instance_id)
        self.database = self.instance.database(self.database_id)
        self.reader.reset_session()
        self.sweep_reader.reset_session()
        self.load_reader.reset_session()

    def call(self, what: str, func: Callable[[], T]) -> T:
        """``func()``; after a client error, reconnect and try once more, then raise a
        ``RegistryUnavailableError`` saying ``what`` failed. ``RegistryError``s pass through."""
        try:
            return func()
        except RegistryError:
            raise
        except (gexc.GoogleAPICallError, gexc.RetryError):
            # Sessions may be gone with the server (an emulator restart): start afresh.
            self.connect()
            return self._classify(what, func)

    def _classify(self, what: str, func: Callable[[], T]) -> T:
        try:
            return func()
        except RegistryError:
            raise
        except (gexc.NotFound, gexc.InvalidArgument) as exc:
            if not schema_missing(exc):
                raise RegistryUnavailableError(f"registry {self.url!r}: {what}: {exc}") from exc
            raise RegistryUnavailableError(
                f"registry {self.url!r}: {what}: not found ({exc.message}); "
                "run `routeplane registry init`"
            ) from exc
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise RegistryUnavailableError(f"registry {self.url!r}: {what}: {exc}") from exc

    def transact(self, what: str, write: Callable[[Any], T]) -> T:
        """``write(tx)`` in one read-write transaction (the client retries aborts), by ``call``."""
        options: dict[str, float] = {"timeout_secs": TRANSACTION_TIMEOUT}
        if self.emulator:
            options["default_retry_delay"] = random.uniform(*EMULATOR_RETRY_DELAY)
        result: T = self.call(what, lambda: self.database.run_in_transaction(write, **options))
        return result

    def close(self) -> None:
        self.client.close() if hasattr(self.client, "close") else None

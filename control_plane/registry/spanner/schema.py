"""Spanner schema: ``routeplane registry init`` and the versioned migrations.

Owns creating the instance and database (on the emulator only), the ``SchemaMigrations`` table,
and applying the migrations in ``registry/migrations/spanner/`` in version order, recording each
applied one in that table.

May import ``google.cloud.spanner`` and ``google.api_core`` (only modules inside
``registry/spanner`` may). Imports nothing else from this package and never imports
``routing``, ``translate`` or ``xds``. Errors propagate as the client raises them; the caller
(``SpannerRegistry.init``) classifies them.
"""

from __future__ import annotations

import random
import time
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import spanner
from google.longrunning import operations_pb2

from control_plane.registry import migrations
from control_plane.registry.errors import RegistryUnavailableError

if not hasattr(operations_pb2, "OperationsStub"):  # pragma: no cover - an install problem
    raise ImportError(
        "google/longrunning/operations_pb2.py was overwritten (by xds-protos); run "
        "`pip install --force-reinstall --no-deps googleapis-common-protos==1.76.0` "
        "(make install does this)"
    )

RPC_TIMEOUT = 10.0
# How long ``init`` keeps sending a migration that Spanner refuses for a concurrent change.
CONCURRENT_CHANGE_PATIENCE = 60.0


def init(
    *,
    client: Any,
    instance: Any,
    database: Any,
    url: str,
    project: str,
    instance_id: str,
    database_id: str,
    emulator: bool,
) -> list[str]:
    """Create what is missing and apply pending migrations; returns what changed.

    ``client``, ``instance`` and ``database`` are the ``google.cloud.spanner`` handles for the
    registry at ``url`` (``projects/{project}/instances/{instance_id}/databases/{database_id}``).
    """
    changed: list[str] = []
    # ``Instance.exists`` and ``Database.exists`` take no deadline and retry UNAVAILABLE for
    # minutes: one bounded call first, so an unreachable Spanner fails in seconds.
    try:
        client.instance_admin_api.get_instance(name=instance.name, timeout=RPC_TIMEOUT, retry=None)
    except gexc.NotFound:
        pass
    except (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError) as exc:
        raise RegistryUnavailableError(
            f"registry {url!r}: Spanner is not reachable: {str(exc).splitlines()[0][:200]}"
        ) from exc
    if emulator and not instance.exists():
        config = f"projects/{project}/instanceConfigs/emulator-config"
        created = client.instance(
            instance_id,
            configuration_name=config,
            display_name=instance_id,
            node_count=1,
        )
        try:
            created.create().result(RPC_TIMEOUT * 3)
            changed.append(f"created instance {instance_id} (emulator)")
        except gexc.AlreadyExists:
            pass
    if not database.exists():
        if not emulator:
            raise RegistryUnavailableError(
                f"registry {url!r}: database does not exist; create it first "
                "(init only creates instances and databases on the emulator)"
            )
        try:
            database.create().result(RPC_TIMEOUT * 3)
            changed.append(f"created database {database_id}")
        except gexc.AlreadyExists:
            pass
    applied = applied_migrations(database)
    for migration in migrations.load("spanner"):
        if migration.version in applied:
            continue
        _update_ddl(database, migration.statements)

        def record(
            tx: Any, version: int = migration.version, description: str = migration.description
        ) -> None:
            tx.insert(
                "SchemaMigrations",
                columns=("Version", "Description", "AppliedAt"),
                values=[(version, description, spanner.COMMIT_TIMESTAMP)],
            )

        database.run_in_transaction(record)
        changed.append(f"applied migration {migration.version}: {migration.description}")
    return changed


def _update_ddl(database: Any, statements: tuple[str, ...]) -> None:
    """Apply one migration's statements, again while Spanner refuses them for a concurrent
    change: the emulator refuses any schema change while a read-write transaction runs, so a
    registry in use (heartbeats, writers) refuses most attempts. Every migration's statements
    are idempotent from migration 6 on, so a batch refused halfway is simply sent again."""
    deadline = time.monotonic() + CONCURRENT_CHANGE_PATIENCE
    while True:
        try:
            database.update_ddl(list(statements)).result(RPC_TIMEOUT * 12)
            return
        except (gexc.FailedPrecondition, gexc.InvalidArgument, gexc.Aborted) as exc:
            if "concurrent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))


def applied_migrations(database: Any) -> set[int]:
    """The versions recorded in ``SchemaMigrations`` (created, empty, when missing)."""
    tables = {t.table_id for t in database.list_tables()}
    if "SchemaMigrations" not in tables:
        database.update_ddl(
            [
                "CREATE TABLE SchemaMigrations (Version INT64 NOT NULL, "
                "Description STRING(MAX) NOT NULL, "
                "AppliedAt TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true)) "
                "PRIMARY KEY (Version)"
            ]
        ).result(RPC_TIMEOUT * 6)
        return set()
    with database.snapshot() as snap:
        return {int(row[0]) for row in snap.execute_sql("SELECT Version FROM SchemaMigrations")}

"""Rows written straight into the SQLite registry by another writer, of any type or shape:
reads never raise, each bad row becomes a problem naming the row, field and value, and the
good rows still route (issue 12, finding 1, 2 and 5)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.pipeline import Pipeline
from control_plane.registry import open_registry
from control_plane.registry.errors import ValidationError
from control_plane.registry.sqlite import SqliteRegistry
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import ENDPOINT, ROUTE

GROUP = NodeGroup(cluster="edge", region="us-west")


def foreign_write(path: Path, sql: str, params: tuple[object, ...], server: str) -> None:
    """Write as another writer of the registry would: the row, the revision and the change."""
    with sqlite3.connect(path) as db:
        db.execute(sql, params)
        revision = int(db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]) + 1
        db.execute("UPDATE meta SET value=? WHERE key='revision'", (revision,))
        db.execute("UPDATE meta SET value=? WHERE key='committed_at'", (time.time(),))
        db.execute("INSERT INTO changes VALUES (?, ?)", (revision, server))


def replica_row(
    path: Path,
    rid: str,
    *,
    host: object = "127.0.0.1",
    port: object = 8181,
    revision: object = None,
    registered_at: object = None,
) -> None:
    foreign_write(
        path,
        "INSERT INTO replicas VALUES (?, 'echo', ?, ?, 'us-west', '', 100, 'READY', NULL, ?, ?, ?)",
        (rid, host, port, time.time(), revision, registered_at),
        "echo",
    )


@pytest.fixture
def registry(tmp_path: Path) -> SqliteRegistry:
    registry = open_registry(f"sqlite://{tmp_path / 'r.db'}")
    registry.init()
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    assert isinstance(registry, SqliteRegistry)
    return registry


@pytest.mark.parametrize(
    ("columns", "field", "value"),
    [
        pytest.param({"port": "abc"}, "port", "abc", id="port-text"),
        pytest.param({"port": 8181.5}, "port", "8181.5", id="port-fraction"),
        pytest.param({"port": b"\x00"}, "port", "b'\\x00'", id="port-blob"),
        pytest.param({"port": 70000}, "port", "70000", id="port-out-of-range"),
        pytest.param({"host": "localhost"}, "address", "localhost", id="host-name"),
        pytest.param({"host": "example.com"}, "address", "example.com", id="host-dns"),
        pytest.param({"host": 42}, "address", "42", id="host-int"),
    ],
)
def test_a_malformed_replica_row_is_a_problem_and_never_stops_a_read(
    registry: SqliteRegistry,
    tmp_path: Path,
    columns: dict[str, object],
    field: str,
    value: str,
) -> None:
    sql_columns = {"host": "127.0.0.1", "port": 8181, **columns}
    replica_row(tmp_path / "r.db", "r-bad", **sql_columns)
    for state in (registry.read_state(), SqliteRegistry(registry.url).read_state()):
        step = Pipeline().step(state, [GROUP])
        [problem] = [p for p in step.table.problems if p.name == "r-bad"]
        assert (problem.field, problem.value) == (field, value)
        [good] = step.table.servers
        assert [e.replica_id for e in good.endpoints] != []
        assert "r-bad" not in {e.replica_id for e in good.endpoints}
        assert "default_echo" in step.snapshots[GROUP].of_type(ENDPOINT)


@pytest.mark.parametrize(
    ("revision", "value"),
    [
        pytest.param(-5, "-5", id="int"),
        pytest.param(b"\x00v2", "b'\\x00v2'", id="blob"),
        pytest.param("x" * 10_000, "x" * 80 + "... (10,000 characters)", id="10kb-text"),
        pytest.param("latest", "latest", id="latest"),
        pytest.param("V2", "V2", id="upper-case"),
        pytest.param("v2\n", "v2\n", id="trailing-newline"),
    ],
)
def test_a_hostile_revision_is_a_problem_and_never_stops_a_read(
    registry: SqliteRegistry, tmp_path: Path, revision: object, value: str
) -> None:
    """Issue 26: a revision column of any type or shape, with a registration time of any type."""
    replica_row(tmp_path / "r.db", "r-bad", revision=revision, registered_at=b"\xff")
    replica_row(tmp_path / "r.db", "r-v2", port=8182, revision="v2", registered_at="soon")
    for state in (registry.read_state(), SqliteRegistry(registry.url).read_state()):
        step = Pipeline().step(state, [GROUP])
        [problem] = step.table.problems
        assert (problem.name, problem.field, problem.value) == ("r-bad", "revision", value)
        [good] = step.table.servers
        assert "r-bad" not in {e.replica_id for e in good.endpoints}
        assert "r-v2" in {e.replica_id for e in good.endpoints}
        assert "default_echo" in step.snapshots[GROUP].of_type(ENDPOINT)
    by_id = {r.id: r for r in registry.list_replicas()}
    assert (by_id["r-v2"].revision, by_id["r-v2"].registered_at) == ("v2", 0.0)
    assert by_id["r-bad"].registered_at == 0.0


async def test_the_watch_goes_on_past_a_bad_row(registry: SqliteRegistry, tmp_path: Path) -> None:
    states = registry.watch(poll_interval=0.002)
    first = await anext(states)
    replica_row(tmp_path / "r.db", "r-bad", port="abc")
    second = await anext(states)
    assert second.revision > first.revision
    replica_row(tmp_path / "r.db", "r-good", port=8182)
    third = await anext(states)
    ids = {r.id for r in third.replicas_by_server["echo"]}
    assert {"r-bad", "r-good"} <= ids
    await states.aclose()


@pytest.mark.parametrize(
    ("hostnames", "field", "value"),
    [
        pytest.param("echo2.local", "hostnames", "echo2.local", id="not-json"),
        pytest.param(json.dumps("echo2.local"), "hostnames", '"echo2.local"', id="json-string"),
        pytest.param(json.dumps([1, None, "ok2.local"]), "hostname", "1", id="not-strings"),
    ],
)
def test_a_malformed_hostnames_column_is_reported_not_routed(
    registry: SqliteRegistry, tmp_path: Path, hostnames: str, field: str, value: str
) -> None:
    foreign_write(
        tmp_path / "r.db",
        "INSERT INTO servers (name, workspace, hostnames, protocol, spec, updated_at)"
        " VALUES ('other', 'default', ?, 'http', '{}', ?)",
        (hostnames, time.time()),
        "other",
    )
    step = Pipeline().step(registry.read_state(), [GROUP])
    [problem] = [p for p in step.table.problems if p.name == "other"]
    assert (problem.field, problem.value) == (field, value)
    assert [s.name for s in step.table.servers] == ["echo"]
    route = step.snapshots[GROUP].of_type(ROUTE)["ingress_http"].message
    assert [v.name for v in route.virtual_hosts] == ["echo.local"]


@pytest.mark.parametrize("address", ["localhost:8181", "example.com:80", "[fe80::1%eth0]:80"])
def test_registering_a_name_instead_of_an_ip_is_refused(
    registry: SqliteRegistry, address: str
) -> None:
    with pytest.raises(ValidationError, match="expected an IP address"):
        registry.register_replica(server="echo", address=address, region="us-west")


def test_replicas_list_prints_a_bad_row_instead_of_a_traceback(
    registry: SqliteRegistry, tmp_path: Path
) -> None:
    replica_row(tmp_path / "r.db", "r-bad", port="abc")
    done = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "replicas", "list", "--registry", registry.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "r-bad" in done.stdout


def test_a_newer_server_claiming_a_hostname_does_not_take_it(
    registry: SqliteRegistry, tmp_path: Path
) -> None:
    # Another writer adds a server whose name sorts first, claiming echo's hostname.
    foreign_write(
        tmp_path / "r.db",
        "INSERT INTO servers (name, workspace, hostnames, protocol, spec, updated_at, created_at)"
        " VALUES ('aaathief', 'default', ?, 'http', '{}', ?, ?)",
        (json.dumps(["echo.local"]), time.time(), time.time()),
        "aaathief",
    )
    step = Pipeline().step(registry.read_state(), [GROUP])
    [problem] = [p for p in step.table.problems if p.name == "aaathief"]
    assert (problem.field, problem.value) == ("hostname", "echo.local")
    assert "already claimed by server 'echo'" in problem.message
    assert [(s.name, s.hostnames) for s in step.table.servers] == [("echo", ("echo.local",))]


def test_updating_a_server_keeps_its_claim_and_its_replicas(registry: SqliteRegistry) -> None:
    [before] = registry.list_servers()
    registry.put_server(name="echo", hostnames=["echo.local"], protocol="http", spec={"retries": 1})
    [after] = registry.list_servers()
    assert after.created_at == before.created_at > 0
    assert after.updated_at >= before.updated_at
    assert len(registry.list_replicas("echo")) == 1


# Any value SQLite can hold, in any column: the shapes another writer could leave behind.
any_value = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.sampled_from(["127.0.0.1", "::1", "READY", "DRAINING", "us-west", "[1, null]", "{}"]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    replica_rows=st.lists(st.tuples(*(any_value for _ in range(11))), max_size=4),
    server_rows=st.lists(st.tuples(*(any_value for _ in range(5))), max_size=3),
)
def test_rows_of_any_type_never_stop_a_read_and_the_good_server_still_routes(
    tmp_path_factory: pytest.TempPathFactory,
    replica_rows: list[tuple[object, ...]],
    server_rows: list[tuple[object, ...]],
) -> None:
    path = tmp_path_factory.mktemp("rows") / "r.db"
    registry = open_registry(f"sqlite://{path}")
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")

    def nn(value: object) -> object:
        # A NOT NULL column: the store itself refuses a null (and SQLite stores NaN as null).
        return "" if value is None or (isinstance(value, float) and value != value) else value

    with sqlite3.connect(path) as db:
        for i, (name, workspace, hostnames, protocol, spec) in enumerate(server_rows):
            db.execute(
                "INSERT INTO servers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (f"x{i}-{name!s}"[:40], nn(workspace), nn(hostnames), nn(protocol), spec, i, None),
            )
        for i, (
            server,
            host,
            port,
            region,
            zone,
            weight,
            state,
            lease,
            updated,
            *more,
        ) in enumerate(replica_rows):
            revision, registered_at = more  # nullable columns (issue 26)
            db.execute(
                "INSERT INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    f"bad{i}",
                    *map(nn, (server, host, port, region, zone, weight, state)),
                    lease,
                    nn(updated),
                    revision,
                    registered_at,
                ),
            )
    try:
        for state in (registry.read_state(), SqliteRegistry(registry.url).read_state()):
            step = Pipeline().step(state, [GROUP])
            echo = [s for s in step.table.servers if s.name == "echo"]
            assert [e.replica_id for e in echo[0].endpoints][:1] != []
            assert "default_echo" in step.snapshots[GROUP].of_type(ENDPOINT)
            for problem in step.table.problems:
                assert problem.field
                assert problem.message
        registry.list_replicas()
        registry.list_servers()
    finally:
        registry.close()

"""Spanner specifics that need no emulator: URL parsing, the multiplexed-sessions switch being
set when a client is created, never by importing the package, and which errors are worth the
"run `routeplane registry init`" hint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from google.api_core import exceptions as gexc

from control_plane.registry import RegistryError
from control_plane.registry.spanner import SpannerRegistry, parse_url
from control_plane.registry.spanner.connection import schema_missing

SWITCH = "GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS_FOR_RW"
URL = "spanner://projects/p/instances/rp/databases/db"


def test_url_parts() -> None:
    assert parse_url(URL) == ("p", "rp", "db")


def test_a_malformed_url_is_refused() -> None:
    with pytest.raises(RegistryError, match="expected spanner://projects/P/instances/I"):
        parse_url("spanner://projects/p/databases/db")


def test_importing_the_package_changes_no_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k != SWITCH}
    code = (
        "import os; before = dict(os.environ); import control_plane.registry.spanner; "
        "print(dict(os.environ) == before)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


@pytest.fixture
def no_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SWITCH, "")  # recorded, so the teardown restores the caller's value
    monkeypatch.delenv(SWITCH)
    # The client dials nothing until the first call.
    monkeypatch.setenv("SPANNER_EMULATOR_HOST", "127.0.0.1:1")


@pytest.mark.usefixtures("no_switch")
def test_creating_a_registry_turns_off_multiplexed_read_write_sessions() -> None:
    SpannerRegistry(URL).close()
    assert os.environ[SWITCH] == "false"


@pytest.mark.usefixtures("no_switch")
def test_an_explicit_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SWITCH, "true")
    SpannerRegistry(URL).close()
    assert os.environ[SWITCH] == "true"


@pytest.mark.parametrize(
    ("message", "missing"),
    [
        pytest.param("Database not found: projects/p/instances/i/databases/d", True, id="database"),
        pytest.param("Instance not found: projects/p/instances/i", True, id="instance"),
        pytest.param("Table not found: Replicas", True, id="table"),
        pytest.param("Table not found: Nope [at 1:15]", True, id="table-in-sql"),
        pytest.param("Column not found in table Replicas: Zone", True, id="column"),
        pytest.param(
            "No index 'ReplicasByLease' was found for table 'Replicas'.", True, id="index"
        ),
        pytest.param("Transaction not found: 51", False, id="transaction"),
        pytest.param(
            "Session not found: projects/p/instances/i/databases/d/sessions/s", False, id="session"
        ),
    ],
)
def test_registry_init_is_suggested_only_when_the_schema_is_missing(
    message: str, missing: bool
) -> None:
    assert schema_missing(gexc.NotFound(message)) is missing

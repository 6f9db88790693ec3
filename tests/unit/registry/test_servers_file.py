"""Servers files: one loader and one apply function, used by `servers apply` and the dev mesh."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.registry import Registry, open_registry
from control_plane.registry.errors import ServersFileError
from control_plane.registry.servers import apply_servers, load_servers_file

MESH_SERVERS = Path(__file__).resolve().parents[3] / "control_plane" / "dev" / "servers.yaml"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = open_registry(f"sqlite://{tmp_path / 'rp.db'}")
    yield reg
    reg.close()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "servers.yaml"
    path.write_text(text)
    return path


def test_apply_reports_each_outcome_and_is_idempotent(registry: Registry, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "servers:\n  - name: api\n    hostnames: api.local\n    workspace: team\n"
        "    path_prefix: /v1\n  - name: tok\n    hostnames: [tok.local]\n    protocol: grpc\n",
    )
    seen: list[tuple[str, str]] = []
    applied = apply_servers(registry, load_servers_file(path), on_applied=lambda *p: seen.append(p))
    assert applied == seen == [("api", "created"), ("tok", "created")]
    assert apply_servers(registry, load_servers_file(path)) == [
        ("api", "unchanged"),
        ("tok", "unchanged"),
    ]
    api = next(s for s in registry.list_servers() if s.name == "api")
    assert (api.workspace, api.hostnames, api.protocol) == ("team", ("api.local",), "http")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servers: {a: 1}\n", "expected a `servers:` list"),
        ("servers: [\n", "not valid YAML"),
        ("servers:\n  - just-a-string\n", "servers[0]: expected a mapping with a name"),
        ("servers:\n  - {name: u, hostnames: [u.local], colour: red}\n", "unknown field 'colour'"),
        ("servers:\n  - {name: p, hostnames: [p.local], protocol: ftp}\n", "invalid protocol"),
        ("servers:\n  - {name: h, hostnames: 5}\n", "invalid hostnames 5: expected a hostname"),
        ("servers:\n  - {name: h, hostnames: [1]}\n", "invalid hostnames [1]: expected"),
        ("servers:\n  - {name: h, hostnames: {a: 1}}\n", "invalid hostnames {'a': 1}"),
        ("servers:\n  - {name: u, hostnames: [u.local], 1: 2}\n", "unknown field 1"),
    ],
)
def test_a_bad_file_names_the_file_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ServersFileError, match=re.escape(message)) as raised:
        load_servers_file(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_a_refused_write_names_the_server_and_writes_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    path = write(
        tmp_path,
        "servers:\n  - {name: first, hostnames: [first.local]}\n"
        "  - {name: second, hostnames: [echo.local]}\n",
    )
    seen: list[tuple[str, str]] = []
    with pytest.raises(ServersFileError, match=re.escape("server 'second': hostname 'echo.local'")):
        apply_servers(registry, load_servers_file(path), on_applied=lambda *p: seen.append(p))
    assert seen == []
    assert [s.name for s in registry.list_servers()] == ["echo"]


def test_the_mesh_servers_file_loads() -> None:
    assert [d.name for d in load_servers_file(MESH_SERVERS)] == [
        "echo",
        "gpu",
        "ws",
        "tokens",
        "chat",
    ]

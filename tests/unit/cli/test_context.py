"""The mesh context (issue 28): the file `mesh up` writes, where the CLI finds it, what it
accepts, and that an explicit flag or environment variable always wins over it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from control_plane.cli import common, context

SQLITE = "sqlite:///tmp/mesh/registry.db"
SPANNER = "spanner://projects/routeplane/instances/local/databases/registry"
ENV = ("ROUTEPLANE_REGISTRY", "ROUTEPLANE_ADMIN", "ROUTEPLANE_MESH")


@pytest.fixture
def listening() -> Iterator[str]:
    """A live admin address (a socket that accepts): the mesh of a context is up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No registry, admin or mesh from the environment; the emulator host restored after."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPANNER_EMULATOR_HOST", "")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # closed as the block ends


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            {"registry": SQLITE, "admin": "127.0.0.1:18001"},
            (SQLITE, "", "127.0.0.1:18001"),
            id="sqlite",
        ),
        pytest.param(
            {"registry": SPANNER, "emulator_host": "127.0.0.1:9010", "admin": "localhost:1"},
            (SPANNER, "127.0.0.1:9010", "localhost:1"),
            id="spanner-with-emulator",
        ),
    ],
)
def test_a_valid_file_is_read(document: dict[str, str], expected: tuple[str, str, str]) -> None:
    mesh = context.parse(Path("c.json"), json.dumps(document).encode())
    assert (mesh.registry, mesh.emulator_host, mesh.admin) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"{nope", "c.json: not JSON", id="not-json"),
        pytest.param(b"\xff\xfe", "c.json: not JSON", id="not-utf8"),
        pytest.param(b"[1]", "c.json: not a JSON object", id="a-list"),
        pytest.param(b" " * (context.MAX_BYTES + 1), "more than 16384", id="too-big"),
        pytest.param(b'{"admin": "127.0.0.1:1"}', "registry is missing", id="no-registry"),
        pytest.param(
            b'{"registry": 7, "admin": "127.0.0.1:1"}', "registry is missing", id="not-a-string"
        ),
        pytest.param(
            b'{"registry": "mysql://x", "admin": "127.0.0.1:1"}',
            "registry 'mysql://x' is not sqlite:// or spanner://",
            id="unknown-scheme",
        ),
        pytest.param(
            json.dumps({"registry": "sqlite:///a\nb", "admin": "127.0.0.1:1"}).encode(),
            "registry is longer than 1024 or has spaces or control characters",
            id="control-characters",
        ),
        pytest.param(
            json.dumps({"registry": "sqlite:///" + "a" * 2000, "admin": "127.0.0.1:1"}).encode(),
            "registry is longer than 1024",
            id="too-long",
        ),
        pytest.param(
            json.dumps({"registry": SQLITE, "admin": "127.0.0.1"}).encode(),
            "admin '127.0.0.1' is not HOST:PORT",
            id="admin-no-port",
        ),
        pytest.param(
            json.dumps({"registry": SQLITE, "admin": "127.0.0.1:70000"}).encode(),
            "admin '127.0.0.1:70000' is not HOST:PORT",
            id="admin-port-out-of-range",
        ),
        pytest.param(
            json.dumps({"registry": SQLITE, "emulator_host": "x:0", "admin": "h:1"}).encode(),
            "emulator_host 'x:0' is not HOST:PORT",
            id="emulator-port-zero",
        ),
    ],
)
def test_a_bad_file_is_one_error_naming_it_and_the_field(data: bytes, message: str) -> None:
    with pytest.raises(context.ContextError, match=r"^c\.json: ") as raised:
        context.parse(Path("c.json"), data)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_write_then_read_round_trips_and_remove_removes(tmp_path: Path) -> None:
    path = context.write(tmp_path, registry=SPANNER, emulator_host="127.0.0.1:9010", admin="h:1")
    assert path == tmp_path / "context.json"
    assert context.read(path) == context.MeshContext(
        path=path, registry=SPANNER, emulator_host="127.0.0.1:9010", admin="h:1"
    )
    context.remove(tmp_path)
    context.remove(tmp_path)  # twice: no error
    assert not path.exists()


def test_the_file_is_found_from_here_upward_or_named_by_the_environment(tmp_path: Path) -> None:
    mesh_here(tmp_path, registry=SQLITE, admin="h:1")
    found = tmp_path / ".mesh" / "context.json"
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert context.find_path(cwd=deep, environ={}) == found
    assert context.find_path(cwd=tmp_path, environ={}) == found
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    named = {"ROUTEPLANE_MESH": str(elsewhere)}  # a workdir: its context.json
    assert context.find_path(cwd=deep, environ=named) == elsewhere / "context.json"
    named = {"ROUTEPLANE_MESH": str(elsewhere / "mine.json")}  # a file
    assert context.find_path(cwd=deep, environ=named) == elsewhere / "mine.json"
    assert context.find_path(cwd=Path("/"), environ={}) is None


@click.command()
@common.registry_option
@common.admin_option
def shown(registry: str, admin: str) -> None:
    import os

    click.echo(f"{registry} {admin} emulator={os.environ.get('SPANNER_EMULATOR_HOST', '')}")


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(shown, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output.strip()


def mesh_here(where: Path, *, registry: str, admin: str, emulator_host: str = "") -> None:
    (where / ".mesh").mkdir()
    context.write(where / ".mesh", registry=registry, emulator_host=emulator_host, admin=admin)


def test_a_running_mesh_gives_the_registry_admin_and_emulator(clean: Path, listening: str) -> None:
    mesh_here(clean, registry=SPANNER, admin=listening, emulator_host="127.0.0.1:9010")
    assert invoke() == (0, f"{SPANNER} {listening} emulator=127.0.0.1:9010")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(
            ["--registry", "sqlite:///flag.db", "--admin", "10.0.0.1:1"],
            {"ROUTEPLANE_REGISTRY": "sqlite:///env.db", "ROUTEPLANE_ADMIN": "10.0.0.2:2"},
            "sqlite:///flag.db 10.0.0.1:1 emulator=",
            id="flags-win",
        ),
        pytest.param(
            [],
            {"ROUTEPLANE_REGISTRY": "sqlite:///env.db", "ROUTEPLANE_ADMIN": "10.0.0.2:2"},
            "sqlite:///env.db 10.0.0.2:2 emulator=",
            id="environment-wins-over-the-mesh",
        ),
        pytest.param(
            [],
            {"SPANNER_EMULATOR_HOST": "127.0.0.1:7777"},
            f"{SPANNER} MESH emulator=127.0.0.1:7777",
            id="an-exported-emulator-host-wins",
        ),
        pytest.param(
            ["--registry", SPANNER],
            {},
            f"{SPANNER} MESH emulator=127.0.0.1:9010",
            id="the-mesh-registry-by-hand-gets-its-emulator",
        ),
    ],
)
def test_an_explicit_flag_or_variable_wins(
    clean: Path, listening: str, args: list[str], env: dict[str, str], expected: str
) -> None:
    mesh_here(clean, registry=SPANNER, admin=listening, emulator_host="127.0.0.1:9010")
    assert invoke(*args, env=env) == (0, expected.replace("MESH", listening))


def test_no_mesh_keeps_the_old_behaviour(clean: Path) -> None:
    code, out = invoke()
    assert code == 2
    assert "Missing option '--registry'" in out
    assert invoke("--registry", SQLITE) == (0, f"{SQLITE} 127.0.0.1:18001 emulator=")


def test_a_stale_file_is_ignored_with_a_note(clean: Path) -> None:
    gone = closed_port()
    mesh_here(clean, registry=SQLITE, admin=gone)
    code, out = invoke()
    assert code == 2
    assert f"note: ignoring {clean / '.mesh' / 'context.json'}: no mesh answers at {gone}" in out
    assert "Missing option '--registry'" in out


def test_a_corrupt_file_is_one_line_naming_it_and_explicit_flags_still_work(clean: Path) -> None:
    (clean / ".mesh").mkdir()
    (clean / ".mesh" / "context.json").write_text('{"registry": "sqlite:///x", "admin": "<img>"}')
    code, out = invoke()
    assert code == 1
    assert out.startswith(f"error: mesh context {clean / '.mesh' / 'context.json'}: admin ")
    assert len(out.splitlines()) == 1
    assert invoke("--registry", SQLITE, "--admin", "h:1") == (0, f"{SQLITE} h:1 emulator=")

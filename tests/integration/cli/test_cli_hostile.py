"""Every bad input of issue 12 (findings 6, 7 and 9) through the real ``routeplane`` process:
exit 1, one line ``error: ...`` naming what was wrong, never a traceback, nothing half done."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE
from harness.waiting import free_port


def routeplane(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROUTEPLANE), *args], capture_output=True, text=True, timeout=timeout, stdin=None
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    for part in expected:
        assert part in errors[0], errors[0]


@pytest.fixture
def registry(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    store = open_registry(url)
    store.init()
    store.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    store.close()
    return url


def servers_file(tmp_path: Path, servers: object) -> str:
    path = tmp_path / "servers.yaml"
    path.write_text(yaml.safe_dump({"servers": servers}))
    return str(path)


def names_in(url: str) -> list[str]:
    store = open_registry(url)
    try:
        return [s.name for s in store.list_servers()]
    finally:
        store.close()


def test_apply_with_two_servers_claiming_one_hostname_writes_nothing(
    registry: str, tmp_path: Path
) -> None:
    path = servers_file(
        tmp_path,
        [
            {"name": "first", "hostnames": ["shared.local"]},
            {"name": "second", "hostnames": ["shared.local"]},
        ],
    )
    done = routeplane("servers", "apply", "-f", path, "--registry", registry)
    assert_one_line_error(done, "shared.local", "'first'", "'second'", "nothing was written")
    assert names_in(registry) == ["echo"]


def test_apply_with_two_entries_of_one_name_writes_nothing(registry: str, tmp_path: Path) -> None:
    path = servers_file(
        tmp_path,
        [{"name": "twice", "hostnames": ["a.local"]}, {"name": "twice", "hostnames": ["b.local"]}],
    )
    done = routeplane("servers", "apply", "-f", path, "--registry", registry)
    assert_one_line_error(done, "'twice' appears twice")
    assert names_in(registry) == ["echo"]


def test_apply_taking_a_hostname_another_server_owns_writes_nothing(
    registry: str, tmp_path: Path
) -> None:
    path = servers_file(
        tmp_path,
        [
            {"name": "new", "hostnames": ["new.local"]},
            {"name": "thief", "hostnames": ["echo.local"]},
        ],
    )
    done = routeplane("servers", "apply", "-f", path, "--registry", registry)
    assert_one_line_error(done, "echo.local", "'echo'")
    assert names_in(registry) == ["echo"]


def test_apply_twice_is_idempotent_and_says_so(registry: str, tmp_path: Path) -> None:
    path = servers_file(tmp_path, [{"name": "api", "hostnames": ["api.local"], "retries": 1}])
    first = routeplane("servers", "apply", "-f", path, "--registry", registry)
    second = routeplane("servers", "apply", "-f", path, "--registry", registry)
    assert (first.returncode, first.stdout) == (0, "api: created\n")
    assert (second.returncode, second.stdout) == (0, "api: unchanged\n")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"servers:\n  - name: \xff\xfe\n", "not UTF-8 text", id="not-utf8"),
        pytest.param(b"servers:\n  - name: x\n    hostnames: 5\n", "hostnames", id="hostnames-5"),
        pytest.param(b"servers: [1, 2]\n", "servers[0]", id="not-mappings"),
        pytest.param(b"{{{{", "not valid YAML", id="not-yaml"),
    ],
)
def test_a_bad_servers_file_is_one_line(
    registry: str, tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    done = routeplane("servers", "apply", "-f", str(path), "--registry", registry)
    assert_one_line_error(done, expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--xds-listen", "127.0.0.1:99999"], "--xds-listen", id="port-range"),
        pytest.param(["--xds-listen", "nonsense"], "--xds-listen", id="no-port"),
        pytest.param(["--new-streams-per-second", "-1"], "--new-streams-per-second", id="rate"),
        pytest.param(["--max-node-groups", "0"], "--max-node-groups", id="groups"),
        pytest.param(["--admin-listen", "0.0.0.0:18999"], "--admin-token-file", id="no-token"),
    ],
)
def test_serve_refuses_a_bad_argument_before_starting(
    registry: str, args: list[str], expected: str
) -> None:
    done = routeplane("serve", "--registry", registry, *args, timeout=30)
    assert_one_line_error(done, expected)


def test_serve_refuses_a_blank_token_off_loopback(registry: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(" \n")
    done = routeplane(
        "serve",
        "--registry",
        registry,
        "--admin-listen",
        "0.0.0.0:18999",
        "--admin-token-file",
        str(token),
        timeout=30,
    )
    assert_one_line_error(done, "--admin-listen")


def test_serve_on_a_taken_port_is_one_line(registry: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = routeplane(
            "serve",
            "--registry",
            registry,
            "--xds-listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{port}",
            timeout=60,
        )
    assert_one_line_error(done, f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    "url",
    ["sqlite:////dev/null", "sqlite:///nonexistent-dir/x/rp.db", "spanner://nonsense", "ftp://x"],
)
def test_a_registry_that_cannot_be_opened_is_one_line(url: str) -> None:
    done = routeplane("replicas", "list", "--registry", url, timeout=60)
    assert_one_line_error(done, "registry")


def test_registry_init_against_an_unreachable_spanner_fails_in_seconds(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [
            str(ROUTEPLANE),
            "registry",
            "init",
            "--registry",
            "spanner://projects/p/instances/i/databases/d",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"SPANNER_EMULATOR_HOST": f"127.0.0.1:{port}", "PATH": "/usr/bin:/bin"},
    )
    assert_one_line_error(done, "registry")


def test_bootstrap_takes_a_name_for_the_control_plane_but_not_for_the_listener() -> None:
    ok = routeplane(
        "bootstrap", "--node-id", "n", "--region", "us-west", "--xds", "control-plane:18000"
    )
    assert ok.returncode == 0, ok.stderr
    assert "control-plane" in ok.stdout
    done = routeplane(
        "bootstrap", "--node-id", "n", "--region", "us-west", "--listen", "localhost:10000"
    )
    assert_one_line_error(done, "--listen", "localhost:10000", "expected an IP address")

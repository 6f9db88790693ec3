"""The CLI as a user meets it: one-line errors and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from control_plane.cli import main
from harness.processes import ENVOY, ROUTEPLANE


@pytest.fixture
def registry(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'rp.db'}"


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["replicas", "register", "nope", "--address", "127.0.0.1:1", "--region", "us-west"],
            "error: unknown server 'nope'",
            id="unknown-server",
        ),
        pytest.param(
            ["replicas", "register", "echo", "--address", "localhost", "--region", "us-west"],
            "error: invalid address 'localhost': expected HOST:PORT",
            id="malformed-address",
        ),
        pytest.param(
            [
                "replicas",
                "register",
                "echo",
                "--address",
                "1.2.3.4:80",
                "--region",
                "us-west",
                "--weight",
                "0",
            ],
            "error: invalid weight 0",
            id="weight-out-of-range",
        ),
        pytest.param(
            ["servers", "create", "echo", "--host", "other.local"],
            "error: server 'echo' already exists",
            id="duplicate-server",
        ),
        pytest.param(
            ["servers", "create", "x", "--host", "y.local", "--protocol", "ftp"],
            "error: invalid protocol 'ftp'",
            id="bad-protocol",
        ),
        pytest.param(["replicas", "drain", "r-missing"], "error: unknown replica", id="drain"),
    ],
)
def test_bad_input_is_one_line_and_exits_non_zero(
    registry: str, args: list[str], message: str
) -> None:
    assert run("servers", "create", "echo", "--host", "echo.local", "--registry", registry)[0] == 0
    code, output = run(*args, "--registry", registry)
    assert code == 1
    assert output.startswith(message)
    assert len(output.strip().splitlines()) == 1
    assert "Traceback" not in output


def test_an_unreachable_registry_is_one_line() -> None:
    result = subprocess.run(
        [ROUTEPLANE, "servers", "list", "--registry", "sqlite:///no/such/dir/rp.db"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: registry 'sqlite:///no/such/dir/rp.db': directory '/no/such/dir' does not exist"
    )


def test_the_registry_defaults_from_the_environment(registry: str) -> None:
    env = {"ROUTEPLANE_REGISTRY": registry}
    assert run("servers", "create", "echo", "--host", "echo.local", env=env)[0] == 0
    code, output = run(
        "replicas",
        "register",
        "echo",
        "--address",
        "127.0.0.1:8081",
        "--region",
        "us-west",
        env=env,
    )
    assert code == 0
    assert output.strip().startswith("r-")
    code, output = run("replicas", "list", "--json", env=env)
    assert '"state": "READY"' in output


def test_register_prints_only_the_replica_id(registry: str) -> None:
    run("servers", "create", "echo", "--host", "echo.local", "--registry", registry)
    code, output = run(
        "replicas",
        "register",
        "echo",
        "--address",
        "127.0.0.1:8081",
        "--region",
        "us-west",
        "--registry",
        registry,
    )
    assert code == 0
    assert output.count("\n") == 1
    assert output.startswith("r-")


@pytest.mark.parametrize("ads", ["delta", "sotw"])
def test_bootstrap_is_accepted_by_envoy(tmp_path: Path, ads: str) -> None:
    code, output = run(
        "bootstrap",
        "--node-id",
        "edge-1",
        "--cluster",
        "edge",
        "--region",
        "us-west",
        "--xds",
        "127.0.0.1:18000",
        "--xds",
        "127.0.0.2:18000",
        "--listen",
        "127.0.0.1:10000",
        "--admin",
        "127.0.0.1:9901",
        "--ads",
        ads,
    )
    assert code == 0
    config = yaml.safe_load(output)
    assert config["node"]["locality"]["region"] == "us-west"
    assert config["dynamic_resources"]["ads_config"]["api_type"] == (
        "DELTA_GRPC" if ads == "delta" else "GRPC"
    )
    path = tmp_path / "bootstrap.yaml"
    path.write_text(output)
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_bootstrap_names_the_bad_flag() -> None:
    code, output = run("bootstrap", "--node-id", "e", "--region", "us-west", "--listen", "nope")
    assert code == 1
    assert output.startswith("error: invalid --listen 'nope'")

"""docker-compose.yml, read: it must be what `mesh compose` generates, valid under the Compose
specification and for docker-compose 1.29 itself, and name the same services, ports and
commands as `mesh up`. It runs on a real engine in test_compose_engine.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from compose_pydantic import ComposeSpecification

from control_plane.dev.compose import HOST_PORT_SHIFT, compose_files
from control_plane.dev.mesh import AUTOSCALERS, ENVOYS, REPLICAS, ROOT, MeshConfig


def test_the_committed_compose_files_are_generated_from_the_mesh_topology() -> None:
    for path, text in compose_files(MeshConfig(workdir=Path(".mesh"))).items():
        assert (ROOT / path).read_text() == text, (
            f"{path} is stale: run `routeplane mesh compose --write`"
        )


def test_docker_compose_is_valid_under_the_compose_specification() -> None:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    spec = ComposeSpecification.model_validate(document)
    assert spec.services is not None


def test_compose_names_the_same_services_ports_and_commands_as_mesh_up() -> None:
    cfg = MeshConfig(workdir=Path(".mesh"))
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    expected = (
        {"spanner", "init", "control-plane"}
        | {r.name for r in REPLICAS}
        | {e.name for e in ENVOYS}
        | {a.name for a in AUTOSCALERS}
    )
    assert set(services) == expected
    xds = f"127.0.0.1:${{ROUTEPLANE_XDS_PORT:-{cfg.xds_port + HOST_PORT_SHIFT}}}:{cfg.xds_port}"
    assert xds in services["control-plane"]["ports"]
    assert services["control-plane"]["command"][:2] == ["routeplane", "serve"]
    for envoy in ENVOYS:
        port = cfg.envoy_port + envoy.offset
        variable = f"ROUTEPLANE_{envoy.name.upper().replace('-', '_')}_PORT"
        assert (
            f"127.0.0.1:${{{variable}:-{port + HOST_PORT_SHIFT}}}:{port}"
            in (services[envoy.name]["ports"])
        )
        assert (ROOT / "envoy" / "compose" / f"{envoy.name}.yaml").exists()
    for scaler in AUTOSCALERS:
        command = services[scaler.name]["command"]
        assert command[:3] == ["routeplane", "samples", "autoscaler"]
        assert command[command.index("--server") + 1] == scaler.server
    for replica in REPLICAS:
        command = services[replica.name]["command"]
        assert command[:3] == ["routeplane", "samples", "replica"]
        assert command[command.index("--server") + 1] == replica.server
        assert command[command.index("--region") + 1] == replica.region


def test_every_port_is_published_on_loopback_only() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published
    assert all(port.startswith("127.0.0.1:") for port in published), published


def test_the_mesh_waits_on_health_and_heals() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("control-plane", *(e.name for e in ENVOYS)):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    healthy = {"condition": "service_healthy"}
    for envoy in ENVOYS:
        assert services[envoy.name]["depends_on"] == {"control-plane": healthy}
        assert services[envoy.name]["restart"] == "unless-stopped"
    for scaler in AUTOSCALERS:
        assert services[scaler.name]["depends_on"] == {"control-plane": healthy}
    assert services["control-plane"]["restart"] == "unless-stopped"
    assert services["control-plane"]["depends_on"] == {
        "init": {"condition": "service_completed_successfully"}
    }


def test_docker_compose_1_29_accepts_the_file() -> None:
    """docker-compose 1.29 validates against its own schema (it rejected a top-level `name`);
    `config` needs no engine. The project name comes from .env."""
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed: CI checks the file with it")
        pytest.skip("docker-compose is not installed")
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("ROUTEPLANE_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "127.0.0.1:20000:10000" in done.stdout  # .env's port, interpolated
    assert "name" not in yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "COMPOSE_PROJECT_NAME=routeplane\n" in (ROOT / ".env").read_text()

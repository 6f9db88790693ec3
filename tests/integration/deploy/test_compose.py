"""docker-compose.yml: no Docker engine runs here, so the file is checked, not run: it must be
what `mesh compose` generates, valid under the Compose specification, and name the same
services, ports and commands as `mesh up`."""

from __future__ import annotations

from pathlib import Path

import yaml
from compose_pydantic import ComposeSpecification

from control_plane.dev.compose import compose_files
from control_plane.dev.mesh import ENVOYS, REPLICAS, ROOT, MeshConfig


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
        {"spanner", "init", "control-plane"} | {r.name for r in REPLICAS} | {e.name for e in ENVOYS}
    )
    assert set(services) == expected
    assert f"127.0.0.1:{cfg.xds_port}:{cfg.xds_port}" in services["control-plane"]["ports"]
    assert services["control-plane"]["command"][:2] == ["routeplane", "serve"]
    for envoy in ENVOYS:
        port = cfg.envoy_port + envoy.offset
        assert f"127.0.0.1:{port}:{port}" in services[envoy.name]["ports"]
        assert (ROOT / "envoy" / "compose" / f"{envoy.name}.yaml").exists()
    for replica in REPLICAS:
        command = services[replica.name]["command"]
        assert command[:3] == ["routeplane", "samples", "replica"]
        assert command[command.index("--server") + 1] == replica.server
        assert command[command.index("--region") + 1] == replica.region

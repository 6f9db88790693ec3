"""Issue 28: with a mesh up, registry and admin commands work with no ``--registry``, no
``--admin`` and nothing exported, from the mesh's directory or below; ``mesh down`` removes the
context. The mesh here is what ``mesh up`` writes (``.mesh/context.json``, by the same
function) around a real control plane and its SQLite registry: a full mesh start is
``tests/integration/mesh``'s."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from control_plane.cli import context
from harness.processes import ROUTEPLANE, ControlPlane
from harness.waiting import free_port


def test_registry_and_admin_commands_find_the_mesh_until_mesh_down(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    project = tmp_path / "project"
    below = project / "src" / "deep"
    below.mkdir(parents=True)
    (project / ".mesh").mkdir()
    written = context.write(
        project / ".mesh",
        registry=control_plane.registry,
        emulator_host="",
        admin=control_plane.admin,
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"ROUTEPLANE_REGISTRY", "ROUTEPLANE_ADMIN", "ROUTEPLANE_MESH"}
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ROUTEPLANE, *args], cwd=below, env=env, capture_output=True, text=True, timeout=60
        )

    init = cli("mesh", "init")  # the schema and the sample servers, echo among them
    assert init.returncode == 0, init.stderr
    address = f"127.0.0.1:{free_port()}"
    register = cli("replicas", "register", "echo", "--address", address, "--region", "us-west")
    assert register.returncode == 0, register.stderr
    listed = cli("replicas", "list", "echo", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["address"] for r in json.loads(listed.stdout)] == [address]
    shown = cli("proxies", "--json")  # --admin from the context: this control plane's
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == []

    down = cli("mesh", "down", "--workdir", str(project / ".mesh"))
    assert down.returncode == 0, down.stderr
    assert not written.exists()
    gone = cli("replicas", "list", "echo")
    assert gone.returncode == 2
    assert "Missing option '--registry'" in gone.stderr
    assert "Traceback" not in gone.stderr

